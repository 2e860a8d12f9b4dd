"""Accuracy on canvas-drawn digits (target >= 99 %): MNIST test digits drawn anywhere on canvases of
every format (opaque RGBA composite, transparent layer with coloured ink, RGB with coloured ink, L),
200-1200 px a side, the digit 28 px to 90 % of the canvas tall, the pen up to 8 % of the digit's height
thicker, read back through dadc.preprocess and classified by the shipped round 0. Also prints the
same model's accuracy on the original 28x28 digits, and on canvases resized whole to 28x28 (no
MNIST-style centring) for contrast.

    python benchmarks/bench_app_canvas_accuracy.py [--n 2000] [--checkpoint models/round-000]
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dadc.model import checkpoint
from dadc.model import mnist as data
from dadc import preprocess  # noqa: E402
from dadc.synth.canvas import random_canvas  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--checkpoint", default=str(ROOT / "models" / "round-000"))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    model, _, _ = checkpoint.load(args.checkpoint)
    arrays = data.fetch(ROOT / ".dadc", log=lambda m: None)
    rng = np.random.default_rng(args.seed)
    idx = rng.choice(len(arrays["test_y"]), size=args.n, replace=False)
    formats = ["RGBA", "layer", "RGB", "L"]
    right = {f: [0, 0] for f in formats}
    raw_right = naive_right = 0
    seconds = []
    for j, k in enumerate(idx):
        fmt = formats[j % 4]
        canvas = random_canvas(arrays["test_x"][k], rng, fmt)
        y = int(arrays["test_y"][k])
        t = time.perf_counter()
        x = preprocess.to_mnist(canvas)
        with torch.inference_mode():
            pred = model(torch.from_numpy(x)[None, None]).argmax(1).item()
        seconds.append(time.perf_counter() - t)
        right[fmt][0] += pred == y
        right[fmt][1] += 1
        with torch.inference_mode():
            raw = torch.from_numpy(arrays["test_x"][k]).float().div(255)[None, None]
            raw_right += model(raw).argmax(1).item() == y
            ink = canvas.convert("RGBA")
            white = Image.alpha_composite(Image.new("RGBA", ink.size, "white"), ink).convert("L")
            naive = 1 - np.asarray(white.resize((28, 28), Image.BILINEAR), dtype=np.float32) / 255
            naive_right += model(torch.from_numpy(naive)[None, None]).argmax(1).item() == y
    total = sum(r for r, _ in right.values())
    print(f"checkpoint {args.checkpoint}, n={args.n} canvas-drawn MNIST test digits (seed {args.seed})")
    print(f"canvas-drawn accuracy: {total / args.n:.2%}  "
          + "  ".join(f"{f}: {r / n:.2%}" for f, (r, n) in right.items()))
    print(f"same digits as 28x28 MNIST: {raw_right / args.n:.2%}; canvas resized whole to 28x28: {naive_right / args.n:.2%}")
    print(f"preprocess + inference per canvas: p50 {np.median(seconds) * 1e3:.2f} ms, "
          f"p90 {np.percentile(seconds, 90) * 1e3:.2f} ms (canvases 200-1200 px)")


if __name__ == "__main__":
    from PIL import Image
    main()
