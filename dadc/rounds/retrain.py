"""RetrainJob: the background retraining round. Once `threshold` new eligible examples have come
in, one thread fine-tunes round-000 on an MNIST sample plus the human examples (each as a small
family: the drawing and jittered redrawings of it, synth/jitter.py) with PGD adversarial training,
gates it (gate.py: MNIST floors fixed by round-000 on a validation slice, human hold-out no worse
than the serving round), and, if it passes, saves it as the next round
(Registry.promote) and swaps it into the Predictor. Every attempt, passed or not, is recorded in
the history with its reasons. Requests never wait for it.

Never two rounds on one home at once: a round holds DADC_HOME/rounds/.train.lock (TRAIN_LOCK), the
app's background rounds and `python -m dadc retrain` alike. A background round that finds it held
records nothing and tries again BUSY_RETRY_S later; a round recorded by another process (its
"claimed" count) is read back before the next start, so its examples do not start a round again.
"""
import functools
import os
import threading
import time
from dataclasses import asdict, dataclass

import torch

from .. import config
from .. import files
from ..config import RoundConfig
from ..examples import eligible, for_round, round_number, sample
from . import isolate
from .gate import REFERENCE, cached_reference, gate, matrix_row, measure, reference_settings


TRAIN_LOCK = ".train.lock"  # under DADC_HOME/rounds: held by whoever trains a round on this home
BUSY_RETRY_S = 30.0         # a background round that found the lock held tries again this much later


class Stopped(Exception):
    """The app is shutting down: the round ends at its next step, and is recorded as stopped (not
    as an attempt, so its examples start a round again after the restart)."""


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
    from ..model import nets
    from ..model.training import TrainConfig, train

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


# --- one round's data and training, plain functions of their inputs (RetrainJob.run_round) ---------

def round_data(arrays, store, registry, cfg, attempt):
    """A fresh MNIST sample, the human examples to train on, the gate's fixed sets, and the
    held-out human examples: (x, y, (human x, human y), sets, counts, held-out rows)."""
    from ..model import mnist as data

    x, y = data.tensors(arrays, "train")
    xt, yt = data.tensors(arrays, "test")
    n = len(x) - cfg.val_n  # the last val_n are the gate's validation slice: never trained on
    if not 0 < n < len(x):
        raise ValueError(f"val_n={cfg.val_n}: must be between 1 and {len(x) - 1}")
    g = torch.Generator().manual_seed(cfg.seed + attempt)  # a fresh MNIST sample each round
    idx = torch.randperm(n, generator=g)[:cfg.mnist_n]
    usable = eligible(store.examples(), cfg)
    since = max((h["time"] for h in registry.history() if h.get("event") == "attempt"), default="")
    train_rows = for_round([e for e in usable if not e.held_out], since, cfg.human_max, cfg.seed + attempt)
    hold_rows = sample([e for e in usable if e.held_out], cfg.human_max, cfg.seed + attempt)
    sets = {"val": (x[n:], y[n:]), "test": (xt[:cfg.eval_n], yt[:cfg.eval_n]),
            "holdout": store.tensors(hold_rows)}
    human = human_families(*store.tensors(train_rows), cfg, cfg.seed + attempt)
    counts = {"mnist examples": len(idx), "human examples": len(train_rows), "human held out": len(hold_rows),
              "human eligible": len(usable), "human family members": len(human[0])}
    return x[idx], y[idx], human, sets, counts, hold_rows


def family_size(n, cfg):
    """Members of each of n human examples' families: the round's human share (cfg.human_share of
    its training examples) spread over them, at least 1 (the drawing itself), at most cfg.family_max.
    Few flags get big families (each flag stands for a way of drawing that fooled the model); many
    flags get small ones, so a round's cost does not grow with the store."""
    if not 0 <= cfg.human_share < 1 or cfg.family_max < 1:
        raise ValueError(f"human_share must be in [0, 1) and family_max >= 1, "
                         f"got {cfg.human_share} and {cfg.family_max}")
    want = cfg.human_share / (1 - cfg.human_share) * cfg.mnist_n
    return int(min(cfg.family_max, max(1, round(want / max(n, 1)))))


def human_families(hx, hy, cfg, seed):
    """The round's human examples, each as its family (synth/jitter.families: the drawing, then
    jittered redrawings through the app's preprocessing), seeded by the round."""
    from ..synth import jitter

    return jitter.families(hx, hy, family_size(len(hx), cfg), seed, cfg.jitter)


def run(isolated, fn, *args, **kwargs):
    """fn(*args, **kwargs) here, or, for the app's background round (isolated), in a forked child at
    the lowest CPU priority with one torch thread (isolate.py): the round takes longer, visitors'
    requests do not (docs/BENCHMARKS.md)."""
    return isolate.call(fn, *args, **kwargs) if isolated else fn(*args, **kwargs)


def train_candidate(registry, net, x, y, human, cfg, attempt, progress=None, isolated=False):
    """Fine-tune round-000 (REFERENCE) on the round's data: (the candidate, in eval mode, and its
    training config). `fine_tune` is this module's, looked up at call time (tests replace it)."""
    model = registry.load(REFERENCE)[0]
    train_cfg = {"net": net, "epochs": cfg.epochs, "lr": cfg.lr, "warmup": 0.2, "attack": "pgd",
                 "eps": cfg.eps, "steps": cfg.steps, "human_repeat": cfg.human_repeat,
                 "human_weight": cfg.human_weight, "seed": cfg.seed + attempt, "init": REFERENCE}
    state = run(isolated, fine_tune, model.state_dict(), net, x, y, *human,
                {k: v for k, v in train_cfg.items() if k != "init"}, callback=progress)
    candidate, _, _ = registry.load(REFERENCE)
    candidate.load_state_dict(state)
    return candidate.eval(), train_cfg


class RetrainJob:
    """At most one retraining thread at a time, started by notify() once `threshold` new eligible
    examples have arrived since the last round started. Flags that arrive while it runs are counted,
    and start the next round as soon as this one ends: no trigger is lost, none runs twice."""

    def __init__(self, registry, predictor, store, threshold, cfg=None, mnist=None, on_promote=None, on_stage=None,
                 finish=None, enabled=True):
        """finish: (entry, candidate, net config, metrics or None, counts) -> the recorded entry, in
        place of promoting and recording here (the trainer's compare-and-swap on the model repo).
        enabled=False: rounds are trained elsewhere (DADC_TRAINER=remote); this job starts none."""
        self.registry, self.predictor, self.store = registry, predictor, store
        self.finish, self.enabled = finish or functools.partial(promote_here, self), enabled
        self.isolated = False  # True: the round's training and measuring run in a lowered child (isolate.py)
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
        self._stopping = threading.Event()
        self._held = False  # hold(): count what comes in, start nothing (a restore is bringing the history)
        self._claimed = self._claimed_on_record()  # eligible examples already used
        self._eligible = len(eligible(store.examples(), self.cfg))
        self.status = Status()
        self.started = 0  # rounds started by this process

    # --- triggering ---

    def _claimed_on_record(self):
        attempts = [h for h in self.registry.history() if "claimed" in h]
        return attempts[-1]["claimed"] if attempts else 0

    def hold(self):
        """Start no round until release(): the history that says what was used may be on its way."""
        with self._lock:
            self._held = True

    def release(self):
        """Count the eligible examples again, read what earlier rounds claimed, and start if due."""
        with self._lock:
            self._held = False
            self._eligible = len(eligible(self.store.examples(), self.cfg))
            self._claimed = max(self._claimed, self._claimed_on_record())
            self._maybe_start()
        return self

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
            if self._thread is not None or not self.enabled:
                return False
            self._launch()
            return True

    def _maybe_start(self):  # lock held
        if self._thread is None and self._eligible - self._claimed >= self.threshold and self.enabled \
                and time.monotonic() >= self._not_before and not self._stopping.is_set() and not self._held:
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
            if isinstance(e, Stopped) or self._stopping.is_set():  # also: its child killed by stop()
                self.registry.record({"event": "stopped", "why": "the app shut down during the round"})
                self.status = Status("idle", "stopped: the app shut down")
            else:
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

    def stop(self, timeout=None):
        """Bring a running round to a safe stop at its next step (never between saving a round and
        recording it) and wait for it at most `timeout` seconds; no round starts after this."""
        self._stopping.set()
        isolate.kill_children()  # an isolated round's training or measuring: its child ends now
        return self.wait(timeout)

    def wait(self, timeout=None):
        """Block until no round is running (tests, simulate, shutdown). True if idle."""
        return self._idle.wait(timeout)

    @property
    def running(self):
        return not self._idle.is_set()

    # --- one round ---

    def _stage(self, stage, done=0, total=0):
        if self._stopping.is_set():
            raise Stopped()
        self.status = Status("running", stage, done, total)
        if self.on_stage:
            self.on_stage(self.status)

    def run_round(self, claimed):
        """One round, in the calling thread: data, fine-tune, gate, promote or not, record. Returns
        the history entry."""
        start = time.perf_counter()
        attempt = sum(1 for h in self.registry.history() if h.get("event") == "attempt") + 1
        self._stage("loading data")
        if callable(self.mnist):
            self.mnist = self.mnist()
        x, y, human, sets, counts, hold_rows = round_data(self.mnist, self.store, self.registry, self.cfg, attempt)
        base = self.predictor.round  # the serving round: the candidate must do as well on the human hold-out
        model, net_config, _ = self.registry.load(base)
        self._stage("training")
        # on ZeroGPU the call runs in another process: no progress callback (a closure does not travel)
        progress = None if config.zero_gpu() else (lambda done, total, m: self._stage("training", done, total))
        # Every round fine-tunes round-000 (the gate's reference) on MNIST plus the human examples so
        # far (new ones first, then a replay sample, at most human_max), as DADC rounds train on all
        # data collected: fine-tuning the serving round compounds each round's small loss of clean
        # and PGD accuracy (simulate: MNIST test clean 99.23% -> 99.00% after four promoted rounds).
        candidate, train_cfg = train_candidate(self.registry, net_config["net"], x, y, human, self.cfg, attempt,
                                               progress, self.isolated)
        reference = cached_reference(self.registry.history(), self.cfg)
        if reference is None:  # once per home (and settings): the floors' fixed reference
            self._stage(f"gate: measuring {REFERENCE} on the validation slice (once)")
            reference = {"round": REFERENCE, **run(self.isolated, measure, self.registry.load(REFERENCE)[0], sets,
                                                   self.cfg, ("val",)),
                         "settings": reference_settings(self.cfg)}
        self._stage("gate: measuring the candidate")
        before = measure(model, sets, self.cfg, ("holdout",))  # a few hundred examples at most: here
        after = run(self.isolated, measure, candidate, sets, self.cfg)
        after["matrix_row"] = matrix_row(candidate, self.store, hold_rows, map(round_number, self.registry.names()))
        passed, reasons, notes = gate(reference, before, after, self.cfg)
        seconds = round(time.perf_counter() - start, 1)
        entry = {"event": "attempt", "attempt": attempt, "claimed": claimed, "base": base, "passed": passed,
                 "reasons": reasons, "notes": notes, "reference": reference, "serving": before, "candidate": after,
                 "counts": counts, "seconds": seconds, "config": asdict(self.cfg)}
        if passed:
            metrics = {**after, "reference": reference, "gate": {"base": base, "serving": before, "notes": notes},
                       "counts": counts,
                       "eval": {"n": len(sets["test"][0]), "robust_n": self.cfg.robust_n, "eps": self.cfg.eps,
                                "steps": self.cfg.robust_steps, "split": "MNIST test, first n",
                                "val_n": len(sets["val"][0]), "val_split": "MNIST train, last val_n"},
                       "train": train_cfg, "seconds": seconds}
        entry = self.finish(entry, candidate, {"net": net_config["net"], "train": train_cfg, "parent": base},
                            metrics if passed else None, counts)
        self.status = Status("idle", f"promoted {entry['round']}" if entry["passed"]
                             else "rejected: " + "; ".join(entry["reasons"]))
        return entry


def promote_here(job, entry, candidate, net_config, metrics, counts):
    """A RetrainJob's own finish: promote a passed candidate (metrics given) into its registry and
    predictor (then on_promote: the Hub copy), and record the attempt."""
    if metrics is not None:
        entry["round"] = name = job.registry.promote(candidate, net_config, metrics)
        job.predictor.swap(name)
        if job.on_promote:
            try:
                job.on_promote(job.registry.path(name), counts)
            except Exception as e:  # the Hub is a copy: a failed push never undoes a round
                entry["push_error"] = str(e)
    return job.registry.record(entry)
