"""One round's trade-off, measured fast: how much a round learns from K flags (unseen fool rate)
against what it costs on MNIST (clean and PGD accuracy, validation slice and test set), for any
RoundConfig overrides. How docs/SIMULATE.md's tuning table was made.

    python benchmarks/bench_round_families.py CAMPAIGN SEED K [field=value ...] [-- field=value ...]

CAMPAIGN is a folder of drawings (labels.csv), split as `simulate --seed SEED` splits it: the pool
and the unseen half. The round is round 1 of a simulate run: round-000 fine-tuned (rounds/retrain.py's
own functions: human_families, fine_tune) on a fresh MNIST sample plus the first K pool drawings that
fool round-000. Each `--`-separated group of overrides is one round; one JSON line each, after
round-000's own numbers. Tune only on synth/drawings.py campaigns: the pen generator
(synth/pen.py) is for reporting.
"""
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dadc.campaign.simulate import read_drawings  # noqa: E402
from dadc.config import RoundConfig  # noqa: E402
from dadc.model import checkpoint  # noqa: E402
from dadc.model import mnist as data  # noqa: E402
from dadc.rounds import retrain  # noqa: E402
from dadc.rounds.gate import measure  # noqa: E402
from dadc.rounds.registry import ROUND0  # noqa: E402


def split(folder, seed):
    """(pool x, pool y, unseen x, unseen y), as simulate splits the campaign."""
    drawn = read_drawings(folder)
    order = np.random.default_rng(seed).permutation(len(drawn))
    x = torch.from_numpy(np.stack([d[0] for d in drawn]))[:, None]
    y = torch.tensor([d[1] for d in drawn])
    pool, unseen = torch.from_numpy(order[:len(drawn) // 2]), torch.from_numpy(order[len(drawn) // 2:])
    return x[pool], y[pool], x[unseen], y[unseen]


def parse(default, text):
    """A command-line value as the type of the field's default (bools: 1/true/yes)."""
    return text.lower() in ("1", "true", "yes") if isinstance(default, bool) else type(default)(text)


def fool_rate(model, x, y):
    with torch.no_grad():
        return round((model(x).argmax(1) != y).float().mean().item(), 4)


def one_round(model0, net, mnist, sets, human, cfg):
    """round-000 fine-tuned as a round would be (attempt 1): (the candidate, members, seconds)."""
    x, y = mnist
    n = len(x) - cfg.val_n
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed + 1))[:cfg.mnist_n]
    start = time.perf_counter()
    hx, hy = retrain.human_families(*human, cfg, cfg.seed + 1)
    train_cfg = {"net": net, "epochs": cfg.epochs, "lr": cfg.lr, "warmup": 0.2, "attack": "pgd", "eps": cfg.eps,
                 "steps": cfg.steps, "human_repeat": cfg.human_repeat, "human_weight": cfg.human_weight,
                 "seed": cfg.seed + 1}
    state = retrain.fine_tune(model0.state_dict(), net, x[idx], y[idx], hx, hy, train_cfg)
    seconds = time.perf_counter() - start
    model = checkpoint.load(ROOT / ROUND0)[0]
    model.load_state_dict(state)
    return model.eval(), len(hx), seconds


def main():
    folder, seed, k = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    groups = " ".join(sys.argv[4:]).split("--")
    arrays = data.fetch(ROOT / ".dadc", log=lambda m: print(m, file=sys.stderr))
    x, y = data.tensors(arrays, "train")
    base = RoundConfig()
    sets = {"val": (x[len(x) - base.val_n:], y[len(y) - base.val_n:]), "test": data.tensors(arrays, "test")}
    model0, net_config, _ = checkpoint.load(ROOT / ROUND0)
    model0.eval()
    net = net_config["net"]
    px, py, ux, uy = split(folder, seed)
    with torch.no_grad():
        fooled = (model0(px).argmax(1) != py).nonzero()[:k, 0]
    print(json.dumps({"round": ROUND0.name, "unseen_fool": fool_rate(model0, ux, uy),
                      **measure(model0, sets, base, ("val", "test"))}), flush=True)
    for group in groups:
        over = dict(kv.split("=") for kv in group.split())
        cfg = replace(base, **{f: parse(getattr(base, f), v) for f, v in over.items()})
        model, members, seconds = one_round(model0, net, (x, y), sets, (px[fooled], py[fooled]), cfg)
        print(json.dumps({"overrides": over, "flags": len(fooled), "members": members,
                          "unseen_fool": fool_rate(model, ux, uy), **measure(model, sets, cfg, ("val", "test")),
                          "seconds": round(seconds, 1)}), flush=True)


if __name__ == "__main__":
    main()
