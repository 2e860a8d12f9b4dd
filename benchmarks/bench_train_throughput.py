"""PGD adversarial training throughput: our trainer against a plain reference loop, in one run.

The reference is PGD-AT written the straightforward way: a DataLoader over a TensorDataset, the
attack as in most tutorials (loss.backward() through the whole net, so parameter gradients are
computed and thrown away), the attack in eval mode, and per-step .item() logging. Both use the same
net, batch size, PGD steps and step size; both train the same number of samples.

    python benchmarks/bench_train_throughput.py                      # CPU, net "fast", k=10
    python benchmarks/bench_train_throughput.py --device cuda --samples 60000
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
from dadc import data, nets  # noqa: E402
from dadc.training import TrainConfig, train  # noqa: E402


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
    args = p.parse_args()

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


if __name__ == "__main__":
    main()
