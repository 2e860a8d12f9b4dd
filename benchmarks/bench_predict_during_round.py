"""/predict over HTTP while a background round trains, against the real app (`python app.py` in a
subprocess, gradio_client calls one after another, as a visitor's browser makes them): p50 and p95
idle, then while a round triggered by DADC_THRESHOLD flags trains, and the round's own seconds and
the load average (the machine is noisy: idle and busy are measured in the same run). Target: p50
while training <= 1.5x idle, on 2 cores. Each mode runs the app once:

    isolated     the app's default: training and the gate's PGD in a forked child at nice 19 with
                 one torch thread (dadc/rounds/isolate.py)
    in-thread    the round in a thread of the app, as before (DADC_ISOLATE_ROUNDS=0)
    in-thread-2t the same with torch's default threads (one per core), as when a round starts before
                 any /predict call (Predictor's set_num_threads(1) also holds for threads started later)
    thread-nice  the round's thread lowered instead: nice 19 for that thread only (Linux nice is per
                 thread) and one torch thread, patched into RetrainJob._run by a launcher (measured
                 here only, to compare; not in the app)

    python benchmarks/bench_predict_during_round.py [--modes isolated,in-thread,in-thread-2t,thread-nice]
        [--idle 40] [--rounds 2] [--clients 1]

--clients K: K visitors at once, each calling /predict one call after another (K=1: one visitor).

Default round settings (DADC_ROUND_*), MNIST from ./.dadc (run `python -m dadc data` first).
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dadc.model import mnist as data  # noqa: E402
from dadc.synth.canvas import paste_mnist as draw  # noqa: E402

THRESHOLD = 10
# thread-nice and in-thread-2t: set the round's own thread before it runs (setpriority on a thread id
# lowers that thread only; torch.set_num_threads holds for this thread and threads started later)
LAUNCHER = """
import os, runpy, sys, threading
import torch
sys.path.insert(0, os.getcwd())
from dadc.rounds import retrain
run = retrain.RetrainJob._run
def lowered(self, claimed):
    if NICE:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)
    torch.set_num_threads(THREADS)
    return run(self, claimed)
retrain.RetrainJob._run = lowered
sys.argv = ["app.py"]
runpy.run_path("app.py", run_name="__main__")
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(mode):
    home = Path(tempfile.mkdtemp(prefix="bench-during-round-"))
    (home / "mnist").mkdir()
    (home / "mnist" / "mnist.safetensors").symlink_to(ROOT / ".dadc" / "mnist" / "mnist.safetensors")
    port = free_port()
    env = {**os.environ, "DADC_HOME": str(home), "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1",
           "DADC_THRESHOLD": str(THRESHOLD), "DADC_ISOLATE_ROUNDS": "1" if mode == "isolated" else "0",
           "HF_HUB_OFFLINE": "1"}
    patch = {"thread-nice": "NICE, THREADS = 19, 1", "in-thread-2t": f"NICE, THREADS = 0, {os.cpu_count()}"}
    cmd = [sys.executable, "-c", patch[mode] + LAUNCHER] if mode in patch else [sys.executable, "app.py"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            urllib.request.urlopen(url, timeout=2)
            return proc, home, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("the app did not start")


def canvases(tmp, n, seed):
    from gradio_client import handle_file

    arrays = data.fetch(ROOT / ".dadc", log=lambda m: None)
    rng = np.random.default_rng(seed)
    out = []
    for i, k in enumerate(rng.choice(len(arrays["test_y"]), size=n, replace=False)):
        path = Path(tmp) / f"{seed}-{i}.png"
        draw(arrays["test_x"][k], (448, 448), int(rng.integers(150, 350)), rng=rng).save(path)
        out.append(({"background": handle_file(str(path)), "layers": [], "composite": None}, int(arrays["test_y"][k])))
    return out


def attempts(home):
    path = home / "rounds" / "history.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line) for line in lines if '"attempt"' in line]


def ms(times):
    return {"p50_ms": round(float(np.median(times)) * 1e3, 1), "p95_ms": round(float(np.percentile(times, 95)) * 1e3, 1),
            "n": len(times)}


def predict(client, value):
    t = time.perf_counter()
    client.predict(value, api_name="/predict")
    return time.perf_counter() - t


def visitors(clients, values, until):
    """Each client calls /predict one call after another until until() is true; all the times."""
    times = [[] for _ in clients]

    def visit(k):
        i = k
        while not until(len(times[k])):
            times[k].append(predict(clients[k], values[i % len(values)][0]))
            i += len(clients)
    threads = [threading.Thread(target=visit, args=(k,)) for k in range(len(clients))]
    [t.start() for t in threads]
    [t.join() for t in threads]
    return [t for ts in times for t in ts]


def run(mode, args, tmp):
    from gradio_client import Client

    proc, home, url = start_app(mode)
    try:
        clients = [Client(url, verbose=False) for _ in range(args.clients)]
        values = canvases(tmp, 60, seed=1)
        visitors(clients, values, lambda n: n >= 3)  # warm-up
        load_idle = os.getloadavg()[0]
        idle = visitors(clients, values, lambda n: n >= args.idle)
        busy, seconds = [], []
        for r in range(args.rounds):
            for v, digit in canvases(tmp, THRESHOLD, seed=100 + r):
                clients[0].predict(v, (digit + 1) % 10, api_name="/flag")
            started = time.time()
            busy += visitors(clients, values, lambda n: len(attempts(home)) > r or time.time() - started > 600)
            done = attempts(home)[r] if len(attempts(home)) > r else {"reasons": ["not finished"]}
            seconds.append(done.get("seconds") or done["reasons"])  # a failed round: why
        out = {"mode": mode, "clients": args.clients, "idle": ms(idle), "during_round": ms(busy), "round_seconds": seconds}
        out["p50_ratio"] = round(out["during_round"]["p50_ms"] / out["idle"]["p50_ms"], 2)
        out["load1_before"], out["load1_after"] = load_idle, os.getloadavg()[0]
        return out
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(home, ignore_errors=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--modes", default="isolated,in-thread")
    p.add_argument("--idle", type=int, default=40, help="idle /predict calls")
    p.add_argument("--rounds", type=int, default=2, help="rounds measured per mode")
    p.add_argument("--clients", type=int, default=1, help="visitors calling /predict at once")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes.split(","):
            print(json.dumps(run(mode, args, tmp)), flush=True)


if __name__ == "__main__":
    main()
