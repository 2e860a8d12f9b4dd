"""Clean accuracy, PGD-robust accuracy (with restarts), accuracy on human examples, optional AutoAttack."""
import torch

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
    import logging
    import sys

    try:
        from pyautoattack import AutoAttack
    except ImportError:
        raise RuntimeError("AutoAttack needs `pip install pyautoattack`") from None
    logger = logging.getLogger("auto-attack")
    logger.setLevel(logging.DEBUG)
    if not logger.handlers:
        logger.addHandler(logging.StreamHandler(sys.stderr))
    adversary = AutoAttack(model.eval(), norm=norm, eps=eps, version=version, device=x.device, seed=0)
    x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
    return accuracy(model, x_adv, y)
