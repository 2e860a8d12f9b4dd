"""Generated mouse-drawn digits (dadc.drawings): every style renders as a Sketchpad canvas, the output is
deterministic, the folders are read by the simulator and by accuracy_by_family, and the shipped
model reads clean drawings."""
import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dadc.model import checkpoint
from dadc.synth import drawings
from dadc.model import evaluate
from dadc import preprocess
from dadc.campaign.simulate import read_drawings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def one_thread():
    """One torch thread while a test reads drawings one by one: on a busy 2-core machine, two
    threads per tiny forward pass are several times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_every_style_and_family_renders_as_a_sketchpad_canvas():
    cases = [(d, s, "plain") for d in drawings.STYLES for s in drawings.STYLES[d]]
    cases += [(d, None, f) for f in drawings.FAMILIES if f != "font" for d in (1, 8)]  # font: test_fonts.py
    for k, (digit, style, family) in enumerate(cases):
        canvas, got = drawings.digit(digit, np.random.default_rng(k), family, style)
        assert got in drawings.STYLES[digit] and (style is None or got == style)
        assert canvas.mode == "RGBA" and canvas.size == (448, 448)
        rgba = np.asarray(canvas)
        assert (rgba[..., 3] == 255).all(), "opaque, as the Sketchpad's composite"
        assert (rgba[..., 0] == rgba[..., 1]).all() and (rgba[..., 1] == rgba[..., 2]).all(), "black on white"
        grey = rgba[..., 0]
        assert grey.min() == 0, f"{digit}/{got}/{family}: no full-strength ink"
        assert 0 < (grey < 128).mean() < 0.5, f"{digit}/{got}/{family}: no digit, or a blob"
        border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
        assert (border == 255).all(), f"{digit}/{got}/{family}: the digit runs off the canvas"
        x = preprocess.to_mnist(canvas)
        assert x.shape == (28, 28) and x.max() > 0.9 and (x > 0.5).sum() >= 15


def test_anti_aliased_round_brush():
    canvas = drawings.render([np.array([(100.0, 100.0), (300.0, 300.0)])], brush=20)
    grey = np.asarray(canvas)[..., 0]
    assert len(np.unique(grey)) > 10, "edges are grey (anti-aliased), not only black and white"
    assert grey[100, 100] == 0 and grey[100, 92] < 128, "a round cap around the stroke's end"
    assert grey[100, 85] == 255 and grey[200, 200] == 0


def test_families_differ_as_documented():
    def heights_and_brushes(family):
        out = []
        for i in range(20):
            grey = np.asarray(drawings.digit(8, drawings._rng(0, family, i), family)[0])[..., 0]
            ys, xs = np.nonzero(grey < 128)
            out.append((ys.max() - ys.min(), (grey < 128).sum()))
        return np.array(out)
    small, large = heights_and_brushes("offcentre_small"), heights_and_brushes("large")
    assert small[:, 0].max() < 200 < large[:, 0].min()
    thin, thick = heights_and_brushes("thin"), heights_and_brushes("thick")
    assert np.median(thin[:, 1]) * 3 < np.median(thick[:, 1])


def test_make_is_deterministic_per_seed_and_readable_by_the_simulator(tmp_path):
    a = drawings.make(tmp_path / "a", 5, seed=3, families=["mouse", "thick"])
    b = drawings.make(tmp_path / "b", 5, seed=3, families=["mouse", "thick"])
    c = drawings.make(tmp_path / "c", 5, seed=4, families=["mouse", "thick"])
    files = sorted(p.name for p in a.iterdir())
    assert len(files) == 11 and files == sorted(p.name for p in b.iterdir())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert (a / "mouse-00001.png").read_bytes() != (c / "mouse-00001.png").read_bytes()
    # a drawing depends only on (seed, family, i): the same with other families or a larger n
    d = drawings.make(tmp_path / "d", 2, seed=3, families=["mouse"])
    assert (d / "mouse-00001.png").read_bytes() == (a / "mouse-00001.png").read_bytes()

    rows = list(csv.DictReader(open(a / "labels.csv", newline="")))
    assert list(rows[0]) == ["file", "label", "family", "style"]
    assert [int(r["label"]) for r in rows] == [0, 1, 2, 3, 4] * 2
    assert all(r["style"] in drawings.STYLES[int(r["label"])] for r in rows)
    read = read_drawings(a)
    assert [y for _, y, _ in read] == [0, 1, 2, 3, 4] * 2
    assert all(x.shape == (28, 28) and x.max() > 0.9 for x, _, _ in read)
    with pytest.raises(ValueError, match="unknown families"):
        drawings.make(tmp_path / "e", 1, families=["crayon"])


def test_accuracy_by_family_counts_right(tmp_path, one_thread):
    folder = drawings.make(tmp_path, 10, seed=1, families=["plain", "tilted"])
    res = evaluate.accuracy_by_family(lambda canvas: 3, folder)
    assert res["all"] == {"n": 20, "acc": 0.1}
    assert res["by_family"] == {"plain": {"n": 10, "acc": 0.1}, "tilted": {"n": 10, "acc": 0.1}}
    assert res["by_label"]["3"] == {"n": 2, "acc": 1.0} and res["by_label"]["4"]["acc"] == 0.0
    assert sum(v["n"] for v in res["by_style"].values()) == 20
    assert all(k.split("/")[1] in drawings.STYLES[int(k.split("/")[0])] for k in res["by_style"])
    # the predictor sees the canvas itself, as the app's /predict does
    seen = []
    evaluate.accuracy_by_family(lambda canvas: seen.append(canvas.size) or 0, folder)
    assert seen == [(448, 448)] * 20
    # a folder with only file,label (as `dadc simulate --make-drawings` writes) and a blank canvas
    rows = list(csv.DictReader(open(folder / "labels.csv", newline="")))
    with open(folder / "labels.csv", "w", newline="") as f:
        f.write("file,label\n" + "".join(f"{r['file']},{r['label']}\n" for r in rows[:4]))
        f.write("blank.png,5\n")
    Image.new("RGBA", (448, 448), "white").save(folder / "blank.png")
    res = evaluate.accuracy_by_family(evaluate.predictor(checkpoint.load(ROOT / "models" / "round-000")[0]), folder)
    assert res["all"]["n"] == 5 and res["by_family"]["-"]["n"] == 5 and res["by_label"]["5"]["acc"] == 0.0


def test_shipped_model_reads_clean_drawings(tmp_path, one_thread):
    model, _, _ = checkpoint.load(ROOT / "models" / "round-000")
    folder = drawings.make(tmp_path, 100, seed=0, families=["plain"])
    res = evaluate.accuracy_by_family(evaluate.predictor(model), folder)
    assert res["all"]["n"] == 100
    assert res["all"]["acc"] >= 0.9, res
    assert all(v["acc"] >= 0.7 for v in res["by_label"].values()), res["by_label"]
