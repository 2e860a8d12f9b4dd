"""Rounds in-process: registry, gate, one background job per threshold crossing, no lost trigger,
rejection on record, rollback, hot swap. Real MNIST (a small subset), real threads, real files."""
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from dadc.model import checkpoint
from dadc.model import nets
from dadc.config import RoundConfig
from dadc.rounds.registry import Predictor, Registry
from dadc.rounds.retrain import RetrainJob
from dadc.store import FlagStore

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".dadc" / "mnist" / "mnist.safetensors"

# a round in seconds: a few hundred MNIST examples, 2 PGD steps, small gate sets
TINY = dict(mnist_n=300, steps=2, val_n=300, eval_n=300, robust_n=50, robust_steps=2, human_repeat=4)


def mnist_into(home):
    """Real MNIST for a tmp DADC_HOME: the cache `python -m dadc data` made, symlinked."""
    if not CACHE.exists():
        pytest.skip("real MNIST not cached: run `python -m dadc data` first (the README's test command does)")
    (Path(home) / "mnist").mkdir(parents=True, exist_ok=True)
    link = Path(home) / "mnist" / "mnist.safetensors"
    if not link.exists():
        link.symlink_to(CACHE)
    return home


_TRAINED = []  # one round 0 per test session, shared by this file and test_app.py


def train_round0(out):
    """A small but real round 0: the fast net, 1 epoch of normal training on 6000 MNIST digits."""
    from dadc.model import mnist as data

    if _TRAINED:
        return _TRAINED[0]
    from dadc.model.training import TrainConfig, train

    arrays = data.fetch(mnist_into(out.parent / "mnist-home"), log=lambda m: None)
    x, y = data.tensors(arrays, "train")
    torch.manual_seed(0)
    model = nets.build("fast")
    train(model, x[:6000], y[:6000], TrainConfig(epochs=1, attack="none", lr=5e-3), progress=False)
    checkpoint.save(model, out, {"net": "fast"}, {"note": "tiny test round 0"})
    _TRAINED.append(out)
    return out


@pytest.fixture(scope="session")
def round0(tmp_path_factory):
    return train_round0(tmp_path_factory.mktemp("round0") / "round-000")


@pytest.fixture
def loop(tmp_path, round0):
    """(registry, predictor, store, job factory) on a fresh DADC_HOME with real MNIST."""
    from dadc.model import mnist as data

    home = mnist_into(tmp_path)
    registry = Registry(home, round0)
    predictor = Predictor(registry)
    store = FlagStore(home)
    arrays = data.fetch(home, log=lambda m: None)

    def job(threshold=3, **cfg):
        return RetrainJob(registry, predictor, store, threshold, RoundConfig(**{**TINY, **cfg}), mnist=arrays)
    return registry, predictor, store, job, arrays


def flag_some(store, job, arrays, n, start=0, label_shift=0):
    """Flag n MNIST test digits (as people would draw them, already 28x28)."""
    ids = []
    for i in range(start, start + n):
        x = arrays["test_x"][i].astype(np.float32) / 255
        ids.append(store.append(x, int(arrays["test_y"][i] + label_shift) % 10, prediction=0, round=0, visitor=f"s{i}"))
        job.notify()
    return ids


def attempts(registry):
    return [h for h in registry.history() if h.get("event") == "attempt"]


def test_registry_seeds_round0_and_keeps_current(tmp_path, round0):
    reg = Registry(tmp_path, round0)
    assert reg.names() == ["round-000"] and reg.current() == "round-000"
    model, cfg, _ = reg.load("round-000")
    name = reg.promote(model, cfg, {"clean_acc": 0.5})
    assert name == "round-001" and reg.current() == "round-001"
    again = Registry(tmp_path, round0)  # a restart: nothing re-seeded, the current round kept
    assert again.names() == ["round-000", "round-001"] and again.current() == "round-001"
    again.rollback("round-000", why="test")
    assert Registry(tmp_path, round0).current() == "round-000"
    assert again.history()[-1]["event"] == "rollback" and again.history()[-1]["to"] == "round-000"
    with pytest.raises(ValueError, match="no round named"):
        again.rollback("round-999")
    with pytest.raises(FileNotFoundError, match="no round-000"):
        Registry(tmp_path / "other", tmp_path / "missing")


def test_a_corrupt_round_is_never_made_current_and_is_skipped_at_start(tmp_path, round0):
    reg = Registry(tmp_path, round0)
    model, cfg, _ = reg.load("round-000")
    reg.promote(model, cfg, {})
    weights = tmp_path / "rounds" / "round-001" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # e.g. a disk error after the promotion
    assert Predictor(reg).round == "round-000"  # starts on the last good round ...
    assert reg.current() == "round-000"           # ... makes it current ...
    assert [h["event"] for h in reg.history()[-2:]] == ["unreadable", "rollback"]  # ... and says why
    with pytest.raises(checkpoint.CheckpointError):
        reg.rollback("round-001")
    assert reg.current() == "round-000"  # a refused rollback leaves CURRENT alone


def test_threshold_starts_one_round_that_is_promoted_and_swapped_in(loop):
    registry, predictor, store, make_job, arrays = loop
    job = make_job(threshold=3, clean_drop=1.0, robust_drop=1.0)  # a gate any candidate passes
    _, old_model = predictor.serving
    flag_some(store, job, arrays, 2)
    assert not job.running and job.pending() == (2, 1)  # below the threshold: nothing starts
    flag_some(store, job, arrays, 1, start=2)
    assert job.running  # started by the flag, in the background: notify() returned at once
    assert job.wait(120)
    [a] = attempts(registry)
    assert a["passed"] and a["round"] == "round-001" and a["claimed"] == 3
    assert registry.current() == "round-001" and predictor.round == "round-001"
    assert predictor.serving[1] is not old_model  # swapped; the old model object is untouched
    m = registry.metrics("round-001")
    assert 0 <= m["robust_acc"] <= m["clean_acc"] <= 1
    assert m["counts"]["human examples"] + m["counts"]["human held out"] == 3
    # each human example is learnt as its family: the drawing plus jittered redrawings (synth/jitter.py)
    from dadc.rounds.retrain import family_size
    n = m["counts"]["human examples"]
    assert m["counts"]["human family members"] == n * family_size(n, job.cfg) > n


_REAL = []  # the unpatched training call, for the forked child (a function pickles by its name)


def _real_fine_tune(*args, **kwargs):
    return _REAL[-1](*args, **kwargs)


def test_zero_gpu_style_training_call_runs_in_a_forked_process(loop, monkeypatch):
    """On ZeroGPU, spaces.GPU runs the training call in a forked process: arguments and result travel
    pickled, closures do not travel, side effects are lost. The same here (no ZeroGPU to test on):
    the real call in a fork pool, with SPACES_ZERO_GPU=1. The round trains, passes and serves."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from dadc.rounds import retrain

    _REAL.append(retrain.fine_tune)
    callbacks = []

    def in_a_fork(*args, **kwargs):
        callbacks.append(kwargs.get("callback"))
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
            return pool.submit(_real_fine_tune, *args, **kwargs).result()  # pickles what goes in and out

    monkeypatch.setattr(retrain, "fine_tune", in_a_fork)
    monkeypatch.setenv("SPACES_ZERO_GPU", "1")
    registry, predictor, store, make_job, arrays = loop
    job = make_job(threshold=3, clean_drop=1.0, robust_drop=1.0)
    flag_some(store, job, arrays, 3)
    assert job.wait(180)
    [a] = attempts(registry)
    assert a["passed"] and predictor.round == "round-001" and callbacks == [None]
    before, after = registry.load("round-000")[0].state_dict(), registry.load("round-001")[0].state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the fork's weights came back


def test_gate_rejection_keeps_serving_and_records_why(loop):
    registry, predictor, store, make_job, arrays = loop
    job = make_job(threshold=2, clean_drop=-1.0)  # the candidate would need 100 pt more: impossible
    flag_some(store, job, arrays, 2)
    assert job.wait(120)
    [a] = attempts(registry)
    assert not a["passed"] and "clean accuracy" in a["reasons"][0]
    assert registry.names() == ["round-000"] and predictor.round == "round-000"
    assert "rejected" in job.status.stage


def test_many_flags_at_once_store_each_once_and_start_one_round_per_crossing(loop):
    registry, predictor, store, make_job, arrays = loop
    job = make_job(threshold=20, clean_drop=1.0, robust_drop=1.0)
    ids, lock = [], threading.Lock()

    def flagger(k):
        got = flag_some(store, job, arrays, 2, start=2 * k)
        with lock:
            ids.extend(got)
    threads = [threading.Thread(target=flagger, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert job.wait(180)
    assert store.count() == 32 and len(set(ids)) == 32 and {r.id for r in store.examples()} == set(ids)
    assert job.started == 1 and len(attempts(registry)) == 1 and attempts(registry)[0]["claimed"] == 20
    flag_some(store, job, arrays, 8, start=100)  # 40 eligible: the second crossing
    assert job.wait(180)
    assert job.started == 2 and [a["claimed"] for a in attempts(registry)] == [20, 40]


def test_flags_during_a_round_start_the_next_one_after_it(loop):
    registry, predictor, store, make_job, arrays = loop
    job = make_job(threshold=3, clean_drop=1.0, robust_drop=1.0)
    flag_some(store, job, arrays, 3)
    assert job.running
    flag_some(store, job, arrays, 3, start=3)  # crosses again while the first round trains
    assert job.started == 1  # never two at once
    assert job.wait(240)
    assert job.started == 2 and [a["round"] for a in attempts(registry)] == ["round-001", "round-002"]
    assert predictor.round == "round-002"


def test_restart_with_pending_flags_starts_a_round(loop):
    registry, predictor, store, make_job, arrays = loop
    for i in range(3):  # stored, but no job was listening (e.g. the app died before the round)
        store.append(arrays["test_x"][i].astype(np.float32) / 255, int(arrays["test_y"][i]), round=0)
    job = make_job(threshold=3, clean_drop=1.0, robust_drop=1.0).start()
    assert job.running and job.wait(120) and len(attempts(registry)) == 1


def test_verified_only_uses_examples_only_once_verified(loop):
    from dadc.examples import eligible

    registry, predictor, store, make_job, arrays = loop
    cfg = RoundConfig(verified_only=True, votes=2)
    ids = [store.append(arrays["test_x"][i].astype(np.float32) / 255, int(arrays["test_y"][i]), visitor="a")
           for i in range(3)]
    assert eligible(store.examples(), cfg) == []
    store.vote(ids[0], "b", True)
    assert eligible(store.examples(), cfg) == []  # one vote of two
    store.vote(ids[0], "c", True)
    store.vote(ids[1], "b", False)
    assert [r.id for r in eligible(store.examples(), cfg)] == [ids[0]]
    assert {r.id for r in eligible(store.examples(), RoundConfig())} == {ids[0], ids[2]}  # disputed one out


def cli(*args, home, **env):
    import os
    import subprocess
    import sys

    full = {**os.environ, "DADC_HOME": str(home), "PYTHONPATH": str(ROOT),
            **{f"DADC_ROUND_{k.upper()}": str(v) for k, v in TINY.items()}, **env}
    full.pop("DADC_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "dadc", *map(str, args)], capture_output=True, text=True,
                          env=full, cwd=ROOT, timeout=300)


def test_simulate_runs_headless_rounds_on_a_folder_of_drawings(tmp_path, round0):
    import csv
    import json

    home = mnist_into(tmp_path / "home")
    drawings = tmp_path / "drawings"
    r = cli("simulate", "--drawings", drawings, "--make-drawings", 12, "--families", "plain,thick", home=home)
    assert r.returncode == 0, r.stderr
    assert len(list(drawings.glob("plain-*.png"))) == len(list(drawings.glob("thick-*.png"))) == 12
    # every label off by one: whatever round 0 says, the simulated people flag it
    rows = list(csv.DictReader(open(drawings / "labels.csv")))
    with open(drawings / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "label"])
        w.writerows([[row["file"], (int(row["label"]) + 1) % 10] for row in rows])
    r = cli("simulate", "--drawings", drawings, "--rounds", 2, "--threshold", 3, "--seed-round", round0,
            home=home, DADC_ROUND_CLEAN_DROP="1", DADC_ROUND_ROBUST_DROP="1")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    out = result["rounds"]
    assert [row["round"] for row in out] == [0, 1, 2] and [row["flagged"] for row in out] == [0, 3, 6]
    assert out[0]["serving"] == "round-000" and out[2]["serving"] == "round-002" and out[2]["passed"]
    for row in out:
        assert 0 <= row["unseen_error"] <= 1 and 0 <= row["robust_acc"] <= row["mnist_test_acc"] <= 1
    assert out[0]["unseen_error"] > 0.8  # the labels are all off by one
    assert list(result["matrix"]) == ["round-000", "round-001", "round-002"]
    assert "accuracy on the held-out drawings that fooled each round" in r.stderr  # the readable matrix


def test_simulate_and_rollback_bad_input_one_line_errors(tmp_path, round0):
    home = mnist_into(tmp_path / "home")
    r = cli("simulate", "--drawings", tmp_path / "nothing", "--rounds", 1, "--seed-round", round0, home=home)
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith("error: ") and "labels.csv" in r.stderr
    Registry(home, round0)
    r = cli("rollback", "round-007", home=home)
    assert r.returncode == 1 and "no round named 'round-007'" in r.stderr and "Traceback" not in r.stderr
    r = cli("rollback", "round-000", home=home)
    assert r.returncode == 0 and (home / "rounds" / "CURRENT").read_text().strip() == "round-000"
