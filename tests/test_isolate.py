"""isolate.call, which runs the app's background round's heavy parts in a forked child at the
lowest CPU priority with one torch thread (dadc/rounds/isolate.py): what it returns and reports
comes back, an error comes back as an error, a stopped round kills the child, and the app's own
process keeps its priority. Whether /predict keeps its speed is a benchmark
(benchmarks/bench_predict_during_round.py)."""
import os
import time

import pytest
import torch

from dadc.rounds import isolate


def where_am_i(n, callback=None):
    for i in range(n):
        callback(i + 1, n, {"loss": 0.5})
    return {"pid": os.getpid(), "nice": os.getpriority(os.PRIO_PROCESS, 0), "threads": torch.get_num_threads(),
            "sum": torch.arange(n).sum().item()}


def test_the_child_is_lowered_and_its_result_and_progress_come_back():
    seen = []
    out = isolate.call(where_am_i, 3, callback=lambda done, total, m: seen.append((done, total, m["loss"])))
    assert out["pid"] != os.getpid() and out["nice"] == 19 and out["threads"] == 1 and out["sum"] == 3
    assert seen == [(1, 3, 0.5), (2, 3, 0.5), (3, 3, 0.5)]
    assert os.getpriority(os.PRIO_PROCESS, 0) == 0  # the app itself keeps its priority


def fails():
    raise ValueError("bad input")


def test_an_error_in_the_child_is_raised_here():
    with pytest.raises(RuntimeError, match="ValueError: bad input"):
        isolate.call(fails)


def forever(callback=None):
    while True:
        callback()
        time.sleep(0.01)


def test_stopping_from_the_callback_kills_the_child_and_leaves_no_zombie():
    class Stop(Exception):
        pass

    calls = []

    def stop_at_third():
        calls.append(1)
        if len(calls) == 3:
            raise Stop()
    with pytest.raises(Stop):
        isolate.call(forever, callback=stop_at_third)
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)  # reaped: no child left


def test_the_app_isolates_its_rounds_unless_told_not_to(tmp_path):
    """The Studio (the app) sets it; tests/test_round_priority.py checks what an isolated round does."""
    from dadc.config import Settings
    from dadc.studio.service import Studio
    from test_rounds import train_round0

    round0 = train_round0(tmp_path / "r0" / "round-000")
    for isolate_rounds in (True, False):
        studio = Studio(Settings(home=tmp_path / f"home{isolate_rounds}", isolate_rounds=isolate_rounds), round0)
        assert studio.job.isolated is isolate_rounds
        studio.stop()


def test_stopping_the_app_kills_a_running_child_at_once():
    """A child left running would hold the app's open files (its app.lock) after the app exited."""
    import threading

    errors = []
    t = threading.Thread(target=lambda: _call_forever(errors))
    t.start()
    deadline = time.time() + 10
    while not isolate._children and time.time() < deadline:
        time.sleep(0.01)
    isolate.kill_children()
    t.join(10)
    assert not t.is_alive() and errors and "child process died" in errors[0]
    assert not isolate._children


def _call_forever(errors):
    try:
        isolate.call(forever, callback=lambda: None)
    except RuntimeError as e:
        errors.append(str(e))
