"""Nothing lost across restarts, shutdowns and crashes, against `python app.py` really launched with
a local Hub (tests/fake_hub.py on HF_ENDPOINT): SIGTERM pushes what was acknowledged; a flag reaches
the Hub within DADC_PUSH_DELAY; a fresh disk serves the same round with the same history and trains
nothing at boot; one app per home; DADC_HOME anywhere; torn lines repaired; SIGKILL at random points."""
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fake_hub import FakeHub
from test_app import (ROOT, App, canvas_file, flag_n, free_port, history, mnist, round0, stored,  # noqa: F401
                      wait_for_attempts)
from test_faults import DATASET, TOKEN, dashboard_status, hub_rows, wait_until

MODELS = "tester/rounds"


def hub_env(port, **env):
    return {"HF_TOKEN": TOKEN, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{port}",
            "DADC_DATASET_REPO": DATASET, **env}


@pytest.fixture
def hub():
    h = FakeHub(port=free_port()).start()
    yield h
    h.stop()


@pytest.mark.slow
def test_sigterm_pushes_every_acknowledged_flag_before_exit(tmp_path, round0, mnist, hub):  # noqa: F811
    # an hour between scheduled pushes and a 10-minute delay: only the shutdown push can carry them
    a = App(tmp_path / "home", round0, **hub_env(hub.port, DADC_PUSH_EVERY="60", DADC_PUSH_DELAY="600",
                                                 DADC_THRESHOLD="1000"))
    try:
        wait_until(lambda: ("dataset", DATASET) in hub.repos, 30, a, "the app did not connect")
        ids = sorted(r["id"] for r in flag_n(a.client(), mnist, tmp_path, 5))
        t = time.time()
        a.proc.send_signal(signal.SIGTERM)
        a.proc.wait(60)
        took = time.time() - t
    finally:
        a.stop()
    assert sorted(r["id"] for r in hub_rows(hub)) == ids
    assert took < 15, f"shutdown took {took:.1f} s"


@pytest.mark.slow
def test_a_flag_reaches_the_hub_within_the_push_delay(tmp_path, round0, mnist, hub):  # noqa: F811
    a = App(tmp_path / "home", round0, **hub_env(hub.port, DADC_PUSH_EVERY="60", DADC_PUSH_DELAY="1",
                                                 DADC_THRESHOLD="1000"))
    try:
        wait_until(lambda: ("dataset", DATASET) in hub.repos, 30, a, "the app did not connect")
        c = a.client()
        for k in range(2):  # twice: the delayed push is armed again after each
            [r] = flag_n(c, mnist, tmp_path, 1, start=k)
            t = time.time()
            wait_until(lambda: r["id"] in {x["id"] for x in hub_rows(hub)}, 20, a, "the flag did not reach the Hub")
            assert time.time() - t < 10
    finally:
        a.stop()


@pytest.mark.slow
def test_a_fresh_disk_serves_the_same_round_with_the_same_history(tmp_path, round0, mnist, hub):  # noqa: F811
    env = hub_env(hub.port, DADC_MODEL_REPO=MODELS, DADC_PUSH_EVERY="60", DADC_PUSH_DELAY="1",
                  DADC_ROUND_CLEAN_DROP="1", DADC_ROUND_ROBUST_DROP="1")
    a = App(tmp_path / "old", round0, **env)  # DADC_THRESHOLD=3
    try:
        flag_n(a.client(), mnist, tmp_path, 3)
        [attempt] = wait_for_attempts(a)
        assert attempt["passed"] and attempt["round"] == "round-001"
        old_history = (a.home / "rounds" / "history.jsonl").read_bytes()
        wait_until(lambda: hub.files(MODELS, "model").get("rounds/history.jsonl") == old_history
                   and "rounds/round-001/model.safetensors" in hub.files(MODELS, "model"), 30, a,
                   "the round and the history did not reach the Hub")
    finally:
        a.stop()
    b = App(tmp_path / "new", round0, **env)  # an empty disk (but for MNIST and the shipped round-000)
    try:
        wait_until(lambda: "Serving round-001" in dashboard_status(b), 60, b, "the restored round is not served")
        time.sleep(3)  # a round trained at boot would have started by now
        assert (b.home / "rounds" / "round-001" / "model.safetensors").read_bytes() == \
            (a.home / "rounds" / "round-001" / "model.safetensors").read_bytes()
        assert (b.home / "rounds" / "history.jsonl").read_bytes() == old_history  # no attempt at boot
        assert len(stored(b.home)) == 3
        r = subprocess.run([sys.executable, "-m", "dadc", "rollback", "round-000"], cwd=ROOT, capture_output=True,
                           text=True, env={**os.environ, "DADC_HOME": str(b.home), "PYTHONPATH": str(ROOT)})
        assert r.returncode == 0, r.stderr
        assert (b.home / "rounds" / "CURRENT").read_text().strip() == "round-000"
    finally:
        b.stop()


@pytest.mark.slow
def test_a_second_app_on_the_same_home_is_refused(tmp_path, round0):  # noqa: F811
    a = App(tmp_path / "home", round0)
    try:
        env = {**os.environ, "DADC_HOME": str(a.home), "GRADIO_SERVER_PORT": str(free_port()),
               "PYTHONPATH": str(ROOT)}
        r = subprocess.run([sys.executable, "app.py"], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode != 0
        assert "another app is already running" in r.stderr and "app.lock" in r.stderr
        assert f"process {a.proc.pid}" in r.stderr
        assert a.proc.poll() is None  # the first one is untouched
    finally:
        a.stop()


@pytest.mark.slow
def test_verify_shows_the_canvas_with_the_home_outside_the_working_and_temp_folders(round0, mnist, tmp_path):  # noqa: F811
    home = Path("/var/tmp") / f"dadc-test-{os.getpid()}-{random.randrange(10**6)}" / "home"
    a = App(home, round0)
    try:
        flag_n(a.client(), mnist, tmp_path, 1)
        picture, *_, ex = a.client().predict(api_name="/verify_next")
        assert ex and Path(picture).is_file() and Path(picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        a.stop()
        shutil.rmtree(home.parent, ignore_errors=True)


def test_a_torn_history_line_is_repaired_and_kept_aside(tmp_path, round0):  # noqa: F811
    from dadc.rounds.registry import Registry

    reg = Registry(tmp_path, round0)
    reg.record({"event": "rollback", "from": "round-000", "to": "round-000", "why": "test"})
    path = tmp_path / "rounds" / "history.jsonl"
    with open(path, "ab") as f:
        f.write(b'{"event": "attempt", "clai')  # the process died mid-write
    reg = Registry(tmp_path, round0)
    assert path.read_bytes().endswith(b"\n") and len(reg.history()) == 1
    assert (tmp_path / "rounds" / "history.jsonl.torn").read_bytes() == b'{"event": "attempt", "clai\n'
    reg.record({"event": "rollback", "from": "round-000", "to": "round-000", "why": "after"})
    assert [h["why"] for h in reg.history()] == ["test", "after"]


@pytest.mark.slow
def test_sigkill_at_random_points_during_flags_and_rounds(tmp_path, round0, mnist):  # noqa: F811
    """Kill -9 the app at a random moment, five times, while four clients flag and rounds train
    (threshold 3): after each restart every acknowledged flag is there, exactly once, and the
    served round loads (the app serves)."""
    home, rng = tmp_path / "home", random.Random(7)
    value = canvas_file(tmp_path / "c.png", mnist["test_x"][3])
    acked = []
    for life in range(5):
        a = App(home, round0, DADC_ROUND_CLEAN_DROP="1", DADC_ROUND_ROBUST_DROP="1")
        ids = [r["id"] for r in stored(home)]
        assert set(acked) <= set(ids) and len(ids) == len(set(ids)), f"life {life}: acknowledged flags lost"
        assert a.client().predict(value, api_name="/predict")["confidences"]  # the served round loads
        stop, lock = threading.Event(), threading.Lock()

        def flagger(k):
            try:
                c = a.client()
                j = 0
                while not stop.is_set():
                    r = c.predict(value, (k + j) % 10, api_name="/flag")
                    with lock:
                        acked.append(r["id"])
                    j += 1
            except Exception:
                return  # the app died under this request: not acknowledged

        threads = [threading.Thread(target=flagger, args=(k,), daemon=True) for k in range(4)]
        for t in threads:
            t.start()
        time.sleep(rng.uniform(1.0, 6.0))
        os.kill(a.proc.pid, signal.SIGKILL)
        a.proc.wait(30)
        stop.set()
        for t in threads:
            t.join(30)
        a.log.close()
    a = App(home, round0)
    try:
        ids = [r["id"] for r in stored(home)]
        assert set(acked) <= set(ids) and len(ids) == len(set(ids))
        assert len(acked) > 10
        print(f"{len(acked)} flags acknowledged over 5 lives; {len(ids)} stored; "
              f"{sum(h.get('event') == 'attempt' for h in history(home))} round attempts recorded")
    finally:
        a.stop()
