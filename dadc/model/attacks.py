"""Attacks on [0,1] images: PGD (Linf, L2) with random start and restarts; FGSM with random start.

Every attack runs the model in eval mode (so batch norm neither uses batch statistics nor updates
its running buffers, and dropout is off) and restores the mode it found. Only the input gradient
is computed (torch.autograd.grad), so parameter .grad fields are never touched.
"""
from contextlib import contextmanager

import torch
import torch.nn.functional as F


@contextmanager
def eval_mode(model):
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _norms(d):
    return d.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)


def _random_start(x, eps, norm):
    if norm == "linf":
        delta = torch.empty_like(x).uniform_(-eps, eps)
    else:  # a uniformly random direction, with a radius uniform in [0, eps]
        delta = torch.randn_like(x)
        delta *= torch.rand(len(x), 1, 1, 1, device=x.device, dtype=x.dtype) * eps / _norms(delta)
    return (x + delta).clamp_(0, 1) - x


def _pgd_once(model, x, y, eps, alpha, steps, norm, random_start):
    delta = _random_start(x, eps, norm) if random_start else torch.zeros_like(x)
    return _ascend(model, x, lambda logits: F.cross_entropy(logits, y, reduction="sum"), delta, eps, alpha, steps,
                   norm)


def _ascend(model, x, loss_of, delta, eps, alpha, steps, norm):
    """`steps` projected gradient steps from delta maximising loss_of(model(x + delta)), keeping
    ||delta||_norm <= eps and x + delta in [0, 1]."""
    for _ in range(steps):
        delta.requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_of(model(x + delta)), delta)
        with torch.no_grad():
            if norm == "linf":
                delta = (delta + alpha * grad.sign()).clamp_(-eps, eps)
            else:
                delta = delta + alpha * grad / _norms(grad)
                delta *= (eps / _norms(delta)).clamp(max=1)
            delta = (x + delta).clamp_(0, 1) - x  # stay a valid image
    return delta.detach()


def pgd(model, x, y, eps, alpha, steps, norm="linf", restarts=1, random_start=True):
    """x + delta with ||delta||_norm <= eps and x + delta in [0,1], maximising cross-entropy.

    With restarts > 1, each example keeps the restart that fooled the model, or else the one
    with the highest loss.
    """
    if eps < 0 or alpha < 0 or steps < 0 or restarts < 1:
        raise ValueError(f"bad attack settings: eps={eps} alpha={alpha} steps={steps} restarts={restarts}")
    if norm not in ("linf", "l2"):
        raise ValueError(f"unknown norm {norm!r}; choose linf or l2")
    with eval_mode(model):
        best = None
        for _ in range(restarts):
            delta = _pgd_once(model, x, y, eps, alpha, steps, norm, random_start)
            if restarts == 1:
                return (x + delta).detach()
            with torch.no_grad():
                logits = model(x + delta)
                loss = F.cross_entropy(logits, y, reduction="none")
                fooled = logits.argmax(1) != y
            if best is None:
                best, best_loss, best_fooled = delta, loss, fooled
                continue
            better = (fooled & ~best_fooled) | ((fooled == best_fooled) & (loss > best_loss))
            best[better], best_loss[better], best_fooled[better] = delta[better], loss[better], fooled[better]
        return (x + best).detach()


def fgsm(model, x, y, eps, alpha=None):
    """FGSM with random start (Wong et al. 2020): one signed step of alpha (default 1.25 eps)."""
    return pgd(model, x, y, eps, 1.25 * eps if alpha is None else alpha, steps=1, norm="linf")


def trades_attack(model, x, eps, alpha, steps):
    """TRADES' inner maximisation (Zhang et al. 2019): x' in the Linf eps ball (and [0,1]) maximising
    KL(f(x) || f(x')), from x plus a tiny Gaussian start, in eval mode. Needs no labels."""
    if eps < 0 or alpha < 0 or steps < 0:
        raise ValueError(f"bad attack settings: eps={eps} alpha={alpha} steps={steps}")
    with eval_mode(model):
        with torch.no_grad():
            p_clean = F.softmax(model(x).float(), dim=1)
        start = (x + 0.001 * torch.randn_like(x)).clamp(0, 1) - x

        def kl(logits):
            return F.kl_div(F.log_softmax(logits.float(), dim=1), p_clean, reduction="sum")
        return (x + _ascend(model, x, kl, start, eps, alpha, steps, "linf")).detach()
