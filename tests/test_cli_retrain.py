"""`python -m dadc retrain`: one round now, in the foreground, as a user runs it (a real subprocess on a
real home with real MNIST and tiny round settings), recorded like an app round, never two rounds on
one home at once; and the app's background round stepping aside while the CLI holds the home."""
import fcntl
import json
import os
import re
import time

import numpy as np
import pytest

from dadc import files
from dadc.rounds.registry import Registry
from dadc.rounds.retrain import TRAIN_LOCK
from dadc.store import FlagStore
from test_rounds import TINY, attempts, cli, flag_some, loop, mnist_into, round0  # noqa: F401 (fixtures)

LOOSE = dict(DADC_ROUND_CLEAN_DROP="1", DADC_ROUND_ROBUST_DROP="1")  # a gate any candidate passes


def home_with_flags(tmp_path, round0, n):
    """A home serving the tiny round 0, with n MNIST test digits flagged (as people would draw them)."""
    from dadc.model import mnist as data

    home = mnist_into(tmp_path / "home")
    Registry(home, round0)
    arrays = data.fetch(home, log=lambda m: None)
    store = FlagStore(home)
    for i in range(n):
        store.append(arrays["test_x"][i].astype(np.float32) / 255, int(arrays["test_y"][i]), prediction=0,
                     round=0, visitor=f"s{i}")
    return home


def last_json(result):
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_retrain_promotes_a_round_recorded_like_an_app_round(tmp_path, round0):
    from dadc.config import RoundConfig
    from dadc.rounds.registry import Predictor
    from dadc.rounds.retrain import RetrainJob

    home = home_with_flags(tmp_path, round0, 6)
    r = cli("retrain", home=home, **LOOSE)  # DADC_THRESHOLD is 10: the CLI does not wait for it
    assert r.returncode == 0, r.stderr
    out = last_json(r)
    assert out["round"] == "round-001" and out["passed"] is True and out["reasons"] == []
    assert out["serving"] == "round-001" and out["seconds"] > 0
    assert (home / "rounds" / "CURRENT").read_text().strip() == "round-001"
    [a] = attempts(Registry(home))
    assert a["event"] == "attempt" and a["claimed"] == 6 and a["passed"] and a["round"] == "round-001"
    assert a["base"] == "round-000" and a["config"]["mnist_n"] == TINY["mnist_n"]  # the DADC_ROUND_* knobs
    assert a["counts"]["human examples"] + a["counts"]["human held out"] == 6
    # the progress bar's stages on stderr, and the plain word on when the app serves it
    for stage in ("loading data", "training", "gate"):
        assert stage in r.stderr
    assert re.search(r"\b(\d+)/\1\b", r.stderr)  # training steps done/total
    assert "promoted round-001 (rounds/CURRENT names it)" in r.stderr and "until it restarts" in r.stderr
    assert "dashboard" not in r.stderr  # a local user has no admin login to roll back from the page
    assert "Traceback" not in r.stderr
    # the lock is released, and an app (re)starting on this home does not retrain those 6 examples
    with files.try_locked(home / "rounds" / TRAIN_LOCK) as held:
        assert held is not None
    registry = Registry(home)
    job = RetrainJob(registry, Predictor(registry), FlagStore(home), 3, RoundConfig(**TINY))
    assert job.pending() == (0, 3)


def test_a_rejected_round_is_a_result_not_an_error(tmp_path, round0):
    home = home_with_flags(tmp_path, round0, 6)
    r = cli("retrain", home=home, DADC_ROUND_CLEAN_DROP="-1")  # would need 100 pt more clean accuracy
    assert r.returncode == 0, r.stderr
    out = last_json(r)
    assert out["round"] is None and out["passed"] is False and out["serving"] == "round-000"
    assert out["reasons"] and "clean accuracy" in out["reasons"][0]
    assert "rejected by the gate" in r.stderr
    [a] = attempts(Registry(home))
    assert a["claimed"] == 6 and not a["passed"] and a["reasons"] == out["reasons"]
    assert Registry(home).names() == ["round-000"] and Registry(home).current() == "round-000"


@pytest.mark.parametrize("flags, env, why", [(0, {}, "nothing flagged under"),
                                              (3, {"DADC_VERIFIED_ONLY": "1"}, "none of the 3 flagged is eligible")])
def test_no_human_examples_to_train_on_runs_no_round_and_says_so(tmp_path, round0, flags, env, why):
    home = home_with_flags(tmp_path, round0, flags)
    history = home / "rounds" / "history.jsonl"
    before = history.read_bytes() if history.exists() else b""
    r = cli("retrain", home=home, **LOOSE, **env)  # a gate any candidate passes: still no round
    assert r.returncode == 1 and r.stdout == ""
    [line] = r.stderr.strip().splitlines()
    assert line.startswith("error: no human examples to train on") and why in line
    assert line.endswith("no round run, round-000 still serves")
    assert Registry(home).names() == ["round-000"] and Registry(home).current() == "round-000"
    assert (history.read_bytes() if history.exists() else b"") == before  # no attempt recorded, nothing claimed


def test_a_held_lock_means_one_error_line_and_nothing_recorded(tmp_path, round0):
    home = home_with_flags(tmp_path, round0, 2)
    lock = home / "rounds" / TRAIN_LOCK
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # this process is "the app, training a round"
        r = cli("retrain", home=home, **LOOSE)
    finally:
        os.close(fd)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == f"error: a round is already training on this home (lock {lock})"
    assert r.stdout == "" and Registry(home).history() == [] and Registry(home).names() == ["round-000"]


def test_bad_input_is_one_error_line(tmp_path, round0):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    r = cli("retrain", home=not_a_dir)
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [f"error: DADC_HOME {not_a_dir} is not a directory"]
    # no MNIST cache and no way to get it: the Hub offline, the package registry out of reach
    home = tmp_path / "no-mnist"
    Registry(home, round0)
    for i in range(5):  # something to train on (1 in 10 is held out): MNIST is what is missing
        FlagStore(home).append(np.random.default_rng(i).random((28, 28), dtype=np.float32), i, prediction=0,
                               round=0, visitor=f"s{i}")
    (tmp_path / "no-wheels").mkdir()
    r = cli("retrain", home=home, HF_HUB_OFFLINE="1", PIP_NO_INDEX="1", PIP_CONFIG_FILE=os.devnull,
            PIP_FIND_LINKS=str(tmp_path / "no-wheels"))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "MNIST" in last
    assert Registry(home).history() == [] and "{" not in r.stdout  # (pip's own lines may be there)


def test_the_apps_round_steps_aside_while_another_process_trains(loop):
    """The app's background round finds the home's lock held (the CLI is training): it records
    nothing, says it is waiting, and tries again later; the examples the CLI claimed meanwhile do not
    start a round again, and new ones do."""
    registry, predictor, store, make_job, arrays = loop
    job = make_job(threshold=2, clean_drop=1.0, robust_drop=1.0)
    job.retry_after = 1.0
    with files.try_locked(registry.root / TRAIN_LOCK) as held:
        assert held is not None
        flag_some(store, job, arrays, 2)
        assert job.wait(30)
        assert attempts(registry) == [] and job.started == 0 and job.pending() == (2, 0)
        assert job.status.stage.startswith("waiting: a round is training in another process")
        # meanwhile the other process (python -m dadc retrain) records its round, which claimed both
        registry.record({"event": "attempt", "claimed": 2, "passed": False, "reasons": ["the CLI's round"]})
    time.sleep(2.0)  # the retry came and found nothing new to train on
    assert job.started == 0 and len(attempts(registry)) == 1
    flag_some(store, job, arrays, 2, start=2)
    assert job.wait(120) and job.started == 1
    assert [a["claimed"] for a in attempts(registry)] == [2, 4] and attempts(registry)[-1]["passed"]
