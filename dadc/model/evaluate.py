"""Every measurement of a model: clean accuracy, PGD-robust accuracy (with restarts), accuracy on
human examples, optional AutoAttack, and accuracy on a folder of drawings read as the app reads them."""
import logging
import re
import sys
from contextlib import contextmanager
from pathlib import Path

import torch
from PIL import Image

from .. import preprocess
from ..synth import labels
from .attacks import pgd


@torch.no_grad()
def predict(model, x, batch_size=1000):
    model.eval()
    return torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def accuracy(model, x, y, batch_size=1000) -> float:
    if len(x) == 0:
        raise ValueError("cannot measure accuracy on an empty set")
    return (predict(model, x, batch_size) == y).float().mean().item()


def robust_accuracy(model, x, y, eps, steps, alpha=None, restarts=1, norm="linf", batch_size=500,
                    progress=None) -> float:
    """Fraction of examples still classified correctly after PGD (an example the model already gets
    wrong counts as not robust). alpha defaults to 2.5 * eps / steps."""
    if len(x) == 0:
        raise ValueError("cannot measure accuracy on an empty set")
    alpha = 2.5 * eps / steps if alpha is None else alpha
    correct = 0
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        x_adv = pgd(model, xb, yb, eps, alpha, steps, norm=norm, restarts=restarts)
        with torch.no_grad():
            correct += ((model(x_adv).argmax(1) == yb) & (model(xb).argmax(1) == yb)).sum().item()
        if progress:
            progress(min(i + batch_size, len(x)), len(x))
    return correct / len(x)


def autoattack_accuracy(model, x, y, eps, norm="Linf", version="standard", batch_size=500) -> float:
    """Robust accuracy under AutoAttack (Croce & Hein 2020), from the independent pyautoattack package.
    Its per-attack robust accuracy (and its warnings, e.g. of gradient masking) go to stderr."""
    return autoattack(model, x, y, eps, norm, None if version == "standard" else version, batch_size)["robust_acc"]


def autoattack(model, x, y, eps, norm="Linf", attacks=None, batch_size=500, seed=0) -> dict:
    """AutoAttack from the independent pyautoattack package: the standard version (APGD-CE, APGD-T,
    FAB-T, Square) when attacks is None, else those attacks (e.g. ["apgd-ce", "apgd-t"], with the
    standard version's settings for each). Returns {"robust_acc", "attacks", "after"}: "after" is the
    robust accuracy after each attack in turn, as AutoAttack logs it (also to stderr)."""
    try:
        from pyautoattack import AutoAttack
    except ImportError:
        raise RuntimeError("AutoAttack needs `pip install pyautoattack`") from None
    with autoattack_log() as after:
        if attacks is None:
            adversary = AutoAttack(model.eval(), norm=norm, eps=eps, version="standard", device=x.device, seed=seed)
        else:
            adversary = AutoAttack(model.eval(), norm=norm, eps=eps, version="custom", attacks=list(attacks),
                                   device=x.device, seed=seed)
            # the standard version's settings for APGD-CE and APGD-T (custom keeps the class defaults)
            adversary.apgd.n_restarts = 1
            adversary.apgd_targeted.n_restarts = 1
            adversary.apgd_targeted.n_target_classes = 9
            adversary.fab.n_restarts = 1
            adversary.fab.n_target_classes = 9
        x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
    return {"robust_acc": accuracy(model, x_adv, y), "attacks": list(adversary.attacks_to_run), "after": after}


@contextmanager
def autoattack_log():
    """{attack: robust accuracy after it}, filled while the block runs, read from AutoAttack's log.
    Relies on pyautoattack 0.2.0's internals (the one place here that does): it logs to the logger
    "auto-attack" a line "robust accuracy after APGD-CE: 93.00%" after each attack, and has no API
    for these numbers. Its log also goes to stderr (once, however often this is entered)."""
    logger = logging.getLogger("auto-attack")
    logger.setLevel(logging.DEBUG)
    if not any(getattr(h, "dadc_stderr", False) for h in logger.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.dadc_stderr = True
        logger.addHandler(h)
    after = {}

    class Steps(logging.Handler):
        def emit(self, record):
            m = re.match(r"robust accuracy after (\S+): ([\d.]+)%", record.getMessage())
            if m:
                after[m.group(1).lower()] = float(m.group(2)) / 100

    steps = Steps()
    logger.addHandler(steps)
    try:
        yield after
    finally:
        logger.removeHandler(steps)


def predictor(model):
    """predict(canvas) -> digit for a torch model, through the app's own preprocessing (to_mnist)."""
    def predict(canvas):
        x = torch.from_numpy(preprocess.to_mnist(canvas))[None, None]
        with torch.inference_mode():
            return int(model(x).argmax(1).item())
    return predict


def accuracy_by_family(predict, folder):
    """Accuracy of predict (PIL canvas -> digit) on a folder with labels.csv (file,label and, if there,
    family and style): {"all": {"n", "acc"}, "by_family": {family: {"n", "acc"}}, "by_style":
    {"7/crossbar": ...}, "by_label": {"7": ...}}. A canvas the preprocessing refuses counts as wrong."""
    folder = Path(folder)
    tally = {"all": {}, "by_family": {}, "by_style": {}, "by_label": {}}   # group -> key -> [n, right]
    for row in labels.read(folder):
        try:
            label = int(row["label"])
            with Image.open(folder / row["file"]) as im:
                try:
                    right = predict(im) == label
                except preprocess.CanvasError:  # blank or all ink: the app would not answer
                    right = False
        except (KeyError, TypeError, ValueError, OSError) as e:
            raise ValueError(f"labels.csv line {row['line']}: {row['file']},{row['label']} is not a readable "
                             f"drawing and a digit ({e})") from None
        keys = {"all": "all", "by_family": row.get("family") or "-",
                "by_style": f"{label}/{row.get('style') or '-'}", "by_label": str(label)}
        for group, key in keys.items():
            n_right = tally[group].setdefault(key, [0, 0])
            n_right[0] += 1
            n_right[1] += bool(right)
    out = {group: {key: {"n": n, "acc": right / n} for key, (n, right) in sorted(counts.items())}
           for group, counts in tally.items()}
    out["all"] = out["all"].get("all", {"n": 0, "acc": 0.0})
    return out


def drawings_accuracy(model, folder) -> dict:
    """Accuracy on a folder of canvases with labels.csv (file,label[,family,style], as synth.drawings.make
    writes), each read through the app's own preprocessing (preprocess.to_mnist, as /predict reads a
    canvas): {"all": {"n", "acc"}, "by_family", "by_style", "by_label"} (see accuracy_by_family)."""
    model.eval()
    return accuracy_by_family(predictor(model), folder)
