"""The gate a retrained round must pass before it serves, without a ratchet.

MNIST: fixed floors set by round-000, measured once per home on a validation slice (the last
`val_n` MNIST train examples, never in a round's sample). Each candidate must stay above them, so
rounds cannot each lose a little against the one before. Human examples: on those held out of
every round, the candidate must do at least as well as the serving round. The MNIST test set is
measured for reporting only; nothing is selected on it.
"""
import torch

from ..model.evaluate import accuracy, robust_accuracy
from ..examples import round_name

REFERENCE = "round-000"
ALL = ("val", "test", "holdout")


def measure(model, sets, cfg, parts=ALL):
    """The model's accuracy on the gate's fixed sets (the same for every model measured):
      "val":     val_clean_acc, val_robust_acc  (MNIST train's last cfg.val_n: the gate selects on these)
      "test":    clean_acc, robust_acc          (MNIST test: reported, never selected on)
      "holdout": human_acc (None without any), human_n
    PGD accuracy is on the first cfg.robust_n of a set, with the same random starts for every model."""
    out = {}
    for part, prefix in (("val", "val_"), ("test", "")):
        if part in parts:
            x, y = sets[part]
            torch.manual_seed(cfg.seed)  # the same PGD random starts for every model: a fair comparison
            out[prefix + "clean_acc"] = accuracy(model, x, y)
            out[prefix + "robust_acc"] = robust_accuracy(model, x[:cfg.robust_n], y[:cfg.robust_n], cfg.eps,
                                                         cfg.robust_steps)
    if "holdout" in parts:
        hx, hy = sets["holdout"]
        out.update(human_acc=accuracy(model, hx, hy) if len(hx) else None, human_n=len(hx))
    return out


def reference_settings(cfg):
    """What round-000's reference numbers depend on: they are measured again if any of these change."""
    return {k: getattr(cfg, k) for k in ("val_n", "robust_n", "eps", "robust_steps", "seed")}


def cached_reference(history, cfg):
    """round-000's validation numbers from the newest history entry that recorded them with the same
    settings, or None (then measure them once: {"round", "val_clean_acc", "val_robust_acc", "settings"})."""
    want = reference_settings(cfg)
    for h in reversed(history):
        ref = h.get("reference")
        if isinstance(ref, dict) and ref.get("settings") == want:
            return ref
    return None


def gate(reference, serving, candidate, cfg):
    """(passed, reasons, notes). On the validation slice the candidate's clean accuracy must be at
    least round-000's (`reference`) minus cfg.clean_drop, and its PGD accuracy at least round-000's
    minus cfg.robust_drop. On the human hold-out, from cfg.human_min examples on, it must be at least
    as accurate as the serving round; with fewer it passes, and a note says it was not compared."""
    reasons, notes = [], []
    ref = reference.get("round", REFERENCE)
    for key, drop, what in (("val_clean_acc", cfg.clean_drop, "clean accuracy"),
                            ("val_robust_acc", cfg.robust_drop, "PGD accuracy")):
        floor = reference[key] - drop
        if candidate[key] < floor:
            reasons.append(f"{what} {candidate[key]:.2%} on the validation slice is below the floor "
                           f"{floor:.2%} ({ref}'s {reference[key]:.2%} - {drop:.1%})")
    n = candidate.get("human_n", 0)
    if n < cfg.human_min:
        notes.append(f"human hold-out not compared: {n} held-out example{'s' * (n != 1)}, "
                     f"fewer than {cfg.human_min}")
    elif candidate["human_acc"] < serving["human_acc"]:
        reasons.append(f"human hold-out accuracy {candidate['human_acc']:.2%} is below the serving round's "
                       f"{serving['human_acc']:.2%} ({n} examples)")
    return not reasons, reasons, notes


def matrix_row(model, store, examples, rounds):
    """The model's accuracy on the held-out examples that fooled each of `rounds` (round numbers):
    {"round-000": {"n": 12, "acc": 0.75}, ...}; acc None where no held-out example fooled that round."""
    row = {}
    for k in sorted(rounds):
        rows = [e for e in examples if e.held_out and e.fooled and e.round == k]
        x, y = store.tensors(rows)
        row[round_name(k)] = {"n": len(rows), "acc": accuracy(model, x, y) if rows else None}
    return row
