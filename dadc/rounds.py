"""Rounds: the Registry of models that served, the Gate a new one must pass, and the RetrainJob.

    DADC_HOME/rounds/round-000/ ...   checkpoint dirs (model.safetensors, config.json, metrics.json)
    DADC_HOME/rounds/CURRENT          the name of the round being served (rewritten atomically)
    DADC_HOME/rounds/history.jsonl    every retraining attempt and rollback, append-only: why it passed or failed

The loop: each stored flag calls RetrainJob.notify(); once `threshold` new eligible examples have
come in, one background thread fine-tunes the serving round on MNIST + all human examples with PGD
adversarial training, measures it against the serving round on the same data (Gate), and, if it
passes, saves it as the next round and swaps it into the Predictor. Requests never wait for it.
"""
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from . import checkpoint
from .config import RoundConfig

ROUND0 = Path(__file__).resolve().parents[1] / "models" / "round-000"
ROUND_NAME = re.compile(r"round-(\d{3,})")


def _write_atomic(path, text):
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# --- registry ----------------------------------------------------------------------------------

class Registry:
    """The rounds under DADC_HOME/rounds, seeded with round-000 from models/ on first start."""

    def __init__(self, home, seed=ROUND0):
        self.root = Path(home) / "rounds"
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        if not self.names():
            if not (Path(seed) / "model.safetensors").exists():
                raise FileNotFoundError(f"no round-000 to start from: {seed} has no model.safetensors")
            tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=".seed."))
            for f in ("model.safetensors", "config.json", "metrics.json"):
                if (Path(seed) / f).exists():
                    shutil.copy2(Path(seed) / f, tmp / f)
            os.replace(tmp, self.root / "round-000")  # whole directory at once
        if self.current() not in self.names():
            _write_atomic(self.root / "CURRENT", self.names()[-1])

    def names(self):
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and ROUND_NAME.fullmatch(p.name) and (p / "model.safetensors").exists())

    def current(self):
        try:
            return (self.root / "CURRENT").read_text().strip()
        except FileNotFoundError:
            names = self.names()
            return names[-1] if names else None

    def path(self, name):
        if not ROUND_NAME.fullmatch(str(name)) or name not in self.names():
            raise ValueError(f"no round named {name!r}; rounds: {', '.join(self.names())}")
        return self.root / name

    def load(self, name):
        return checkpoint.load(self.path(name))

    def metrics(self, name):
        try:
            return json.loads((self.path(name) / "metrics.json").read_text())
        except (OSError, ValueError):
            return {}

    def promote(self, model, config, metrics):
        """Save the next round and make it current. Returns its name."""
        with self._lock:
            last = max(int(ROUND_NAME.fullmatch(n).group(1)) for n in self.names())
            name = f"round-{last + 1:03d}"
            checkpoint.save(model, self.root / name, config, metrics)
            _write_atomic(self.root / "CURRENT", name)
        return name

    def rollback(self, name, why="rollback"):
        """Serve an earlier (or any existing) round again. The rounds after it stay on record.
        The round must load: CURRENT never names a round the next start could not serve."""
        self.load(name)  # raises ValueError (no such round) or CheckpointError (unreadable)
        with self._lock:
            before = self.current()
            _write_atomic(self.root / "CURRENT", name)
        self.record({"event": "rollback", "from": before, "to": name, "why": why})
        return name

    def record(self, entry):
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **entry}
        line = (json.dumps(entry) + "\n").encode()
        with self._lock:  # one process appends; O_APPEND keeps each line whole
            fd = os.open(self.root / "history.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
        return entry

    def history(self):
        rows = []
        try:
            lines = (self.root / "history.jsonl").read_text().splitlines()
        except FileNotFoundError:
            return rows
        for line in lines:
            try:
                rows.append(json.loads(line))
            except ValueError:
                pass  # a torn last line after a crash
        return rows


# --- serving -----------------------------------------------------------------------------------

class Predictor:
    """The serving model. swap() replaces (name, model) in one assignment, so a request that already
    took the old pair finishes on it and the next one gets the new one: no lock on the hot path."""

    def __init__(self, registry):
        self.registry = registry
        self._local = threading.local()
        self.swap(self._last_good(registry))

    @staticmethod
    def _last_good(registry):
        """CURRENT if it loads; else the newest earlier round that does (made current, and recorded
        why), so that one corrupt round on disk never keeps the app from starting."""
        current = registry.current()
        candidates = [current] + [n for n in reversed(registry.names()) if n < current]
        for name in candidates:
            try:
                registry.load(name)
            except checkpoint.CheckpointError as e:
                registry.record({"event": "unreadable", "round": name, "why": str(e)})
                continue
            if name != current:
                registry.rollback(name, why=f"{current} is unreadable")
            return name
        raise checkpoint.CheckpointError(f"no round under {registry.root} can be loaded")

    def swap(self, name):
        model, _, _ = self.registry.load(name)
        self.serving = (name, model.eval())
        return name

    @property
    def round(self):
        return self.serving[0]

    def probs(self, x28):
        """(round name, 10 probabilities) for one float [28, 28] image in [0, 1]."""
        if not getattr(self._local, "ready", False):
            # one thread per request: torch's 2-thread pool only adds waits for a 28x28 image
            # (60 ms instead of 0.2 ms when the cores are busy); this sets it for this thread only
            torch.set_num_threads(1)
            self._local.ready = True
        name, model = self.serving
        with torch.inference_mode():
            logits = model(torch.as_tensor(x28, dtype=torch.float32).reshape(1, 1, 28, 28))
            return name, torch.softmax(logits.float(), 1)[0].numpy()


def round_number(name):
    return int(ROUND_NAME.fullmatch(name).group(1))


# --- which human examples a round may use ------------------------------------------------------

def held_out(example_id):
    """About 1 in 10 human examples never trains any round: the gate measures on them. Stable per id
    (the same rule as the exported dataset's validation split)."""
    return int(hashlib.sha256(example_id.encode()).hexdigest()[:8], 16) % 10 == 0


def is_verified(row, votes):
    return row.get("agree", 0) >= votes and row.get("agree", 0) > row.get("disagree", 0)


def eligible(rows, cfg):
    """Examples a round may learn from: not disputed (more rejections than agreements), and verified
    if the round is set to use verified examples only."""
    rows = [r for r in rows if not r.get("disagree", 0) > r.get("agree", 0)]
    return [r for r in rows if is_verified(r, cfg.votes)] if cfg.verified_only else rows


def human_set(store, rows):
    if not rows:
        return torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long)
    x = np.stack([np.asarray(store.image(r), dtype=np.uint8) for r in rows])
    return torch.from_numpy(x).float().div_(255).unsqueeze(1), torch.tensor([r["label"] for r in rows])


# --- the gate ----------------------------------------------------------------------------------

def measure(model, sets, cfg):
    """Clean, PGD-robust and human hold-out accuracy on fixed sets (the same for both models)."""
    from .evaluate import accuracy, robust_accuracy

    (xt, yt), (hx, hy) = sets["test"], sets["holdout"]
    torch.manual_seed(cfg.seed)  # the same PGD random starts for both models: a fair comparison
    out = {"clean_acc": accuracy(model, xt, yt),
           "robust_acc": robust_accuracy(model, xt[:cfg.robust_n], yt[:cfg.robust_n], cfg.eps, cfg.robust_steps),
           "human_acc": accuracy(model, hx, hy) if len(hx) else None}
    return out


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


# --- training (on ZeroGPU this runs in a forked GPU process: plain values in, CPU state_dict out) -

_MAIN_PID = os.getpid()


def _fine_tune(state, net, x, y, hx, hy, train_cfg, callback=None):
    from . import nets
    from .training import TrainConfig, train

    if os.getpid() != _MAIN_PID:
        # a forked child (ZeroGPU): the CPU thread pool inherited from the parent hangs at its first
        # parallel op (GNU OpenMP after fork), as PyTorch's DataLoader workers know. One CPU thread.
        torch.set_num_threads(1)
    model = nets.build(net)
    model.load_state_dict(state)
    cfg = TrainConfig(**train_cfg)
    if torch.cuda.is_available():
        cfg.device = "cuda"
    train(model, x, y, cfg, human=(hx, hy) if len(hx) else None, callback=callback, progress=False)
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


try:  # a no-op off Spaces; on ZeroGPU it borrows a GPU for the call
    import spaces
    _fine_tune = spaces.GPU(duration=120)(_fine_tune)
except Exception:  # not installed (e.g. the GPU device): plain CPU/CUDA call
    pass


# --- the job -----------------------------------------------------------------------------------

class RetrainJob:
    """At most one retraining thread at a time, started by notify() once `threshold` new eligible
    examples have arrived since the last round started. Flags that arrive while it runs are counted,
    and start the next round as soon as this one ends: no trigger is lost, none runs twice."""

    def __init__(self, registry, predictor, store, threshold, cfg=None, mnist=None, on_promote=None):
        self.registry, self.predictor, self.store = registry, predictor, store
        self.threshold = int(threshold)
        self.cfg = cfg or RoundConfig.from_env()
        self.mnist = mnist            # () -> verified MNIST arrays (data.fetch); loaded on the first round
        self.on_promote = on_promote  # (round dir, counts) -> None, e.g. HubSync.push_round
        self._lock = threading.Lock()
        self._thread = None
        self._idle = threading.Event()
        self._idle.set()
        attempts = [h for h in registry.history() if "claimed" in h]
        self._claimed = attempts[-1]["claimed"] if attempts else 0  # eligible examples already used
        self._eligible = len(eligible(store.examples(), self.cfg))
        self.status = {"state": "idle", "stage": "", "done": 0, "total": 0}
        self.started = 0  # rounds started by this process

    # --- triggering ---

    def pending(self):
        """New eligible examples not yet in a round, and how many more start the next one."""
        with self._lock:
            new = self._eligible - self._claimed
        return new, max(0, self.threshold - new)

    def notify(self, new=1):
        """Count `new` eligible examples (a stored flag, or a vote that verified one)."""
        with self._lock:
            self._eligible += new
            self._maybe_start()

    def start(self):
        """Start at once if enough is pending (e.g. flags stored before a restart)."""
        with self._lock:
            self._maybe_start()
        return self

    def run_now(self):
        """Retrain now, whatever the count (dashboard / simulate). False if a round is running."""
        with self._lock:
            if self._thread is not None:
                return False
            self._launch()
            return True

    def _maybe_start(self):  # lock held
        if self._thread is None and self._eligible - self._claimed >= self.threshold:
            self._launch()

    def _launch(self):  # lock held
        self._claimed = self._eligible
        self._idle.clear()
        self.started += 1
        self.status = {"state": "running", "stage": "starting", "done": 0, "total": 0}
        self._thread = threading.Thread(target=self._run, args=(self._claimed,), name="retrain", daemon=True)
        self._thread.start()

    def _run(self, claimed):
        try:
            self._round(claimed)
        except Exception as e:  # record it; serving goes on with the current round
            self.registry.record({"event": "attempt", "claimed": claimed, "passed": False,
                                  "reasons": [f"the round failed: {type(e).__name__}: {e}"]})
            self.status = {"state": "idle", "stage": f"failed: {e}", "done": 0, "total": 0}
        finally:
            with self._lock:
                self._thread = None
                self._maybe_start()  # what came in meanwhile
                if self._thread is None:
                    self._idle.set()

    def wait(self, timeout=None):
        """Block until no round is running (tests, simulate, shutdown). True if idle."""
        return self._idle.wait(timeout)

    @property
    def running(self):
        return not self._idle.is_set()

    # --- one round ---

    def _stage(self, stage, done=0, total=0):
        self.status = {"state": "running", "stage": stage, "done": done, "total": total}

    def _round(self, claimed):
        from . import data

        cfg, start = self.cfg, time.perf_counter()
        self._stage("loading data")
        if callable(self.mnist):
            self.mnist = self.mnist()
        arrays = self.mnist
        x, y = data.tensors(arrays, "train")
        xt, yt = data.tensors(arrays, "test")
        attempt = sum(1 for h in self.registry.history() if h.get("event") == "attempt") + 1
        g = torch.Generator().manual_seed(cfg.seed + attempt)  # a fresh MNIST sample each round
        idx = torch.randperm(len(x), generator=g)[:cfg.mnist_n]
        rows = eligible(self.store.examples(), cfg)
        train_rows = [r for r in rows if not held_out(r["id"])]
        hold_rows = [r for r in rows if held_out(r["id"])]
        hx, hy = human_set(self.store, train_rows)
        sets = {"test": (xt[:cfg.eval_n], yt[:cfg.eval_n]), "holdout": human_set(self.store, hold_rows)}

        base = self.predictor.round
        model, config, _ = self.registry.load(base)
        train_cfg = {"net": config["net"], "epochs": cfg.epochs, "lr": cfg.lr, "warmup": 0.2, "attack": "pgd",
                     "eps": cfg.eps, "steps": cfg.steps, "human_repeat": cfg.human_repeat,
                     "human_weight": cfg.human_weight, "seed": cfg.seed + attempt}
        self._stage("training")
        # on ZeroGPU the call runs in another process: no progress callback (a closure does not travel)
        zero_gpu = os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "true")
        progress = None if zero_gpu else (lambda done, total, m: self._stage("training", done, total))
        state = _fine_tune(model.state_dict(), config["net"], x[idx], y[idx], hx, hy, train_cfg, callback=progress)
        candidate, _, _ = self.registry.load(base)
        candidate.load_state_dict(state)
        candidate.eval()

        self._stage("gate: measuring both rounds")
        before, after = measure(model, sets, cfg), measure(candidate, sets, cfg)
        passed, reasons = gate(before, after, cfg)
        seconds = round(time.perf_counter() - start, 1)
        counts = {"mnist examples": len(idx), "human examples": len(train_rows), "human held out": len(hold_rows)}
        entry = {"event": "attempt", "attempt": attempt, "claimed": claimed, "base": base, "passed": passed,
                 "reasons": reasons, "serving": before, "candidate": after, "counts": counts, "seconds": seconds,
                 "config": asdict(cfg)}
        if passed:
            metrics = {**after, "gate": {"base": base, "base_metrics": before}, "counts": counts,
                       "eval": {"n": len(sets["test"][0]), "robust_n": cfg.robust_n, "eps": cfg.eps,
                                "steps": cfg.robust_steps, "split": "MNIST test, first n"},
                       "train": train_cfg, "seconds": seconds}
            name = self.registry.promote(candidate, {"net": config["net"], "train": train_cfg, "parent": base},
                                         metrics)
            self.predictor.swap(name)
            entry["round"] = name
            if self.on_promote:
                try:
                    self.on_promote(self.registry.path(name), counts)
                except Exception as e:  # the Hub is a copy: a failed push never undoes a round
                    entry["push_error"] = str(e)
        self.registry.record(entry)
        self.status = {"state": "idle", "stage": ("promoted " + entry["round"]) if passed
                       else "rejected: " + "; ".join(reasons), "done": 0, "total": 0}


def main_rollback(args, settings):
    """The CLI: python -m dadc rollback round-NNN. A running app keeps its model until it restarts
    (roll back from its dashboard to switch at once)."""
    registry = Registry(settings.home)
    registry.rollback(args.round, why="python -m dadc rollback")
    print(f"{registry.root / 'CURRENT'} now names {args.round}: the app serves it from its next start")
