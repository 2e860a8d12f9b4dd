"""A training run as data, and its assembly: what `python -m dadc train` runs once its flags are parsed.

A run's settings are a TrainConfig and the train command's own options (TRAIN_OPTIONS): TrainConfig's
defaults, then a named recipe's values (training.RECIPES), then the flags given. The run holds out
MNIST train's last val_n to select the epoch (hold_out), trains, measures the result on MNIST test
(mnist_test_metrics, never selected on) and writes a checkpoint whose metrics.json also records the
recipe and the machine it ran on (machine). No argument parsing here: dadc/__main__.py does that.
"""
import os
import time
from dataclasses import asdict, fields

from . import distributed
from . import mnist as data

# train-command options beyond TrainConfig, with their defaults (a --recipe may set them too)
TRAIN_OPTIONS = {"val_n": 0, "val_robust_n": 1000, "eval_n": 10000, "eval_eps": 0.3, "eval_steps": 40,
                 "eval_alpha": 0.01, "eval_aa_n": 0, "eval_aa_attacks": "apgd-ce,apgd-t", "eval_drawings_n": 0,
                 "eval_drawings_seed": 4242}


def train_settings(args):
    """(TrainConfig, options): TrainConfig's defaults, then the --recipe's values, then the flags given.
    `args` are the train command's parsed arguments: a flag not given is None."""
    from .training import RECIPES, TrainConfig

    recipe = RECIPES[args.recipe] if args.recipe else {}
    given = {k: v for k, v in vars(args).items() if v is not None}
    pick = lambda name, default: given.get(name, recipe.get(name, default))  # noqa: E731
    cfg = TrainConfig(**{f.name: pick(f.name, f.default) for f in fields(TrainConfig)})
    return cfg, {name: pick(name, default) for name, default in TRAIN_OPTIONS.items()}


def machine(device="cpu"):
    """What a run ran on: CPU model, GPU name (if used), torch threads and version."""
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name() if str(device).startswith("cuda") and torch.cuda.is_available() else None
    return {"cpu": cpu, "cpus": os.cpu_count(), "gpu": gpu, "threads": torch.get_num_threads(),
            "torch": torch.__version__}


def hold_out(x, y, cfg, opt):
    """(train x, y, what was held out, validate(model) -> scores) for --val-n: MNIST train's last
    val_n (the gate's slice) is not trained on and selects the epoch. (x, y, None, None) without it."""
    from . import evaluate

    n, rn = opt["val_n"], opt["val_robust_n"]
    if not n:
        return x, y, None, None
    x, y, xv, yv = x[:-n], y[:-n], x[-n:], y[-n:]
    val = {"n": len(xv), "robust_n": len(xv[:rn]), "attack": f"PGD-10, eps {cfg.eps}, step 2.5*eps/10",
           "split": f"MNIST train, last {len(xv)} (not trained on)", "score": "robust accuracy"}

    def validate(model):
        model = model.cpu() if cfg.device != "cpu" else model
        clean = evaluate.accuracy(model, xv, yv)
        robust = evaluate.robust_accuracy(model, xv[:rn], yv[:rn], cfg.eps, 10)
        model.to(cfg.device)
        return {"clean_acc": clean, "robust_acc": robust, "score": robust}
    return x, y, val, validate


def mnist_test_metrics(model, xt, yt, opt):
    """What a trained checkpoint's metrics.json reports, never selected on: clean and PGD accuracy
    on MNIST test, and (when asked) AutoAttack, accuracy on MNIST test digits drawn large on the canvas
    and per family of generated drawings."""
    from . import evaluate

    n, eps = opt["eval_n"], opt["eval_eps"]
    out = {"clean_acc": evaluate.accuracy(model, xt[:n], yt[:n]),
           "robust_acc": evaluate.robust_accuracy(model, xt[:n], yt[:n], eps=eps, steps=opt["eval_steps"],
                                                  alpha=opt["eval_alpha"]),
           "eval": {"n": len(xt[:n]), "attack": "pgd", "norm": "linf", "eps": eps, "steps": opt["eval_steps"],
                    "alpha": opt["eval_alpha"], "restarts": 1, "random_start": True, "split": "MNIST test, first n"}}
    if opt["eval_aa_n"]:
        n = opt["eval_aa_n"]
        attacks = [a for a in opt["eval_aa_attacks"].split(",") if a] or None
        aa = evaluate.autoattack(model, xt[:n], yt[:n], eps, "Linf", attacks)
        out["autoattack"] = {"n": len(xt[:n]), "eps": eps, **aa, "split": "MNIST test, first n"}
    if opt["eval_drawings_n"]:
        out.update(_drawn_metrics(model, xt, yt, opt))
    return out


def _drawn_metrics(model, xt, yt, opt):
    """{"mnist_canvas", "drawings"}: accuracy on MNIST test's first eval_n drawn large on the canvas,
    and on eval_drawings_n generated drawings per family (written to a scratch folder, then read back
    through the app's preprocessing)."""
    import tempfile

    import numpy as np
    import torch

    from .. import preprocess
    from ..synth import augment, drawings
    from . import evaluate

    m = opt["eval_n"]
    canvases = torch.from_numpy(np.stack([preprocess.to_mnist(augment.large(v[0].numpy())) for v in xt[:m]]))
    out = {"mnist_canvas": {"n": len(canvases), "acc": evaluate.accuracy(model, canvases[:, None], yt[:m]),
                            "what": "MNIST test, first n, each drawn 14x large on the canvas (augment.large)"}}
    with tempfile.TemporaryDirectory() as tmp:
        drawings.make(tmp, opt["eval_drawings_n"], seed=opt["eval_drawings_seed"])
        res = evaluate.drawings_accuracy(model, tmp)
    out["drawings"] = {"per_family_n": opt["eval_drawings_n"], "seed": opt["eval_drawings_seed"],
                       "acc": res["all"]["acc"], "n": res["all"]["n"],
                       "by_family": {k: v["acc"] for k, v in res["by_family"].items()},
                       "by_style": {k: v["acc"] for k, v in res["by_style"].items()}}
    return out


def check(cfg, opt, recipe=None, init=None):
    """Refuse settings that cannot make a run, before any data is loaded (ValueError)."""
    import torch

    from . import nets

    cfg.check()
    if cfg.attack != "none" and not 0 < cfg.fraction <= 1:  # as seed 003; normal training is --attack none
        raise ValueError(f"--fraction must be in (0, 1], got {cfg.fraction} (use --attack none for normal training)")
    if not 0 <= opt["val_n"] < 60000 or opt["eval_aa_n"] < 0 or opt["eval_drawings_n"] < 0:
        raise ValueError("--val-n must be in [0, 60000), --eval-aa-n and --eval-drawings-n >= 0")
    if recipe == "round0" and not init:
        raise ValueError("--recipe round0 fine-tunes a model: give one trained with --recipe v1 as --init")
    nets.build(cfg.net)  # fail on an unknown net before loading any data
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but CUDA is not available")


def human_examples(home):
    """The flagged human examples under `home` as tensors, for --human; ValueError when there are none."""
    from ..store import human_tensors

    human = human_tensors(home)
    if len(human[0]) == 0:
        raise ValueError(f"--human: the human example set under {home} is empty (flag some first)")
    return human


def start_model(cfg, init=None):
    """The net to train: the --init checkpoint's (fine-tuning; its net must be cfg.net), else a new
    one from random weights seeded with cfg.seed."""
    import torch

    from . import checkpoint, nets

    if init:
        model, init_config, _ = checkpoint.load(init)
        if init_config["net"] != cfg.net:
            raise ValueError(f"--init is a {init_config['net']!r} net but --net is {cfg.net!r}")
        return model
    torch.manual_seed(cfg.seed)
    return nets.build(cfg.net)


def run(args, home, command, log=print):
    """Train as the parsed train command `args` say (args.recipe, .init, .human, .out and the flags of
    train_settings), on the MNIST cache under `home`; write the checkpoint to args.out with its
    metrics.json (`command` is recorded there). Returns the summary the CLI prints. Under torchrun
    (distributed.py) every process trains its shard and rank 0 alone measures and writes: the
    others return None."""
    cfg, opt = train_settings(args)
    check(cfg, opt, args.recipe, args.init)
    if not distributed.launched():
        return _run(cfg, opt, args, home, command, log)
    cfg.device = distributed.start(cfg.device)
    try:
        if distributed.rank() == 0:
            data.fetch(home, log=log)  # rank 0 alone may download and cache MNIST; the others read it after
        distributed.barrier()
        return _run(cfg, opt, args, home, command, log if distributed.rank() == 0 else lambda m: None)
    finally:
        distributed.stop()


def _run(cfg, opt, args, home, command, log):
    import torch

    from . import checkpoint
    from .training import train

    wall = time.perf_counter()
    arrays = data.fetch(home, log=log)
    x, y, val, validate = hold_out(*data.tensors(arrays, "train"), cfg, opt)
    human = human_examples(home) if args.human else None
    model = start_model(cfg, args.init)
    start = time.perf_counter()
    history = train(model, x, y, cfg, human=human, validate=validate, progress=distributed.rank() == 0)
    seconds = time.perf_counter() - start
    if distributed.active() and not distributed.same_weights(model):
        raise RuntimeError("the training processes ended with different weights: nothing written")
    if distributed.rank() != 0:
        return None  # rank 0 measures and writes
    metrics = mnist_test_metrics(model.cpu().eval(), *data.tensors(arrays, "test"), opt)
    metrics.update({"train_seconds": round(seconds, 1), "history": history,
                    "human_examples": 0 if human is None else len(human[0]), "command": command,
                    "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "processes": distributed.world_size()})
    if val:
        metrics["validation"] = val
    metrics["recipe"] = {"name": args.recipe, "train": asdict(cfg), **opt, "init": args.init, "human": args.human}
    metrics["machine"] = machine(cfg.device)
    metrics["wall_seconds"] = round(time.perf_counter() - wall, 1)
    checkpoint.save(model, args.out, {"net": cfg.net, "train": asdict(cfg)}, metrics)
    return summary(metrics)


def summary(metrics):
    """The one-line answer of a run: clean, PGD accuracy and training time, plus AutoAttack's and the
    drawings' accuracy when measured."""
    out = {k: metrics[k] for k in ("clean_acc", "robust_acc", "train_seconds")}
    if "autoattack" in metrics:
        out["autoattack_acc"] = metrics["autoattack"]["robust_acc"]
    if "drawings" in metrics:
        out["mnist_canvas_acc"] = metrics["mnist_canvas"]["acc"]
        out["drawings_by_family"] = metrics["drawings"]["by_family"]
    return out
