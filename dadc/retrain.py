"""RetrainJob: the background retraining round. Once `threshold` new eligible examples have come
in, one thread fine-tunes the serving round on an MNIST sample plus the human examples with PGD
adversarial training, measures it against the serving round on the same data (gate.py), and, if it
passes, saves it as the next round (Registry.promote) and swaps it into the Predictor. Every
attempt, passed or not, is recorded in the history with its reasons. Requests never wait for it.

Never two rounds on one home at once: a round holds DADC_HOME/rounds/.train.lock (TRAIN_LOCK), the
app's background rounds and `python -m dadc retrain` alike. A background round that finds it held
records nothing and tries again BUSY_RETRY_S later; a round recorded by another process (its
"claimed" count) is read back before the next start, so its examples do not start a round again.
"""
import os
import threading
import time
from dataclasses import asdict, dataclass

import torch

from . import config, files
from .config import RoundConfig
from .examples import eligible
from .gate import gate, measure


TRAIN_LOCK = ".train.lock"  # under DADC_HOME/rounds: held by whoever trains a round on this home
BUSY_RETRY_S = 30.0         # a background round that found the lock held tries again this much later


@dataclass(frozen=True)
class Status:
    """What the job is doing, for the dashboard: replaced whole, never edited in place."""
    state: str = "idle"   # "idle" or "running"
    stage: str = ""       # e.g. "training", "promoted round-003", "rejected: ..."
    done: int = 0         # training steps done of total (0 of 0 when not training)
    total: int = 0


# --- training (on ZeroGPU this runs in a forked GPU process: plain values in, CPU state_dict out) -

_MAIN_PID = os.getpid()


def fine_tune(state, net, x, y, hx, hy, train_cfg, callback=None):
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
    fine_tune = spaces.GPU(duration=120)(fine_tune)
except Exception:  # not installed (e.g. the GPU device): plain CPU/CUDA call
    pass


class RetrainJob:
    """At most one retraining thread at a time, started by notify() once `threshold` new eligible
    examples have arrived since the last round started. Flags that arrive while it runs are counted,
    and start the next round as soon as this one ends: no trigger is lost, none runs twice."""

    def __init__(self, registry, predictor, store, threshold, cfg=None, mnist=None, on_promote=None, on_stage=None):
        self.registry, self.predictor, self.store = registry, predictor, store
        self.threshold = int(threshold)
        self.cfg = cfg or RoundConfig.from_env()
        self.mnist = mnist            # () -> verified MNIST arrays (data.fetch); loaded on the first round
        self.on_promote = on_promote  # (round dir, counts) -> None, e.g. HubSync.push_round
        self.on_stage = on_stage      # (Status) -> None at each stage of a round, e.g. the CLI's progress bar
        self.retry_after = BUSY_RETRY_S
        self._not_before = 0.0        # time.monotonic() before which no background round starts (lock busy)
        self._unclaimed = 0
        self._lock = threading.Lock()
        self._thread = None
        self._idle = threading.Event()
        self._idle.set()
        self._claimed = self._claimed_on_record()  # eligible examples already used
        self._eligible = len(eligible(store.examples(), self.cfg))
        self.status = Status()
        self.started = 0  # rounds started by this process

    # --- triggering ---

    def _claimed_on_record(self):
        attempts = [h for h in self.registry.history() if "claimed" in h]
        return attempts[-1]["claimed"] if attempts else 0

    def recount(self):
        """Count the eligible examples in the store again (after a restore brought some in)."""
        with self._lock:
            self._eligible = len(eligible(self.store.examples(), self.cfg))

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
        """Retrain now, whatever the count. False if a round is running."""
        with self._lock:
            if self._thread is not None:
                return False
            self._launch()
            return True

    def _maybe_start(self):  # lock held
        if self._thread is None and self._eligible - self._claimed >= self.threshold \
                and time.monotonic() >= self._not_before:
            # another process (python -m dadc retrain) may have trained on some of them meanwhile
            self._claimed = max(self._claimed, self._claimed_on_record())
            if self._eligible - self._claimed >= self.threshold:
                self._launch()

    def _launch(self):  # lock held
        self._unclaimed = self._claimed
        self._claimed = self._eligible
        self._idle.clear()
        self.started += 1
        self.status = Status("running", "starting")
        self._thread = threading.Thread(target=self._run, args=(self._claimed,), name="retrain", daemon=True)
        self._thread.start()

    def _run(self, claimed):
        busy = False
        try:
            with files.try_locked(self.registry.root / TRAIN_LOCK) as held:
                busy = held is None
                if not busy:
                    self.run_round(claimed)
        except Exception as e:  # record it; serving goes on with the current round
            self.registry.record({"event": "attempt", "claimed": claimed, "passed": False,
                                  "reasons": [f"the round failed: {type(e).__name__}: {e}"]})
            self.status = Status("idle", f"failed: {e}")
        finally:
            with self._lock:
                self._thread = None
                if busy:  # a round is training in another process: nothing recorded, the examples unclaimed
                    self._claimed, self.started = self._unclaimed, self.started - 1
                    self._not_before = time.monotonic() + self.retry_after
                    self.status = Status("idle", "waiting: a round is training in another process on this home")
                    retry = threading.Timer(self.retry_after, self.start)
                    retry.daemon = True
                    retry.start()
                else:
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
        self.status = Status("running", stage, done, total)
        if self.on_stage:
            self.on_stage(self.status)

    def run_round(self, claimed):
        """One round, in the calling thread: data, fine-tune, gate, promote or not, record. Returns
        the history entry."""
        start = time.perf_counter()
        attempt = sum(1 for h in self.registry.history() if h.get("event") == "attempt") + 1
        self._stage("loading data")
        x, y, human, sets, counts = self._data(attempt)
        base = self.predictor.round
        model, net_config, _ = self.registry.load(base)
        self._stage("training")
        candidate, train_cfg = self._train(model, net_config["net"], base, x, y, human, attempt)
        self._stage("gate: measuring both rounds")
        before, after = measure(model, sets, self.cfg), measure(candidate, sets, self.cfg)
        passed, reasons = gate(before, after, self.cfg)
        seconds = round(time.perf_counter() - start, 1)
        entry = {"event": "attempt", "attempt": attempt, "claimed": claimed, "base": base, "passed": passed,
                 "reasons": reasons, "serving": before, "candidate": after, "counts": counts, "seconds": seconds,
                 "config": asdict(self.cfg)}
        if passed:
            metrics = {**after, "gate": {"base": base, "base_metrics": before}, "counts": counts,
                       "eval": {"n": len(sets["test"][0]), "robust_n": self.cfg.robust_n, "eps": self.cfg.eps,
                                "steps": self.cfg.robust_steps, "split": "MNIST test, first n"},
                       "train": train_cfg, "seconds": seconds}
            entry["round"] = self._promote(candidate, net_config["net"], train_cfg, base, metrics, counts, entry)
        self.registry.record(entry)
        self.status = Status("idle", f"promoted {entry['round']}" if passed else "rejected: " + "; ".join(reasons))
        return entry

    def _data(self, attempt):
        """A fresh MNIST sample, the human examples to train on, and the gate's fixed sets."""
        from . import data

        cfg = self.cfg
        if callable(self.mnist):
            self.mnist = self.mnist()
        x, y = data.tensors(self.mnist, "train")
        xt, yt = data.tensors(self.mnist, "test")
        g = torch.Generator().manual_seed(cfg.seed + attempt)  # a fresh MNIST sample each round
        idx = torch.randperm(len(x), generator=g)[:cfg.mnist_n]
        usable = eligible(self.store.examples(), cfg)
        train_rows = [e for e in usable if not e.held_out]
        hold_rows = [e for e in usable if e.held_out]
        sets = {"test": (xt[:cfg.eval_n], yt[:cfg.eval_n]), "holdout": self.store.tensors(hold_rows)}
        counts = {"mnist examples": len(idx), "human examples": len(train_rows), "human held out": len(hold_rows)}
        return x[idx], y[idx], self.store.tensors(train_rows), sets, counts

    def _train(self, model, net, base, x, y, human, attempt):
        cfg = self.cfg
        train_cfg = {"net": net, "epochs": cfg.epochs, "lr": cfg.lr, "warmup": 0.2, "attack": "pgd",
                     "eps": cfg.eps, "steps": cfg.steps, "human_repeat": cfg.human_repeat,
                     "human_weight": cfg.human_weight, "seed": cfg.seed + attempt}
        # on ZeroGPU the call runs in another process: no progress callback (a closure does not travel)
        progress = None if config.zero_gpu() else (lambda done, total, m: self._stage("training", done, total))
        state = fine_tune(model.state_dict(), net, x, y, *human, train_cfg, callback=progress)
        candidate, _, _ = self.registry.load(base)
        candidate.load_state_dict(state)
        return candidate.eval(), train_cfg

    def _promote(self, candidate, net, train_cfg, base, metrics, counts, entry):
        name = self.registry.promote(candidate, {"net": net, "train": train_cfg, "parent": base}, metrics)
        self.predictor.swap(name)
        if self.on_promote:
            try:
                self.on_promote(self.registry.path(name), counts)
            except Exception as e:  # the Hub is a copy: a failed push never undoes a round
                entry["push_error"] = str(e)
        return name
