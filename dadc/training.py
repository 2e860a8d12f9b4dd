"""Normal and PGD adversarial training, with seed 003's semantics, plus human examples mixed in.

Per batch (seed 003, Madry et al.): the first (1 - fraction) of the batch stays clean, the rest is
attacked with the model in eval mode; clean and adversarial examples then go through the model in
ONE forward pass in train mode (so batch norm sees both), and the loss
    (1 - fraction) * clean_loss + fraction * adversarial_loss
is the plain mean over the batch. Clean and adversarial loss and error are monitored separately.

Why it is fast on a CPU: the data stays in tensors (no DataLoader), the attack computes only the
input gradient, and metrics stay on the device until a progress update (no per-step .item()).
"""
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .attacks import fgsm, pgd


@dataclass
class TrainConfig:
    net: str = "fast"
    epochs: float = 10          # may be fractional: a round can train for part of an epoch
    batch_size: int = 100
    lr: float = 5e-3            # peak learning rate of the one-cycle schedule (Adam)
    warmup: float = 0.4         # fraction of training spent ramping the learning rate up
    attack: str = "pgd"         # "pgd", "fgsm" (with random start) or "none" (normal training)
    eps: float = 0.3
    steps: int = 10             # PGD steps
    alpha: float | None = None  # PGD step size; default 2.5 * eps / steps (Madry et al.)
    fraction: float = 1.0       # fraction of each batch made adversarial; 0 is plain normal training
    eps_ramp: float = 0.0       # fraction of training over which eps grows linearly from 0
    human_weight: float = 1.0   # loss weight of a human example relative to an MNIST one
    human_repeat: int = 1       # each human example appears this many times per epoch
    seed: int = 0
    device: str = "cpu"
    amp: bool = True            # bfloat16 autocast where the hardware does bf16 natively (see fast_bf16)
    compile: bool = False       # torch.compile the net (pays off for long GPU runs)

    def check(self):
        if self.attack not in ("pgd", "fgsm", "none"):
            raise ValueError(f"unknown attack {self.attack!r}; choose pgd, fgsm or none")
        if self.eps < 0:
            raise ValueError(f"eps must be >= 0, got {self.eps}")
        if not 0 <= self.fraction <= 1:
            raise ValueError(f"fraction must be in [0, 1], got {self.fraction}")
        if self.epochs <= 0 or self.batch_size < 1 or self.lr <= 0 or self.steps < 1:
            raise ValueError("epochs, batch_size, lr and steps must be positive")
        if self.human_weight < 0 or self.human_repeat < 1:
            raise ValueError("human_weight must be >= 0 and human_repeat >= 1")
        return self


def mix_human(x, y, human=None, weight=1.0, repeat=1):
    """MNIST plus human examples: (x, y, per-example loss weights)."""
    w = torch.ones(len(x))
    if human is None:
        return x, y, w
    hx, hy = human
    if len(hx) == 0:
        raise ValueError("the human example set is empty")
    if hx.shape[1:] != x.shape[1:] or len(hx) != len(hy):
        raise ValueError(f"human examples must be [N,1,28,28] with N labels, got {tuple(hx.shape)} / {len(hy)}")
    hx, hy = hx.repeat(repeat, 1, 1, 1), hy.repeat(repeat)
    return torch.cat([x, hx]), torch.cat([y, hy]), torch.cat([w, torch.full((len(hx),), float(weight))])


def fast_bf16(device) -> bool:
    """Whether bfloat16 math is native here: CUDA GPUs, and CPUs with AVX512-BF16 or AMX."""
    if device.type == "cuda":
        return True
    return device.type == "cpu" and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def one_cycle(step, total, peak, warmup):
    """Linear up to `peak` over the first `warmup` of training, then linearly down to 0."""
    t = step / max(total, 1)
    return peak * (t / warmup if t < warmup else (1 - t) / (1 - warmup))


def train(model, x, y, cfg: TrainConfig, human=None, callback=None, progress=True):
    """Train `model` in place on (x, y) [+ human examples]; returns the per-epoch history.

    callback(done_steps, total_steps, metrics) is called at each progress update, e.g. for a UI.
    """
    cfg.check()
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    x, y, w = mix_human(x, y, human, cfg.human_weight, cfg.human_repeat)
    x, y, w = x.to(device), y.to(device), w.to(device)  # resident: no per-batch copies
    model.to(device).train()
    net = torch.compile(model) if cfg.compile else model
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    alpha = cfg.alpha if cfg.alpha is not None else 2.5 * cfg.eps / cfg.steps
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp and fast_bf16(device))
    if device.type == "cpu":  # oneDNN's convolutions are fastest on NHWC tensors
        model.to(memory_format=torch.channels_last)

    n, bs = len(x), cfg.batch_size
    steps_per_epoch = math.ceil(n / bs)
    total = max(1, round(cfg.epochs * steps_per_epoch))
    split = bs - int(round(cfg.fraction * bs)) if cfg.attack != "none" else bs  # clean | adversarial
    gen = torch.Generator().manual_seed(cfg.seed)
    history, step = [], 0
    bar = tqdm(total=total, desc="train", unit="step", disable=not progress)
    while step < total:
        order = torch.randperm(n, generator=gen).to(device)
        sums = torch.zeros(4, device=device)  # clean loss, clean errors, adversarial loss, adversarial errors
        counts = [0, 0]                       # clean, adversarial examples seen
        start = time.perf_counter()
        for i in range(0, n, bs):
            if step >= total:
                break
            idx = order[i:i + bs]
            xb, yb, wb = x[idx], y[idx], w[idx]
            k = min(split, len(idx))
            if k < len(idx):  # attack the tail of the batch, in eval mode (inside the attack)
                eps = cfg.eps * min(1.0, step / (cfg.eps_ramp * total)) if cfg.eps_ramp else cfg.eps
                with autocast:
                    xb = torch.cat([xb[:k], _attack(net, xb[k:], yb[k:], eps, alpha, cfg)])
            for group in optimizer.param_groups:
                group["lr"] = one_cycle(step, total, cfg.lr, cfg.warmup)
            logits, losses = _update(net, optimizer, xb, yb, wb, autocast)

            with torch.no_grad():  # stays on the device: no sync until the next progress update
                wrong = (logits.argmax(1) != yb).float()
                sums += torch.stack([losses[:k].sum(), wrong[:k].sum(), losses[k:].sum(), wrong[k:].sum()])
            counts[0] += k
            counts[1] += len(idx) - k
            step += 1
            if step % 50 == 0 or step == total:
                metrics = _metrics(sums, counts)
                bar.set_postfix({k_: f"{v:.3f}" for k_, v in metrics.items()}, refresh=False)
                if callback:
                    callback(step, total, metrics)
            bar.update(1)
        seconds = time.perf_counter() - start
        history.append({"epoch": len(history) + 1, **_metrics(sums, counts), "seconds": round(seconds, 2),
                        "samples_per_s": round(sum(counts) / seconds, 1)})
    bar.close()
    model.eval()
    return history


def _update(net, optimizer, x, y, w, autocast):
    """One optimizer step on a batch, clean and adversarial together in train mode (so batch norm
    sees both); the loss is the weighted mean. Returns the logits and per-example losses."""
    with autocast:
        logits = net(x)
    losses = F.cross_entropy(logits.float(), y, reduction="none")
    loss = (losses * w).sum() / w.sum()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return logits, losses


def _attack(net, x, y, eps, alpha, cfg):
    """The adversarial half of a batch: FGSM with random start, or PGD whose step follows a ramped eps."""
    if cfg.attack == "fgsm":
        return fgsm(net, x, y, eps)
    return pgd(net, x, y, eps, alpha * eps / cfg.eps if cfg.eps else 0, cfg.steps)


def _metrics(sums, counts):
    s, (n_clean, n_adv) = sums.tolist(), counts
    out = {}
    if n_clean:
        out.update(clean_loss=s[0] / n_clean, clean_err=s[1] / n_clean)
    if n_adv:
        out.update(adv_loss=s[2] / n_adv, adv_err=s[3] / n_adv)
    return out
