"""`python -m dadc eval --drawings DIR`: accuracy on a folder of canvases, through the app's preprocessing."""
import csv
import json

import pytest
import torch
from PIL import Image
from test_cli import ROUND0, assert_one_line_error, dadc

from dadc.model import checkpoint
from dadc.synth import drawings
from dadc.model import evaluate
from dadc import preprocess


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return drawings.make(tmp_path_factory.mktemp("drawn"), 4, seed=77)   # 4 per family: 28 drawings


def test_eval_drawings_per_family_and_style(folder, tmp_path):
    r = dadc("eval", "--checkpoint", ROUND0, "--drawings", folder, "--json", home=tmp_path)  # no MNIST needed
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["n"] == 4 * len(drawings.FAMILIES) and set(out["by_family"]) == set(drawings.FAMILIES)
    assert all(v["n"] == 4 and 0 <= v["acc"] <= 1 for v in out["by_family"].values())
    assert sum(v["n"] for v in out["by_style"].values()) == out["n"]
    # the very path /predict takes: preprocess.to_mnist, then the model
    model, _, _ = checkpoint.load(ROUND0)
    rows = list(csv.DictReader(open(folder / "labels.csv")))
    right = 0
    for row in rows:
        x = torch.from_numpy(preprocess.to_mnist(Image.open(folder / row["file"])))[None, None]
        right += int(model(x).argmax(1)) == int(row["label"])
    assert out["acc"] == pytest.approx(right / len(rows))
    assert out["acc"] > 0.8  # round-000 reads most drawings
    text = dadc("eval", "--checkpoint", ROUND0, "--drawings", folder, home=tmp_path)
    style = f"{rows[0]['label']}/{rows[0]['style']}"
    assert text.returncode == 0 and "offcentre_small" in text.stdout  # a line per family
    lines = text.stdout.splitlines()
    assert len(lines) <= len(out["by_family"]) + 8 and "weakest" in lines[-1] and "--styles" in lines[-1]
    every = dadc("eval", "--checkpoint", ROUND0, "--drawings", folder, "--styles", home=tmp_path)
    assert every.returncode == 0 and style in every.stdout
    assert len(every.stdout.splitlines()) >= len(out["by_family"]) + len(out["by_style"])


def test_labels_without_family_columns_and_a_missing_folder(folder, tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    with open(plain / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "label"])
        for row in list(csv.DictReader(open(folder / "labels.csv")))[:5]:
            Image.open(folder / row["file"]).save(plain / row["file"])
            w.writerow([row["file"], row["label"]])
    model, _, _ = checkpoint.load(ROUND0)
    res = evaluate.drawings_accuracy(model, plain)
    assert res["all"]["n"] == 5 and list(res["by_family"]) == ["-"]
    assert_one_line_error(dadc("eval", "--checkpoint", ROUND0, "--drawings", tmp_path / "none", home=tmp_path),
                          "labels.csv")
