"""How long one retraining round takes with the default RoundConfig (target <= 60 s on 2 CPU cores),
and whether the shipped round 0 fine-tuned on human examples passes the gate.

    python benchmarks/bench_app_round.py [--human 10] [--rounds 1]

Uses a fresh DADC_HOME in a temp folder (MNIST from ./.dadc, as `python -m dadc data` made it) and,
as the human examples, MNIST test digits drawn on canvases and read back through the preprocessing.
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dadc.model import mnist as data
from dadc import preprocess  # noqa: E402
from dadc.config import RoundConfig  # noqa: E402
from dadc.rounds.registry import ROUND0, Predictor, Registry  # noqa: E402
from dadc.rounds.retrain import RetrainJob  # noqa: E402
from dadc.synth.canvas import random_canvas  # noqa: E402
from dadc.store import FlagStore  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--human", type=int, default=10, help="flags per round (the default DADC_THRESHOLD)")
    p.add_argument("--rounds", type=int, default=1)
    args = p.parse_args()
    home = Path(tempfile.mkdtemp(prefix="bench-round-"))
    (home / "mnist").mkdir()
    (home / "mnist" / "mnist.safetensors").symlink_to(ROOT / ".dadc" / "mnist" / "mnist.safetensors")
    arrays = data.fetch(home, log=lambda m: None)
    registry = Registry(home, ROUND0)
    predictor = Predictor(registry)
    store = FlagStore(home)
    cfg = RoundConfig.from_env()
    job = RetrainJob(registry, predictor, store, args.human, cfg, mnist=arrays)
    rng = np.random.default_rng(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; config {cfg}")
    for r in range(args.rounds):
        for i in range(args.human):
            k = int(rng.integers(len(arrays["test_y"])))
            x = preprocess.to_mnist(random_canvas(arrays["test_x"][k], rng))
            store.append(x, int(arrays["test_y"][k]), round=r, visitor="bench")
            job.notify()
        start = time.perf_counter()
        job.wait()
        a = [h for h in registry.history() if h.get("event") == "attempt"][-1]
        print(json.dumps({"round": r + 1, "seconds_wall": round(time.perf_counter() - start, 1),
                          "seconds_round": a["seconds"], "passed": a["passed"], "reasons": a["reasons"],
                          "serving": a["serving"], "candidate": a["candidate"], "counts": a["counts"]}))


if __name__ == "__main__":
    main()
