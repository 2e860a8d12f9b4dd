"""/predict server side: preprocessing + inference for one Sketchpad value, as the app's handler
runs it (target p50 <= 2 ms). Canvases as the Sketchpad sends them (448x448, opaque white with dark
ink, decoded by Gradio), with MNIST test digits drawn at random sizes, positions and pen widths.

    python benchmarks/bench_predict_server.py [--n 2000]
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dadc import config
from dadc.model import mnist as data  # noqa: E402
from dadc.synth.canvas import paste_mnist as draw  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=2000)
    args = p.parse_args()
    import os
    os.environ["DADC_HOME"] = tempfile.mkdtemp(prefix="bench-predict-")
    from dadc.studio.service import Studio
    from dadc.preprocess import CANVAS

    studio = Studio(config.from_env())
    arrays = data.fetch(ROOT / ".dadc", log=lambda m: None)
    rng = np.random.default_rng(0)
    values = []
    for k in rng.choice(len(arrays["test_y"]), size=200, replace=False):
        h = int(rng.integers(60, 400))
        img = draw(arrays["test_x"][k], (CANVAS, CANVAS), h, int(h * rng.uniform(0, 0.06)), "RGBA", rng=rng)
        values.append({"background": None, "layers": [], "composite": img})
    for v in values[:20]:
        studio.predict(v, "warm-up")
    times = []
    for i in range(args.n):
        v = values[i % len(values)]
        t = time.perf_counter()
        studio.predict(v, f"s{i}")
        times.append(time.perf_counter() - t)
    t = np.array(times) * 1e3
    print(f"/predict server side ({CANVAS}x{CANVAS} Sketchpad composites, n={args.n}): "
          f"p50 {np.median(t):.2f} ms, p90 {np.percentile(t, 90):.2f} ms, p99 {np.percentile(t, 99):.2f} ms")


if __name__ == "__main__":
    main()
