"""Load: N concurrent gradio_client users predicting and flagging against a running app, for a
bounded time. Prints throughput, p50/p99 latency per endpoint, and errors.

    python app.py &                                   # or any deployment
    python benchmarks/bench_load.py --url http://127.0.0.1:7860 --users 16 --seconds 30 --flag-every 5

Each user draws a digit (a synthetic PNG made once), calls /predict, and every `--flag-every`-th
request calls /flag instead (flags are stored: point it at a throwaway DADC_HOME). With --launch it
starts `python app.py` itself on a temporary DADC_HOME (threshold high: no retraining; flag rate
limit off) and stops it. Against an app of your own, flags past its DADC_FLAG_LIMIT count as errors.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]


def digit_png(path):
    img = Image.new("RGB", (448, 448), "white")
    d = ImageDraw.Draw(img)
    d.line([(130, 110), (320, 110), (220, 360)], fill="black", width=22)  # a 7
    img.save(path)
    return path


def launch(home):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "DADC_HOME": str(home), "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "DADC_THRESHOLD": "1000000", "DADC_FLAG_LIMIT": "1000000", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    env.pop("HF_TOKEN", None)
    log = open(Path(home) / "app.log", "w")
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit("the app exited: " + (Path(home) / "app.log").read_text()[-2000:])
        try:
            urllib.request.urlopen(url + "/", timeout=2)
            return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("the app did not start in 180 s")


def pct(values, q):
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="a running app (else use --launch)")
    ap.add_argument("--launch", action="store_true", help="start python app.py on a temporary DADC_HOME")
    ap.add_argument("--users", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--flag-every", type=int, default=5, help="every k-th request is a /flag (0: never)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    if not args.url and not args.launch:
        ap.error("give --url or --launch")
    from gradio_client import Client, handle_file

    tmp = Path(tempfile.mkdtemp(prefix="dadc-load-"))
    proc = None
    if args.launch:
        (tmp / "home").mkdir()
        proc, args.url = launch(tmp / "home")
    try:
        value = {"background": handle_file(str(digit_png(tmp / "seven.png"))), "layers": [], "composite": None}
        lat, errors, lock = defaultdict(list), Counter(), threading.Lock()
        start = threading.Barrier(args.users + 1)
        stop_at = [0.0]

        def user(k):
            try:
                c = Client(args.url, verbose=False)
            except Exception as e:
                with lock:
                    errors[f"connect: {type(e).__name__}"] += 1
                start.wait()
                return
            start.wait()
            i = 0
            while time.perf_counter() < stop_at[0]:
                i += 1
                flag = args.flag_every and i % args.flag_every == 0
                t0 = time.perf_counter()
                try:
                    if flag:
                        r = c.predict(value, (k + i) % 10, api_name="/flag")
                        assert r["saved"] is True
                    else:
                        r = c.predict(value, api_name="/predict")
                        assert r["confidences"]
                except Exception as e:
                    with lock:
                        errors[f"{'flag' if flag else 'predict'}: {type(e).__name__}: {str(e)[:80]}"] += 1
                    continue
                with lock:
                    lat["flag" if flag else "predict"].append(time.perf_counter() - t0)

        threads = [threading.Thread(target=user, args=(k,), daemon=True) for k in range(args.users)]
        for t in threads:
            t.start()
        stop_at[0] = time.perf_counter() + 3600  # set for real once every user is connected
        start.wait()
        t0 = time.perf_counter()
        stop_at[0] = t0 + args.seconds
        for t in threads:
            t.join(args.seconds + 120)
        wall = time.perf_counter() - t0
        out = {"url": args.url, "users": args.users, "seconds": round(wall, 1), "flag_every": args.flag_every,
               "requests": sum(len(v) for v in lat.values()),
               "throughput_rps": round(sum(len(v) for v in lat.values()) / wall, 1),
               "errors": sum(errors.values()), "error_kinds": dict(errors), "cpus": os.cpu_count()}
        for name, v in lat.items():
            out[name] = {"n": len(v), "p50_ms": round(pct(v, 50), 1), "p99_ms": round(pct(v, 99), 1),
                         "max_ms": round(max(v) * 1000, 1)}
        if args.json:
            print(json.dumps(out))
        else:
            print(f"{out['users']} users, {out['seconds']} s, {out['cpus']} CPUs: {out['requests']} requests, "
                  f"{out['throughput_rps']} req/s, {out['errors']} errors")
            for name in ("predict", "flag"):
                if name in out:
                    s = out[name]
                    print(f"  /{name:8s} n={s['n']:6d}  p50 {s['p50_ms']:8.1f} ms  p99 {s['p99_ms']:8.1f} ms  "
                          f"max {s['max_ms']:8.1f} ms")
            for kind, n in errors.most_common():
                print(f"  error x{n}: {kind}")
        return 1 if errors else 0
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    sys.exit(main())
