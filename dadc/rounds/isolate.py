"""A function run in a forked child at the lowest CPU priority with one torch thread: how the app's
background round trains and measures without taking the cores from visitors' requests.

In the same process, a round's Python steps hold the GIL that every request needs, and its torch
threads take both cores of a small box. In a child the round has its own GIL, `nice 19` makes the
kernel give the cores to the server first, and one torch thread leaves a core free. The child is
forked, so it starts at once with the parent's tensors (nothing is copied in); only the result
comes back (a state_dict or a few numbers), pickled by value through a pipe from our own child:
never from disk or the network. Plain pickle, not multiprocessing's: torch's reducers would share
tensors by file descriptors that die with the child. This is the pattern ZeroGPU uses for
`spaces.GPU` calls, and the same caution applies: the child runs plain tensor code and no lock of
the parent's, and sets one torch thread before any parallel op (a CPU thread pool inherited across
fork hangs at its first use with GNU OpenMP)."""
import os
import pickle
import signal
import threading
from multiprocessing import Pipe

import torch

_children, _lock = set(), threading.Lock()  # pids of the children running now (kill_children)


def call(fn, *args, callback=None, **kwargs):
    """fn(*args, **kwargs) in a forked, lowered child; returns its result. `callback` (progress)
    is called here with what the child reports. The child's error is raised here as a
    RuntimeError; an exception here (e.g. the app stopping the round from the callback) kills it."""
    read, write = Pipe(duplex=False)
    pid = os.fork()
    if pid == 0:
        _child(read, write, fn, args, kwargs, callback is not None)
    write.close()
    with _lock:
        _children.add(pid)
    try:
        while True:
            try:
                kind, value = pickle.loads(read.recv_bytes())
            except EOFError:
                raise RuntimeError("the round's child process died (killed, or out of memory)") from None
            if kind == "progress":
                callback(*value)
            elif kind == "error":
                raise RuntimeError(value)
            else:
                return value
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        raise
    finally:
        read.close()
        os.waitpid(pid, 0)
        with _lock:
            _children.discard(pid)


def kill_children():
    """Kill the children running now (the app is stopping). A child shares the parent's open files,
    so one left running would hold the home's app.lock after the app exited: a restart would wait."""
    with _lock:
        for pid in _children:
            os.kill(pid, signal.SIGKILL)


def _child(read, write, fn, args, kwargs, report):
    """In the child: lower itself, run, send the result (or the error), and exit at once (never
    back into the parent's code: no atexit handlers, no threads of the parent's to join)."""
    code = 1
    try:
        read.close()
        os.setpriority(os.PRIO_PROCESS, 0, 19)
        torch.set_num_threads(1)
        if report:
            kwargs["callback"] = lambda *a: write.send_bytes(pickle.dumps(("progress", a)))
        write.send_bytes(pickle.dumps(("done", fn(*args, **kwargs))))
        code = 0
    except BaseException as e:
        try:
            write.send_bytes(pickle.dumps(("error", f"{type(e).__name__}: {e}")))
        except BaseException:
            pass
    finally:
        os._exit(code)
