"""/predict through HTTP with gradio_client, against echo endpoints in the same app and run:
  /echo_canvas  the same Sketchpad input (same upload and decoding), returns a constant gr.Label value
  /echo_text    a Textbox in, the same text out: Gradio's own per-request cost
Targets: /predict p50 <= echo p50 + 10 ms; 32 concurrent clients, 0 errors, throughput >= 80 % of echo's.

    python benchmarks/bench_app_http.py [--n 200] [--clients 32] [--per-client 10]

The app runs in a subprocess (`--serve`, the studio from dadc.web.ui plus the echo endpoints, launched
with dadc.web.ui.launch's settings) on a free port, with a fresh DADC_HOME in a temp folder.
"""
import argparse
import os
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


def serve(port):
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    from dadc.web import components
    from dadc import config
    from dadc.web import ui

    demo = ui.build(config.from_env())
    with demo:  # the echo endpoints, hidden, with the same concurrency settings as /predict
        canvas = components.Canvas(type="pil", visible=False)
        label = gr.Label(visible=False)
        text_in, text_out = gr.Textbox(visible=False), gr.Textbox(visible=False)
        gr.Button(visible=False).click(lambda v: {"echo": 1.0}, canvas, label, api_name="echo_canvas",
                                       concurrency_limit=None)
        gr.Button(visible=False).click(lambda t: t, text_in, text_out, api_name="echo_text", concurrency_limit=None)
    ui.launch(demo, server_name="127.0.0.1", server_port=port, quiet=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=200, help="sequential requests per endpoint")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--per-client", type=int, default=10)
    args = p.parse_args()
    if args.serve:
        return serve(args.serve)

    from gradio_client import Client, handle_file

    from dadc.model import mnist as data
    from dadc.synth.canvas import paste_mnist as draw
    from dadc.preprocess import CANVAS

    port = free_port()
    home = tempfile.mkdtemp(prefix="bench-http-")
    env = dict(os.environ, DADC_HOME=home, GRADIO_TEMP_DIR=str(Path(home) / "gradio-tmp"),
               PYTHONPATH=str(ROOT), DADC_THRESHOLD="1000000")  # no retraining during the run
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=open(Path(home) / "server.log", "w"))
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(url + "/", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        arrays = data.fetch(ROOT / ".dadc", log=lambda m: None)
        path = Path(home) / "digit.png"
        draw(arrays["test_x"][0], (CANVAS, CANVAS), 300, 6, "RGBA").save(path)
        value = {"background": handle_file(str(path)), "layers": [], "composite": None}
        calls = {"/predict": (value,), "/echo_canvas": (value,), "/echo_text": ("hello",)}
        c = Client(url, verbose=False)
        for name, a in calls.items():  # warm up
            for _ in range(5):
                c.predict(*a, api_name=name)
        times = {name: [] for name in calls}
        for i in range(args.n):  # interleaved, so all three see the same machine load
            for name, a in calls.items():
                t = time.perf_counter()
                c.predict(*a, api_name=name)
                times[name].append(time.perf_counter() - t)
        p50 = {name: np.median(t) * 1e3 for name, t in times.items()}
        print(f"sequential, one client, n={args.n} each (ms):")
        for name, t in times.items():
            print(f"  {name:13s} p50 {p50[name]:6.1f}  p90 {np.percentile(t, 90) * 1e3:6.1f}")
        print(f"  /predict - /echo_canvas p50: {p50['/predict'] - p50['/echo_canvas']:+.1f} ms; "
              f"/predict - /echo_text: {p50['/predict'] - p50['/echo_text']:+.1f} ms")

        clients = [Client(url, verbose=False) for _ in range(args.clients)]
        for name in ("/predict", "/echo_canvas", "/predict", "/echo_canvas"):
            errors, lat = [], []
            lock = threading.Lock()

            def run(cl):
                for _ in range(args.per_client):
                    t = time.perf_counter()
                    try:
                        cl.predict(*calls[name], api_name=name)
                        with lock:
                            lat.append(time.perf_counter() - t)
                    except Exception as e:  # counted, not raised
                        with lock:
                            errors.append(repr(e)[:200])
            threads = [threading.Thread(target=run, args=(cl,)) for cl in clients]
            start = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - start
            print(f"{args.clients} clients x {args.per_client} {name:13s}: {len(lat) / wall:6.1f} req/s, "
                  f"p50 {np.median(lat) * 1e3:6.0f} ms, errors {len(errors)}" + (f" ({errors[0]})" if errors else ""))
    finally:
        server.terminate()
        server.wait(20)


if __name__ == "__main__":
    main()
