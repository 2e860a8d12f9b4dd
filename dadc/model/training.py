"""Normal and PGD adversarial training, with seed 003's semantics, plus human examples mixed in.

Per batch (seed 003, Madry et al.): the first (1 - fraction) of the batch stays clean, the rest is
attacked with the model in eval mode; clean and adversarial examples then go through the model in
ONE forward pass in train mode (so batch norm sees both), and the loss
    (1 - fraction) * clean_loss + fraction * adversarial_loss
is the plain mean over the batch. Clean and adversarial loss and error are monitored separately.

Options for a stronger round-000 (issue 14), each off by default so the recipe above is unchanged:
  loss="trades"  TRADES (Zhang et al. 2019): the attacked tail's loss is CE(f(x), y) + beta * KL(f(x) || f(x')),
                 x' maximising that KL (attacks.trades_attack, eval mode); clean and attacked in one pass
  ema=D          an exponential moving average of the weights (decay D); the model returned is the average
  augment=F      a fraction F of each batch replaced by canvas-rendered examples from a pool built once
                 (synth/augment.py: MNIST digits drawn onto the app's canvas and read back by preprocess.py,
                 and optionally synth/drawings.py's mouse-drawn digits): no per-batch rendering cost
  steps_late=K   PGD-K instead of PGD-`steps` over the last `late` fraction of training
  validate=fn    train(..., validate=fn): fn(model) -> {"score": ...} after every epoch, on the weights
                 that would be returned; the best-scoring epoch's weights are kept (selection on a
                 validation slice the caller held out of MNIST train, never on the test set)
  torchrun       data-parallel (distributed.py): the net wrapped in DDP, the attack on the net itself,
                 each process its DistributedSampler shard of every epoch and the same number of steps

Why it is fast on a CPU: the data stays in tensors (no DataLoader), the attack computes only the
input gradient, and metrics stay on the device until a progress update (no per-step .item()).
"""
import copy
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import distributed
from .attacks import fgsm, pgd, trades_attack


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
    loss: str = "ce"            # "ce" (Madry et al.) or "trades" (Zhang et al.; the attack maximises KL)
    beta: float = 6.0           # TRADES' weight of the KL term
    ema: float = 0.0            # decay of an exponential moving average of the weights; 0 = off
    augment: float = 0.0        # fraction of each batch taken from the canvas-rendered pool; 0 = off
    augment_n: int = 5000       # MNIST train digits rendered through the canvas into the pool (~10 ms each)
    augment_drawings: int = 0   # synth/drawings.py digits per family added to the pool
    steps_late: int = 0         # PGD steps over the last `late` of training; 0 = `steps` throughout
    late: float = 0.25          # fraction of training (at the end) that uses steps_late

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
        if self.loss not in ("ce", "trades"):
            raise ValueError(f"unknown loss {self.loss!r}; choose ce or trades")
        if self.loss == "trades" and (self.attack != "pgd" or self.beta < 0):
            raise ValueError("loss trades needs attack pgd and beta >= 0")
        if not 0 <= self.ema < 1:
            raise ValueError(f"ema (a decay) must be in [0, 1), got {self.ema}")
        if not 0 <= self.augment <= 1 or self.augment_n < 0 or self.augment_drawings < 0:
            raise ValueError("augment must be in [0, 1], augment_n and augment_drawings >= 0")
        if self.augment and self.augment_n + self.augment_drawings == 0:
            raise ValueError("augment needs augment_n or augment_drawings > 0 (an empty pool)")
        if self.steps_late < 0 or not 0 <= self.late <= 1:
            raise ValueError("steps_late must be >= 0 and late in [0, 1]")
        return self


# Named recipes for `python -m dadc train --recipe NAME`: TrainConfig fields and train-command options
# (val_n, eval_*); any flag given on the command line wins over the recipe.
RECIPES = {
    # the first round-000: Madry-style PGD-10 (cross-entropy) from random weights, eps ramped up
    "v1": dict(net="fast", epochs=12, eps_ramp=0.15),
    # issue 14's round-000: a v1 model (--init, required) fine-tuned with TRADES (beta 6), PGD-20 in the
    # last quarter, EMA weights and a fifth of each batch through the canvas (MNIST digits redrawn, and
    # mouse-drawn and font digits), then the metrics the issue asks for. Measured against training
    # from scratch with the same options for 20 epochs (clean 98.6 %, PGD-40 95.5 %, AutoAttack 92.2 %):
    # the fine-tune of v1 kept clean accuracy near v1's and reached AutoAttack 93.0 % (docs/MODEL.md).
    "round0": dict(net="fast", epochs=4, lr=1e-3, warmup=0.2, loss="trades", beta=6.0, steps=10, steps_late=20,
                   late=0.25, eps=0.3, eps_ramp=0.0, ema=0.999, augment=0.2, augment_n=10000, augment_drawings=400,
                   eval_n=10000, eval_aa_n=1000, eval_drawings_n=200),
}


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
    return device.type == "cpu" and _cpu_does_bf16()


def _cpu_does_bf16() -> bool:
    """Whether this CPU has AVX512-BF16 or AMX tiles, the instructions oneDNN runs bfloat16 on."""
    # PRIVATE torch API: torch.cpu._is_avx512_bf16_supported() and torch.cpu._is_amx_tile_supported()
    # (underscored: no stability promise; both read torch.cpu's CPU capabilities). Public torch has no
    # way to ask this, and it decides whether bf16 autocast is a speed-up (native) or a slowdown
    # (emulated) on a CPU. The only place that calls them: if a torch upgrade renames them, fix it here.
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def one_cycle(step, total, peak, warmup):
    """Linear up to `peak` over the first `warmup` of training, then linearly down to 0."""
    t = step / max(total, 1)
    return peak * (t / warmup if t < warmup else (1 - t) / (1 - warmup))


def train(model, x, y, cfg: TrainConfig, human=None, callback=None, progress=True, validate=None):
    """Train `model` in place on (x, y) [+ human examples]; returns the per-epoch history.

    callback(done_steps, total_steps, metrics) is called at each progress update, e.g. for a UI.
    validate(model) -> {"score": float, ...}, if given, runs after every epoch on the weights that
    would be returned (the EMA's with cfg.ema); the model ends with the best-scoring epoch's weights.
    """
    cfg.check()
    # the same seed in every process under torchrun: attack starts, dropout and validation draw alike
    # in all, so all select the same epoch and end with the same weights (recipe.py checks it)
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    pool = None
    if cfg.augment:  # built once, before the human examples join: MNIST digits through the canvas
        from ..synth import augment
        pool = [t.to(device) for t in augment.pool(x, y, cfg.augment_n, cfg.augment_drawings, seed=cfg.seed)]
    x, y, w = mix_human(x, y, human, cfg.human_weight, cfg.human_repeat)
    x, y, w = x.to(device), y.to(device), w.to(device)  # resident: no per-batch copies
    run = _Run(model, cfg, device, (x, y, w), pool, validate)
    history = []
    bar = tqdm(total=run.total, desc="train", unit="step", disable=not progress)
    while run.step < run.total:
        history.append({"epoch": len(history) + 1, **run.epoch(bar, callback)})
        if validate:
            run.select(history[-1])
    bar.close()
    run.finish(history)
    return history


class _Run:
    """One call of train(): the optimizer and the schedule, set up once (__init__); then epochs of
    batches (epoch, batch, update), each batch's attack budget following the step (budget); after
    each epoch, with validate, the score of the weights that would be returned (select); at the end,
    the weights returned (finish). All randomness in the order the recipe has always drawn it: the
    order of an epoch, then per batch the pool's picks, then the attack's random start."""

    def __init__(self, model, cfg, device, data, pool, validate):
        """Before the first batch: the optimizer, the bf16 autocast, the run's length in steps, the
        split of a batch, the batch order's generator, the EMA and the copy that validation scores."""
        self.model, self.cfg, self.device, self.validate = model, cfg, device, validate
        self.data, self.pool = data, pool  # (x, y, loss weights) on the device; the canvas-rendered pool or None
        model.to(device).train()
        self.net = torch.compile(model) if cfg.compile else model
        self.optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        self.alpha = cfg.alpha if cfg.alpha is not None else 2.5 * cfg.eps / cfg.steps
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp and fast_bf16(device))
        if device.type == "cpu":  # oneDNN's convolutions are fastest on NHWC tensors
            model.to(memory_format=torch.channels_last)
        self.ddp = distributed.active()  # under torchrun: gradients averaged across processes (distributed.py)
        self.attacked = self.net  # the attack runs on the net itself: its input gradients need no sync
        if self.ddp:  # wrapped last: DDP takes the parameters as they are now
            self.net = distributed.wrap(self.net, str(device))
        self.n, self.bs = len(data[0]), cfg.batch_size
        per_epoch = distributed.shard(self.n) if self.ddp else self.n  # under torchrun: this process's shard
        self.total = max(1, round(cfg.epochs * math.ceil(per_epoch / self.bs)))
        # a batch is clean up to `split`, adversarial from there
        self.split = self.bs - int(round(cfg.fraction * self.bs)) if cfg.attack != "none" else self.bs
        # the pool's picks differ per process under torchrun (else every shard's batch would swap in the
        # same pool digits at the same places); rank 0 and a run without torchrun draw as before
        self.gen = torch.Generator().manual_seed(cfg.seed + distributed.rank())
        self.ema = {k: v.detach().clone() for k, v in model.state_dict().items()} if cfg.ema else None
        self.shadow = copy.deepcopy(model) if (self.ema is not None or validate) else None  # the weights to validate
        self.best = None                                                                      # (score, state_dict)
        self.late_from = self.total - round(cfg.late * self.total) if cfg.steps_late else self.total + 1
        self.step, self.epochs = 0, 0

    def epoch(self, bar, callback):
        """One pass over the data in a new random order, or what is left of the run's steps: the
        epoch's monitored metrics, seconds and throughput."""
        x, y, w = self.data
        order = (distributed.order(self.n, self.epochs, self.cfg.seed) if self.ddp  # this process's shard
                 else torch.randperm(self.n, generator=self.gen)).to(self.device)
        self.epochs += 1
        sums = torch.zeros(4, device=self.device)  # clean loss, clean errors, adversarial loss, adversarial errors
        counts = [0, 0]                            # clean, adversarial examples seen
        start = time.perf_counter()
        for i in range(0, len(order), self.bs):
            if self.step >= self.total:
                break
            idx = order[i:i + self.bs]
            xb, yb, wb = self.batch(x[idx], y[idx], w[idx])
            k = min(self.split, len(idx))
            logits, losses = self.update(xb, yb, wb, k)
            with torch.no_grad():  # stays on the device: no sync until the next progress update
                wrong = (logits.argmax(1) != yb).float()
                sums += torch.stack([losses[:k].sum(), wrong[:k].sum(), losses[k:].sum(), wrong[k:].sum()])
            counts[0] += k
            counts[1] += len(idx) - k
            self.step += 1
            if self.step % 50 == 0 or self.step == self.total:
                metrics = _metrics(sums, counts)
                bar.set_postfix({k_: f"{v:.3f}" for k_, v in metrics.items()}, refresh=False)
                if callback:
                    callback(self.step, self.total, metrics)
            bar.update(1)
        seconds = time.perf_counter() - start
        return {**_metrics(sums, counts), "seconds": round(seconds, 2),
                "samples_per_s": round(sum(counts) / seconds, 1)}

    def batch(self, xb, yb, wb):
        """The batch, a random part of it (cfg.augment) replaced by examples of the canvas-rendered pool."""
        if self.pool is None:
            return xb, yb, wb
        take = torch.rand(len(xb), generator=self.gen) < self.cfg.augment
        m = int(take.sum())
        if m:
            pick = torch.randint(len(self.pool[0]), (m,), generator=self.gen).to(self.device)
            take = take.to(self.device)
            xb, yb, wb = xb.clone(), yb.clone(), wb.clone()
            xb[take], yb[take], wb[take] = self.pool[0][pick], self.pool[1][pick], 1.0
        return xb, yb, wb

    def update(self, xb, yb, wb, k):
        """One optimizer step on a batch whose tail (from k) is attacked first: (logits, per-example losses)."""
        cfg, x_adv = self.cfg, None
        if k < len(xb):  # attack the tail of the batch, in eval mode (inside the attack)
            eps, steps, alpha = self.budget()
            with self.autocast:
                x_adv = _attack(self.attacked, xb[k:], yb[k:], eps, alpha, steps, cfg)
            if cfg.loss == "ce":
                xb, x_adv = torch.cat([xb[:k], x_adv]), None
        for group in self.optimizer.param_groups:
            group["lr"] = one_cycle(self.step, self.total, cfg.lr, cfg.warmup)
        if x_adv is None:
            logits, losses = _update(self.net, self.optimizer, xb, yb, wb, self.autocast)
        else:
            logits, losses = _update_trades(self.net, self.optimizer, xb, x_adv, yb, wb, k, cfg.beta, self.autocast)
        if self.ema is not None:
            _ema_update(self.ema, self.model, cfg.ema, self.step)
        return logits, losses

    def budget(self):
        """(eps, PGD steps, step size) of this step's attack: eps grows over the first eps_ramp of
        training; the last `late` of it uses steps_late steps (and their step size)."""
        cfg, step = self.cfg, self.step
        eps = cfg.eps * min(1.0, step / (cfg.eps_ramp * self.total)) if cfg.eps_ramp else cfg.eps
        if step < self.late_from:
            return eps, cfg.steps, self.alpha
        return eps, cfg.steps_late, cfg.alpha if cfg.alpha is not None else 2.5 * cfg.eps / cfg.steps_late

    def select(self, row):
        """After an epoch: validate the weights that would be returned (the EMA's, if any), record the
        scores in the epoch's history row, and keep those weights if they score best so far."""
        self.shadow.load_state_dict(self.ema if self.ema is not None else self.model.state_dict())
        val = self.validate(self.shadow.eval())
        row["val"] = val
        if self.best is None or val["score"] > self.best[0]:
            self.best = (val["score"], {k: v.detach().clone() for k, v in self.shadow.state_dict().items()})
        self.model.train()

    def finish(self, history):
        """The model ends with the best validated epoch's weights (marked "selected"), else the EMA's,
        else the last; in eval mode."""
        if self.best is not None:
            self.model.load_state_dict(self.best[1])
            history[[h.get("val", {}).get("score") for h in history].index(self.best[0])]["selected"] = True
        elif self.ema is not None:
            self.model.load_state_dict(self.ema)
        self.model.eval()


def _ema_update(ema, model, decay, step):
    """ema <- d * ema + (1 - d) * weights, with d warming up as (1 + step) / (10 + step)."""
    d = min(decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for e, v in zip(ema.values(), model.state_dict().values()):
            if e.dtype.is_floating_point:
                e.lerp_(v, 1 - d)
            else:
                e.copy_(v)


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


def _update_trades(net, optimizer, x, x_adv, y, w, k, beta, autocast):
    """TRADES: x (the whole batch) and x_adv (its attacked tail, x[k:]) in one forward pass in train
    mode; an example's loss is CE(f(x), y), plus beta * KL(f(x) || f(x_adv)) for the attacked tail.
    Returns the logits to monitor (clean head, adversarial tail) and the per-example losses."""
    with autocast:
        logits = net(torch.cat([x, x_adv])).float()
    clean, adv = logits[:len(x)], logits[len(x):]
    kl = F.kl_div(F.log_softmax(adv, dim=1), F.softmax(clean[k:], dim=1), reduction="none").sum(1)
    losses = F.cross_entropy(clean, y, reduction="none") + F.pad(beta * kl, (k, 0))
    loss = (losses * w).sum() / w.sum()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return torch.cat([clean[:k], adv]), losses


def _attack(net, x, y, eps, alpha, steps, cfg):
    """The adversarial half of a batch: FGSM with random start, PGD whose step follows a ramped eps,
    or (loss trades) the KL-maximising attack."""
    if cfg.attack == "fgsm":
        return fgsm(net, x, y, eps)
    alpha = alpha * eps / cfg.eps if cfg.eps else 0
    if cfg.loss == "trades":
        return trades_attack(net, x, eps, alpha, steps)
    return pgd(net, x, y, eps, alpha, steps)


def _metrics(sums, counts):
    s, (n_clean, n_adv) = sums.tolist(), counts
    out = {}
    if n_clean:
        out.update(clean_loss=s[0] / n_clean, clean_err=s[1] / n_clean)
    if n_adv:
        out.update(adv_loss=s[2] / n_adv, adv_err=s[3] / n_adv)
    return out
