"""Faults a real deployment meets, against `python app.py` really launched (test_app.py's helpers):
the process SIGKILLed while many clients flag, a corrupt round on disk, a retraining round that
raises."""
import os
import shutil
import signal
import threading
import time
from collections import Counter

import pytest

from test_app import App, canvas_file, history, mnist, round0, stored, wait_for_attempts  # noqa: F401

CLIENTS = 16


def test_sigkill_while_flagging_loses_no_acknowledged_flag(tmp_path, round0, mnist):  # noqa: F811
    """16 clients flag in a loop; the app is SIGKILLed mid-stream and restarted on the same
    DADC_HOME: every flag that was acknowledged (saved=True) is there exactly once, nothing torn."""
    home = tmp_path / "home"
    a = App(home, round0, DADC_THRESHOLD="100000")
    value = canvas_file(tmp_path / "c.png", mnist["test_x"][3])
    acked, lock, stop = [], threading.Lock(), threading.Event()
    errors = Counter()

    def one_client(k):
        try:
            c = a.client()
        except Exception as e:  # the kill came before this client connected
            errors[type(e).__name__] += 1
            return
        j = 0
        while not stop.is_set():
            try:
                r = c.predict(value, (k + j) % 10, api_name="/flag")
            except Exception as e:  # the app died under this request: not acknowledged
                errors[type(e).__name__] += 1
                return
            assert r["saved"] is True
            with lock:
                acked.append(r["id"])
            j += 1

    threads = [threading.Thread(target=one_client, args=(k,), daemon=True) for k in range(CLIENTS)]
    try:
        for t in threads:
            t.start()
        deadline = time.time() + 90
        while len(acked) < 3 * CLIENTS and time.time() < deadline:  # kill mid-stream, writes in flight
            time.sleep(0.05)
        assert acked, "no flag was acknowledged before the kill"
        os.kill(a.proc.pid, signal.SIGKILL)
        a.proc.wait(30)
    finally:
        stop.set()
        until = time.time() + 60  # one bound for all (a client stuck on the dead socket is a daemon)
        for t in threads:
            t.join(max(0.1, until - time.time()))
        a.log.close()
    with lock:
        acked_ids = list(acked)
    b = App(home, round0, DADC_THRESHOLD="100000")  # restart on the same home
    try:
        rows = stored(home)
        ids = Counter(r["id"] for r in rows)
        assert all(n == 1 for n in ids.values()), "a flag stored twice"
        missing = [i for i in acked_ids if i not in ids]
        assert not missing, f"{len(missing)} acknowledged flags lost"
        assert len(rows) >= len(acked_ids)  # at most a few stored whose receipt never reached the client
        folder = next((home / "flags" / "data").iterdir())
        assert all((folder / r["file_name"]).exists() for r in rows)
        r = b.client().predict(value, 5, api_name="/flag")  # serving, and appends after the repair
        assert r["saved"] and len(stored(home)) == len(rows) + 1
        print(f"acknowledged {len(acked_ids)}, stored {len(rows)}, client errors at the kill {dict(errors)}")
    finally:
        b.stop()


def corrupt_copy(home, round0, name="round-001"):
    dest = home / "rounds" / name
    shutil.copytree(round0, dest)
    weights = dest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated: the header promises more
    return dest


def seed_home(home, round0):
    shutil.copytree(round0, home / "rounds" / "round-000")


def test_corrupt_round_that_is_not_current_leaves_serving_alone(tmp_path, round0, mnist):  # noqa: F811
    home = tmp_path / "home"
    seed_home(home, round0)
    corrupt_copy(home, round0)
    (home / "rounds" / "CURRENT").write_text("round-000\n")
    a = App(home, round0)
    try:
        c = a.client()
        r = c.predict(canvas_file(tmp_path / "c.png", mnist["test_x"][0]), 1, api_name="/flag")
        assert r["saved"] and r["round"] == "round-000"
    finally:
        a.stop()


def test_corrupt_newest_round_starts_on_the_last_good_one(tmp_path, round0, mnist):  # noqa: F811
    home = tmp_path / "home"
    seed_home(home, round0)
    corrupt_copy(home, round0)
    (home / "rounds" / "CURRENT").write_text("round-001\n")  # as a promotion leaves it
    a = App(home, round0)
    try:
        r = a.client().predict(canvas_file(tmp_path / "c.png", mnist["test_x"][0]), 1, api_name="/flag")
        assert r["saved"] and r["round"] == "round-000"
    finally:
        a.stop()


def test_a_round_that_raises_keeps_the_old_round_and_records_why(tmp_path, round0, mnist):  # noqa: F811
    """A negative learning rate makes training raise inside the background round: the app keeps
    serving round 0 and history.jsonl says why the round failed."""
    a = App(tmp_path / "home", round0, DADC_ROUND_LR="-1")
    try:
        c = a.client()
        for i in range(3):  # DADC_THRESHOLD=3
            value = canvas_file(tmp_path / f"r{i}.png", mnist["test_x"][i])
            assert c.predict(value, int(mnist["test_y"][i]), api_name="/flag")["saved"]
        [attempt] = wait_for_attempts(a)
        assert attempt["passed"] is False and "the round failed" in attempt["reasons"][0]
        assert "lr" in attempt["reasons"][0]
        assert not (a.home / "rounds" / "round-001").exists()
        r = c.predict(canvas_file(tmp_path / "x.png", mnist["test_x"][4]), 4, api_name="/flag")
        assert r["saved"] and r["round"] == "round-000"
        assert a.proc.poll() is None
    finally:
        a.stop()
