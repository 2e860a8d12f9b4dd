"""`python -m dadc trainer --once` as a job runs it, against the local fake Hub: under the threshold
it trains nothing; killed mid-round it promoted nothing, and run again it trains that round and
promotes it once; the CLI's rollback goes to the model repo."""
import json
import os
import signal
import subprocess
import sys

import pytest
from huggingface_hub import HfApi

from dadc.hub.push import push_flags
from test_rounds import TINY, mnist_into, round0  # noqa: F401 (a fixture)
from test_trainer import DATASET, MODELS, TOKEN, replica

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def trainer_env(home, **env):
    return {**os.environ, "DADC_HOME": str(home), "HF_TOKEN": TOKEN, "HF_HUB_OFFLINE": "0",
            "DADC_DATASET_REPO": DATASET, "DADC_MODEL_REPO": MODELS, "DADC_THRESHOLD": "3",
            **{f"DADC_ROUND_{k.upper()}": str(v) for k, v in TINY.items()},
            "DADC_ROUND_CLEAN_DROP": "1", "DADC_ROUND_ROBUST_DROP": "1", **env}


def run(home, *args, **env):
    return subprocess.run([sys.executable, "-m", "dadc", *args], cwd=ROOT, env=trainer_env(home, **env),
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_killed_mid_round_promotes_nothing_then_the_next_pass_promotes_once(tmp_path, fake_hub, round0):  # noqa: F811
    _, a, _ = replica(tmp_path, "a", round0, 2)
    HfApi(token=TOKEN).create_repo(DATASET, repo_type="dataset", private=True)
    push_flags(HfApi(token=TOKEN), DATASET, a)
    home = mnist_into(tmp_path / "t")
    under = run(home, "trainer", "--once")
    assert under.returncode == 0, under.stderr
    summary = json.loads(under.stdout.strip().splitlines()[-1])
    assert not summary["trained"] and summary["new"] == 2 and "1 more" in summary["why"]

    a.append(_digit(3), 3, visitor="anon-late")
    push_flags(HfApi(token=TOKEN), DATASET, a)
    proc = subprocess.Popen([sys.executable, "-m", "dadc", "trainer", "--once"], cwd=ROOT, env=trainer_env(home),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:  # the round has begun: kill it there
        if line.startswith("loading data"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(60)
    assert not any(p.startswith("rounds/") for p in fake_hub.files(MODELS, "model")), "half-promoted"

    again = run(home, "trainer", "--once")
    assert again.returncode == 0, again.stderr
    out = json.loads(again.stdout.strip().splitlines()[-1])
    assert out["trained"] and out["round"] == "round-001" and out["serving"] == "round-001"
    files = fake_hub.files(MODELS, "model")
    assert files["rounds/CURRENT"] == b"round-001"
    assert [json.loads(line)["round"] for line in files["rounds/history.jsonl"].splitlines()] == ["round-001"]

    back = run(home, "rollback", "round-000")  # with a model repo set, the CLI rolls back there
    assert back.returncode == 0 and f"{MODELS}: rounds/CURRENT now names round-000" in back.stdout, back.stderr
    assert fake_hub.files(MODELS, "model")["rounds/CURRENT"] == b"round-000"
    bad = run(home, "rollback", "round-007")
    assert bad.returncode == 1 and "no round named 'round-007'" in bad.stderr


def _digit(seed):
    import numpy as np

    arr = np.zeros((28, 28), np.uint8)
    arr[4:24, 12 + seed % 4:16 + seed % 4] = 255
    return arr


def test_trainer_without_the_hub_is_a_clear_error(tmp_path):
    out = subprocess.run([sys.executable, "-m", "dadc", "trainer", "--once"], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "DADC_HOME": str(tmp_path)}, timeout=120)
    assert out.returncode == 1 and "needs HF_TOKEN, DADC_DATASET_REPO" in out.stderr
