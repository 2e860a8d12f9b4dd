"""A local round must not take the cores from visitors: the app's background round (isolated)
trains at nice 19 with one torch thread, while the thread that started it, and threads started
after it (a request's), keep their priority and torch threads; a foreground round (`python -m dadc
retrain`, simulate: not isolated) trains at full speed in the caller. No timing here: the latency
itself is benchmarks/bench_predict_during_round.py."""
import json
import os
import threading

import torch

from dadc.rounds import retrain
from test_rounds import flag_some, loop, round0  # noqa: F401 (fixtures)


def where(record):
    """A fine_tune that writes where it ran (a forked child's memory does not come back), then trains."""
    real = retrain.fine_tune

    def fine_tune(*args, **kwargs):
        record.write_text(json.dumps({"pid": os.getpid(), "threads": torch.get_num_threads(),
                                      "nice": os.getpriority(os.PRIO_PROCESS, threading.get_native_id())}))
        return real(*args, **kwargs)
    return fine_tune


def here():
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id()), torch.get_num_threads()


def in_new_thread():
    out = []
    t = threading.Thread(target=lambda: out.append(here()))
    t.start()
    t.join()
    return out[0]


def test_a_background_round_is_lowered_and_the_serving_threads_are_not(loop, tmp_path, monkeypatch):
    registry, predictor, store, make_job, arrays = loop
    record = tmp_path / "where.json"
    monkeypatch.setattr(retrain, "fine_tune", where(record))
    job = make_job(threshold=2, clean_drop=1.0, robust_drop=1.0)
    job.isolated = True  # as the app sets it (Studio; not on ZeroGPU)
    before, before_new = here(), in_new_thread()
    flag_some(store, job, arrays, 2)
    assert job.running and job.wait(120)
    ran = json.loads(record.read_text())
    assert ran["pid"] != os.getpid() and ran["nice"] == 19 and ran["threads"] == 1
    assert registry.history()[-1]["passed"], registry.history()[-1]["reasons"]
    assert here() == before and in_new_thread() == before_new  # the server's threads, old and new


def test_a_foreground_round_trains_at_the_callers_speed(loop, tmp_path, monkeypatch):
    registry, predictor, store, make_job, arrays = loop
    record = tmp_path / "where.json"
    monkeypatch.setattr(retrain, "fine_tune", where(record))
    job = make_job(threshold=100, clean_drop=1.0, robust_drop=1.0)  # as the CLI builds it: not isolated
    flag_some(store, job, arrays, 2)
    nice, threads = here()
    job.run_round(2)
    ran = json.loads(record.read_text())
    assert ran == {"pid": os.getpid(), "nice": nice, "threads": threads}
    assert here() == (nice, threads)


def test_stopping_the_app_ends_an_isolated_round_as_stopped_not_failed(loop, monkeypatch):
    """stop() kills the round's child at once (it holds the app's open files); the round is recorded
    as stopped, so its examples start a round again after the restart."""
    import time

    from dadc.rounds import isolate

    registry, predictor, store, make_job, arrays = loop
    monkeypatch.setattr(retrain, "fine_tune", lambda *a, **k: time.sleep(600))
    job = make_job(threshold=2)
    job.isolated = True
    flag_some(store, job, arrays, 2)
    deadline = time.time() + 60
    while not isolate._children and time.time() < deadline:
        time.sleep(0.02)
    assert isolate._children, "the round's child did not start"
    assert job.stop(timeout=10)
    assert registry.history()[-1]["event"] == "stopped" and not isolate._children
