"""`torchrun --standalone --nproc-per-node 2 -m dadc train` (gloo, 2 CPU processes) trains a tiny
recipe data-parallel to within 0.3 pt of one process on the same test slice; rank 0 alone writes
one checkpoint that loads, and prints the one summary line."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dadc.model import checkpoint
from test_rounds import mnist_into

ROOT = Path(__file__).resolve().parents[1]
# one epoch of FGSM training (random start, eps 0.1) of the fast net, measured on all 10,000 test
# digits: 98.73 / 98.73 / 98.66 % clean with one process and 98.68 / 98.68 / 98.62 % with two for
# seeds 0, 1, 2 (at most 0.05 pt apart). One process takes batches of 100; each of two takes 50 of
# its shard: the same global batch and steps. About 60 s on 2 cores, hence slow.
TINY = ["--net", "fast", "--attack", "fgsm", "--eps", "0.1", "--epochs", "1", "--lr", "5e-3", "--seed", "0",
        "--eval-n", "10000", "--eval-steps", "2"]


def train(home, out, batch, *launcher):
    env = {**os.environ, "DADC_HOME": str(home), "OMP_NUM_THREADS": "1"}
    cmd = [*launcher, "-m", "dadc", "train", *TINY, "--batch-size", str(batch), "--out", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_two_gloo_processes_match_one_within_noise(tmp_path):
    home = mnist_into(tmp_path / "home")
    one = train(home, tmp_path / "one", 100, sys.executable)
    two = train(home, tmp_path / "two", 50, sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", "2")
    a, b = json.loads(one.stdout.strip().splitlines()[-1]), json.loads(two.stdout.strip().splitlines()[-1])
    assert len(two.stdout.strip().splitlines()) == 1  # rank 0 alone reports
    assert abs(a["clean_acc"] - b["clean_acc"]) <= 0.003, (a, b)
    _, _, metrics = checkpoint.load(tmp_path / "two")
    assert metrics["processes"] == 2 and metrics["clean_acc"] == b["clean_acc"]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["config.json", "metrics.json", "model.safetensors"]
