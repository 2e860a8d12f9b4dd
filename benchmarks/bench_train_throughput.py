"""PGD adversarial training throughput: our trainer against a plain reference loop, in one run.

The reference is PGD-AT written the straightforward way: a DataLoader over a TensorDataset, the
attack as in most tutorials (loss.backward() through the whole net, so parameter gradients are
computed and thrown away), the attack in eval mode, and per-step .item() logging. Both use the same
net, batch size, PGD steps and step size; both train the same number of samples.

    python benchmarks/bench_train_throughput.py                      # CPU, net "fast", k=10
    python benchmarks/bench_train_throughput.py --device cuda --samples 60000

--options instead times our trainer with today's recipe against each issue-14 option (TRADES, EMA,
canvas augmentation, PGD-20 throughout as --steps-late does at the end, and all of them together as
--recipe round0 trains), same net, batch and samples; the augmentation pool's one-off build is timed
apart (it is not in the samples/s):

    python benchmarks/bench_train_throughput.py --options --samples 30000 --repeats 1
"""
import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from dadc.model import mnist as data
from dadc.model import nets  # noqa: E402
from dadc.model.training import TrainConfig, train  # noqa: E402


def reference_pgd(model, x, y, eps, alpha, steps):
    delta = torch.empty_like(x).uniform_(-eps, eps)
    delta.requires_grad = True
    for _ in range(steps):
        loss = F.cross_entropy(model(x + delta), y)
        loss.backward()
        delta.data = (delta + alpha * delta.grad.detach().sign()).clamp(-eps, eps)
        delta.data = (x + delta.data).clamp(0, 1) - x
        delta.grad.zero_()
    return (x + delta).detach()


def reference_train(model, x, y, samples, batch_size, eps, alpha, steps, device):
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.to(device)
    seen, log = 0, []
    while seen < samples:
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            model.eval()
            x_adv = reference_pgd(model, xb, yb, eps, alpha, steps)
            model.train()
            optimizer.zero_grad()
            logits = model(x_adv)
            loss = F.cross_entropy(logits, yb)
            loss.backward()
            optimizer.step()
            log.append((loss.item(), (logits.argmax(1) == yb).float().mean().item()))
            seen += len(xb)
            if seen >= samples:
                break
    return seen


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    n = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--net", default="fast")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--samples", type=int, default=3000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--home", default=os.environ.get("DADC_HOME", ".dadc"))
    p.add_argument("--options", action="store_true", help="today's recipe against the issue-14 options")
    p.add_argument("--augment-n", type=int, default=2000, help="pool size for the augment variants")
    args = p.parse_args()
    if args.options:
        return options(args)

    x, y = data.load(args.home, "train", log=lambda m: print(m, file=sys.stderr))
    eps, alpha = 0.3, 2.5 * 0.3 / args.steps
    torch.manual_seed(0)
    # warm up both paths once (allocator, oneDNN/cuDNN kernel choice) so neither pays it in the timing
    reference_train(nets.build(args.net), x, y, 2 * args.batch_size, args.batch_size, eps, alpha, args.steps, args.device)
    cfg = TrainConfig(net=args.net, epochs=args.samples / len(x), batch_size=args.batch_size, eps=eps,
                      alpha=alpha, steps=args.steps, device=args.device)
    train(nets.build(args.net), x, y, TrainConfig(**{**cfg.__dict__, "epochs": 2 * args.batch_size / len(x)}),
          progress=False)

    fp32 = TrainConfig(**{**cfg.__dict__, "amp": False})

    def ours(c):
        return timed(lambda: (train(nets.build(args.net), x, y, c, progress=False), args.samples)[1])

    def ref():
        return timed(lambda: reference_train(nets.build(args.net), x, y, args.samples, args.batch_size, eps, alpha,
                                             args.steps, args.device))

    # interleaved and repeated, so that a slow moment on a shared machine hits every variant alike
    runs = {"reference loop": [], "dadc trainer, fp32": [], "dadc trainer (default: bf16 autocast where native)": []}
    for _ in range(args.repeats):
        runs["reference loop"].append(ref())
        runs["dadc trainer, fp32"].append(ours(fp32))
        runs["dadc trainer (default: bf16 autocast where native)"].append(ours(cfg))
    name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; net {args.net}; PGD-{args.steps}; batch {args.batch_size}; "
          f"{args.samples} samples per run; median of {args.repeats} runs")
    base = statistics.median(runs["reference loop"])
    for label, values in runs.items():
        median = statistics.median(values)
        print(f"{label:52s} {median:8.1f} samples/s   {median / base:5.2f}x")


def options(args):
    from dadc.synth import augment

    x, y = data.load(args.home, "train", log=lambda m: print(m, file=sys.stderr))
    base = TrainConfig(net=args.net, epochs=args.samples / len(x), batch_size=args.batch_size, steps=args.steps,
                       device=args.device)
    t = time.perf_counter()
    pool = augment.pool(x, y, args.augment_n, 0, seed=0)
    build = time.perf_counter() - t
    augment.pool = lambda *a, **k: pool  # every augment run reuses the pool timed above
    variants = {
        f"today: CE, PGD-{args.steps}": {},
        "--loss trades --beta 6": dict(loss="trades"),
        "--ema 0.999": dict(ema=0.999),
        f"--augment 0.2 (pool of {args.augment_n})": dict(augment=0.2, augment_n=args.augment_n),
        f"PGD-{2 * args.steps} throughout (--steps-late {2 * args.steps} at the end)": dict(steps=2 * args.steps),
        "round0 (trades, ema, augment; PGD-10)": dict(loss="trades", ema=0.999, augment=0.2, augment_n=args.augment_n),
    }
    warm = TrainConfig(**{**base.__dict__, "epochs": 2 * args.batch_size / len(x)})
    train(nets.build(args.net), x, y, warm, progress=False)
    runs = {name: [] for name in variants}
    for _ in range(args.repeats):  # interleaved, so a slow moment on a shared machine hits all alike
        for name, kw in variants.items():
            cfg = TrainConfig(**{**base.__dict__, **kw})
            runs[name].append(timed(lambda: (train(nets.build(args.net), x, y, cfg, progress=False),
                                              round(cfg.epochs * len(x)))[1]))
            print(f"  {name}: {runs[name][-1]:.1f} samples/s", file=sys.stderr, flush=True)
    dev = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {dev}; torch {torch.__version__}; net {args.net}; batch {args.batch_size}; "
          f"{args.samples} samples per run; median of {args.repeats} runs; bf16 autocast where native")
    print(f"augmentation pool: {args.augment_n} canvases in {build:.1f} s ({1000 * build / args.augment_n:.1f} ms each), "
          f"once before training")
    first = statistics.median(runs[next(iter(runs))])
    for name, values in runs.items():
        median = statistics.median(values)
        print(f"{name:58s} {median:8.1f} samples/s   {median / first:5.2f}x")


if __name__ == "__main__":
    main()
