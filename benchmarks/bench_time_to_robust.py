"""Wall time to a robust model: trains a recipe and, after every epoch, measures clean and PGD-40
accuracy (eps 0.3, step 0.01, random start) on the first --n MNIST test examples; prints the training
time (the augmentation pool's one-off build included, these measurements excluded) at which both
floors (clean >= 99.2 %, PGD-40 >= 95 %) were first met, and stops there (or at the recipe's end).
The test set only reports here, it never selects; the recipe's own --val-n selection still runs.

    OMP_NUM_THREADS=1 python benchmarks/bench_time_to_robust.py --recipe v1
    OMP_NUM_THREADS=1 python benchmarks/bench_time_to_robust.py --recipe round0 --init V1_MODEL_DIR

The recipes are dadc.model.training.RECIPES: v1 trains from random weights (the first round-000), round0
fine-tunes a v1 model (so its time to the floors adds v1's). Both run in fp32 (--no-amp), as the
shipped models were trained.
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from dadc.model import checkpoint
from dadc.model import mnist as data
from dadc.model import evaluate
from dadc.model import nets  # noqa: E402
from dadc.__main__ import parser  # noqa: E402
from dadc.model.recipe import hold_out, train_settings  # noqa: E402
from dadc.model.training import RECIPES, train  # noqa: E402

CLEAN, ROBUST = 0.992, 0.95


class Reached(Exception):
    pass


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--recipe", choices=RECIPES, required=True)
    p.add_argument("--init", help="the checkpoint to fine-tune (round0: a v1 model)")
    p.add_argument("--n", type=int, default=1000, help="test examples measured after each epoch")
    p.add_argument("--home", default=os.environ.get("DADC_HOME", ".dadc"))
    args = p.parse_args()
    if args.recipe == "round0" and not args.init:  # as `python -m dadc train` refuses it
        p.error("--recipe round0 fine-tunes a model: give one trained with --recipe v1 as --init")
    cfg, opt = train_settings(parser().parse_args(["train", "--recipe", args.recipe, "--no-amp", "--out", "-"]))
    arrays = data.fetch(args.home, log=lambda m: print(m, file=sys.stderr))
    x, y, _, select = hold_out(*data.tensors(arrays, "train"), cfg, opt)
    xt, yt = data.tensors(arrays, "test")
    xt, yt = xt[:args.n], yt[:args.n]
    start, measuring, rows = time.perf_counter(), [0.0], []

    def per_epoch(model):
        t = time.perf_counter()
        trained = t - start - measuring[0]
        out = select(model) if select else {"score": 0.0}
        clean = evaluate.accuracy(model, xt, yt)
        robust = evaluate.robust_accuracy(model, xt, yt, eps=0.3, steps=40, alpha=0.01)
        measuring[0] += time.perf_counter() - t
        rows.append({"epoch": len(rows) + 1, "train_s": round(trained, 1), "clean": clean, "pgd40": robust})
        print(json.dumps(rows[-1]), file=sys.stderr)
        if clean >= CLEAN - 1e-6 and robust >= ROBUST - 1e-6:  # accuracies are float32 fractions
            raise Reached
        return out
    torch.manual_seed(cfg.seed)
    model = checkpoint.load(args.init)[0] if args.init else nets.build(cfg.net)
    try:
        train(model, x, y, cfg, validate=per_epoch, progress=False)
        reached = None
    except Reached:
        reached = rows[-1]
    print(json.dumps({"recipe": args.recipe, "init": args.init, "n": args.n, "threads": torch.get_num_threads(),
                      "floors": {"clean": CLEAN, "pgd40": ROBUST}, "reached": reached, "epochs": rows}))


if __name__ == "__main__":
    main()
