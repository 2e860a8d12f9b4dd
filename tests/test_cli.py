"""The command line as a user runs it: a real subprocess, real files, one-line errors."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_rounds import mnist_into

ROOT = Path(__file__).resolve().parents[1]
ROUND0 = ROOT / "models" / "round-000"


def dadc(*args, home):
    env = dict(os.environ, DADC_HOME=str(home), PYTHONPATH=str(ROOT))
    env.pop("DADC_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "dadc", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300)


@pytest.fixture
def mnist_home(tmp_path):
    """A DADC_HOME holding the real, verified MNIST cache made by `python -m dadc data` (README)."""
    return mnist_into(tmp_path)


def assert_one_line_error(result, *words):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[-1], (word, lines[-1])


def test_eval_contract_on_the_shipped_round(mnist_home):
    r = dadc("eval", "--checkpoint", ROUND0, "--n", 200, "--attack", "pgd", "--eps", 0.3, "--steps", 10, "--json",
             home=mnist_home)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["n"] == 200
    assert 0.95 <= out["clean_acc"] <= 1 and 0.5 <= out["robust_acc"] <= out["clean_acc"]
    none = json.loads(dadc("eval", "--checkpoint", ROUND0, "--n", 200, "--eps", 0, "--steps", 1, "--json",
                           home=mnist_home).stdout)
    assert none["robust_acc"] == none["clean_acc"] == out["clean_acc"]  # eps 0 changes nothing


def test_train_writes_a_loadable_checkpoint_with_metrics(mnist_home, tmp_path):
    out = tmp_path / "ck"
    r = dadc("train", "--net", "fast", "--epochs", 0.02, "--steps", 2, "--out", out, "--eval-n", 100,
             "--eval-steps", 2, home=mnist_home)
    assert r.returncode == 0, r.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval"]["n"] == 100 and 0 <= metrics["robust_acc"] <= metrics["clean_acc"] <= 1
    assert metrics["command"].startswith("python -m dadc train --net fast")
    assert json.loads((out / "config.json").read_text())["net"] == "fast"
    r = dadc("eval", "--checkpoint", out, "--n", 100, "--steps", 2, "--json", home=mnist_home)
    assert json.loads(r.stdout)["clean_acc"] == metrics["clean_acc"]


@pytest.mark.slow
def test_bad_input_is_one_clear_line(tmp_path):
    home = tmp_path / "home"
    assert_one_line_error(dadc("train", "--net", "vgg", "--out", tmp_path / "x", home=home), "unknown net", "vgg")
    assert_one_line_error(dadc("train", "--fraction", 1.5, "--out", tmp_path / "x", home=home), "fraction")
    assert_one_line_error(dadc("train", "--fraction", 0, "--out", tmp_path / "x", home=home), "fraction")
    assert_one_line_error(dadc("train", "--eps", -1, "--out", tmp_path / "x", home=home), "eps")
    assert_one_line_error(dadc("eval", "--checkpoint", tmp_path / "missing", home=home), "not a directory")
    assert_one_line_error(dadc("eval", "--checkpoint", ROUND0, "--eps", -0.1, home=home), "eps")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "model.safetensors").write_bytes(b"\x00" * 100)
    (corrupt / "config.json").write_text('{"net": "fast"}')
    assert_one_line_error(dadc("eval", "--checkpoint", corrupt, home=home), "corrupt")
    (corrupt / "model.safetensors").unlink()
    (corrupt / "pytorch_model.bin").write_bytes(b"\x80\x04 pickle")
    assert_one_line_error(dadc("eval", "--checkpoint", corrupt, home=home), "refusing to load pickle")
    assert not home.exists()  # nothing was written for a refused command


def test_training_on_an_empty_human_set_is_refused(mnist_home, tmp_path):
    r = dadc("train", "--human", "--epochs", 0.01, "--out", tmp_path / "x", home=mnist_home)
    assert_one_line_error(r, "human example set", "empty")
    assert not (tmp_path / "x").exists()


def test_unusable_dadc_home_is_a_clear_error(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("I am a file")
    assert_one_line_error(dadc("data", home=not_a_dir / "sub"), "file")
