"""The gate a retrained round must pass before it serves: measure both rounds on the same fixed
sets, then compare."""
import torch

from .evaluate import accuracy, robust_accuracy


def measure(model, sets, cfg):
    """Clean, PGD-robust and human hold-out accuracy on fixed sets (the same for both models).
    sets: {"test": (x, y) MNIST, "holdout": (x, y) human examples held out of every round}."""
    (xt, yt), (hx, hy) = sets["test"], sets["holdout"]
    torch.manual_seed(cfg.seed)  # the same PGD random starts for both models: a fair comparison
    return {"clean_acc": accuracy(model, xt, yt),
            "robust_acc": robust_accuracy(model, xt[:cfg.robust_n], yt[:cfg.robust_n], cfg.eps, cfg.robust_steps),
            "human_acc": accuracy(model, hx, hy) if len(hx) else None}


def gate(serving, candidate, cfg):
    """(passed, reasons): the candidate may lose at most cfg.clean_drop clean accuracy and
    cfg.robust_drop PGD accuracy against the serving round, and no human hold-out accuracy."""
    reasons = []
    if candidate["clean_acc"] < serving["clean_acc"] - cfg.clean_drop:
        reasons.append(f"clean accuracy {candidate['clean_acc']:.2%} is more than {cfg.clean_drop:.1%} below "
                       f"{serving['clean_acc']:.2%}")
    if candidate["robust_acc"] < serving["robust_acc"] - cfg.robust_drop:
        reasons.append(f"PGD accuracy {candidate['robust_acc']:.2%} is more than {cfg.robust_drop:.1%} below "
                       f"{serving['robust_acc']:.2%}")
    if candidate["human_acc"] is not None and candidate["human_acc"] < serving["human_acc"]:
        reasons.append(f"human hold-out accuracy {candidate['human_acc']:.2%} is below {serving['human_acc']:.2%}")
    return not reasons, reasons
