"""Studio: everything the app does, as plain Python (no Gradio): predict, flag, verify, roll back,
and the numbers the dashboard shows. Errors meant for the visitor are StudioError, whose message
is safe to show; ui.py turns them into Gradio errors in one place.

Lifecycle: Studio(settings) opens the store and the rounds (no network, no threads); start()
restores from the Hub when one is configured, starts the Hub sync and any round already due;
stop() makes the final push.
"""
import json
import math
import random
import threading
import time
from collections import Counter, deque
from pathlib import Path

import numpy as np

from . import data, files, preprocess
from .checkpoint import CheckpointError
from .config import RoundConfig
from .examples import eligible, round_number
from .registry import ROUND0, Predictor, Registry
from .retrain import RetrainJob
from .store import FlagStore, StoreError

KEEP_CANVAS = 512      # the stored copy of a canvas is at most this many pixels a side
MAX_SESSIONS = 10_000  # open drawings and rate-limit windows remembered (bounded memory)


class StudioError(Exception):
    """A request that cannot be done, with a message for the person who asked."""


def check_digit(digit):
    """The true digit: an int 0-9 (not a bool, float or string), else a clear error."""
    if digit is None:
        raise StudioError("Pick the true digit first.")
    if isinstance(digit, bool) or not isinstance(digit, (int, np.integer)) or not 0 <= digit <= 9:
        raise StudioError(f"Nothing stored: the true digit must be an integer 0-9, got {digit!r}.")
    return int(digit)


def keepable(img):
    """The canvas as stored next to the 28x28: at most KEEP_CANVAS a side."""
    if img is None:
        return None
    img = img.copy() if img.mode in ("RGBA", "RGB", "L", "LA") else img.convert("RGBA")
    img.thumbnail((KEEP_CANVAS, KEEP_CANVAS), reducing_gap=2.0)
    return img


class Studio:
    def __init__(self, settings, seed=ROUND0, round_cfg=None, sync=None, mnist=None):
        """sync: a function (store, registry) -> HubSync or None (None: local only)."""
        self.settings = settings
        self.store = FlagStore(settings.home)
        self.registry = Registry(settings.home, seed)
        self.sync = sync(self.store, self.registry) if sync is not None else None
        self.predictor = Predictor(self.registry)
        self.cfg = round_cfg or RoundConfig.from_env()
        self.job = RetrainJob(self.registry, self.predictor, self.store, settings.threshold, self.cfg,
                              mnist=mnist or (lambda: data.fetch(settings.home, log=lambda m: None)),
                              on_promote=self.sync.push_round if self.sync and self.sync.model_repo else None)
        self.attempts = Attempts(settings.home / "rounds" / "attempts.json")
        self.flag_limit = RateLimit(settings.flag_limit, per=60.0)

    def start(self):
        if self.sync is not None:
            got = self.sync.restore()  # a Space restarts with an empty disk: flags and rounds come back
            if got["rounds"]:
                self.predictor.swap(self.registry.current())
            self.job.recount()
            self.sync.start()
        self.job.start()  # flags stored before a restart may already be due
        return self

    def stop(self):
        if self.sync is not None:
            self.sync.stop()

    # --- draw and predict ---

    def predict(self, canvas, session):
        """(10 probabilities by digit, the 28x28 the model saw), or (the reason, None) when the
        canvas holds no digit. Counts one attempt per drawing, not one per stroke."""
        try:
            x = preprocess.to_mnist(canvas)
        except preprocess.CanvasError as e:
            self.attempts.close(session)
            return str(e), None
        name, p = self.predictor.probs(x)
        self.attempts.open(session, round_number(name))
        return {str(d): float(p[d]) for d in range(10)}, x

    # --- flag ---

    def flag(self, canvas, digit, session):
        """Store one flagged example; the receipt says whether it fooled the model."""
        digit = check_digit(digit)
        try:
            x = preprocess.to_mnist(canvas)
        except preprocess.CanvasError as e:
            raise StudioError(f"Nothing stored: {e}.") from None
        wait = self.flag_limit.take(session)  # counts flags that would be stored, not refused ones
        if wait:
            raise StudioError(f"Nothing stored: too many flags from this session (at most {self.flag_limit.n} "
                              f"a minute). Try again in {math.ceil(wait)} s.")
        name, p = self.predictor.probs(x)
        prediction = int(p.argmax())
        try:
            id_ = self.store.append(x, digit, canvas=keepable(preprocess.pick(canvas)), prediction=prediction,
                                    confidences=[float(v) for v in p], round=round_number(name), session=session)
        except StoreError as e:
            raise StudioError(str(e)) from None
        self.attempts.close(session)
        if not self.cfg.verified_only:
            self.job.notify()
        return {"id": id_, "saved": True, "label": digit, "prediction": prediction, "fooled": prediction != digit,
                "round": name, "message": self._receipt(name, digit, prediction, p[prediction])}

    def _receipt(self, name, digit, prediction, confidence):
        _, more = self.job.pending()
        if self.job.running:
            after = "a new round is training now"
        else:
            after = f"{more} more {'verified ' if self.cfg.verified_only else ''}until the next round"
        r = round_number(name)
        head = (f"You fooled round {r}: it said {prediction}" if prediction != digit
                else f"Saved: round {r} said {prediction} ({confidence:.0%} sure)")
        return f"{head}. {after}."

    # --- verify ---

    def next_to_verify(self, session):
        """Someone else's example this session has not judged yet, fewest votes first; None if none."""
        voted = {v.id for v in self.store.validations() if v.session == session}
        rows = [e for e in self.store.examples() if e.session != session and e.id not in voted]
        if not rows:
            return None
        fewest = min(e.agree + e.disagree for e in rows)
        e = random.choice([e for e in rows if e.agree + e.disagree == fewest])
        return {"id": e.id, "label": e.label, "canvas": str(e.canvas_path)}

    def verify(self, id_, agree, session):
        example = self.store.find(id_)
        if example is None:
            raise StudioError(f"No flagged example with id {id_!r}.")
        if example.session == session:
            raise StudioError("You cannot verify your own example.")
        if not isinstance(agree, bool):
            raise StudioError(f"agree must be true or false, got {agree!r}.")
        was = example.verified(self.cfg.votes)
        try:
            self.store.validate(id_, session, agree)
        except (StoreError, ValueError) as e:
            raise StudioError(str(e)) from None
        example = self.store.find(id_)
        now = example.verified(self.cfg.votes)
        if self.cfg.verified_only and now and not was:
            self.job.notify()
        return {"id": id_, "agree": example.agree, "disagree": example.disagree, "verified": now}

    # --- rounds ---

    def rollback(self, name):
        if self.job.running:
            raise StudioError("A round is training: roll back when it has finished.")
        try:
            self.registry.rollback(name, why="asked on the dashboard or API")  # checks that it loads
            self.predictor.swap(name)
        except (ValueError, CheckpointError) as e:
            raise StudioError(str(e)) from None
        return {"serving": name}

    def retrain_now(self):
        return "Retraining started." if self.job.run_now() else "A round is already training."

    # --- dashboard ---

    def dashboard(self):
        """The dashboard's numbers: plain values, laid out by the page."""
        rows = self.store.examples()
        verified = [e for e in rows if e.verified(self.cfg.votes)]
        per_digit = Counter((e.label, "collected") for e in rows) + Counter((e.label, "verified") for e in verified)
        attempts = self.attempts.counts()
        fooled = Counter(e.round for e in rows if e.fooled)
        fooled_verified = Counter(e.round for e in verified if e.fooled)
        names = self.registry.names()
        mer, acc = [], []
        for name in names:
            n = round_number(name)
            if attempts.get(n):
                mer.append({"round": n, "kind": "MER (fooled / attempts)", "rate": fooled[n] / attempts[n]})
                mer.append({"round": n, "kind": "verified MER", "rate": fooled_verified[n] / attempts[n]})
            m = self.registry.metrics(name)
            for key, label in (("clean_acc", "clean"), ("robust_acc", "PGD robust"), ("human_acc", "human hold-out")):
                if isinstance(m.get(key), (int, float)):
                    acc.append({"round": n, "metric": label, "accuracy": m[key]})
        return {"status": self._status(len(rows), len(eligible(rows, self.cfg))),
                "digits": [{"digit": str(d), "kind": k, "examples": per_digit[(d, k)]}
                           for d in range(10) for k in ("collected", "verified")],
                "mer": mer, "accuracy": acc, "history": self._history(),
                "gallery": [(str(e.canvas_path), f"{e.label}, not {e.prediction} (round {e.round})")
                            for e in rows if e.fooled][-12:][::-1],
                "rounds": names, "serving": self.predictor.round, "running": self.job.running}

    def _status(self, collected, usable):
        new, more = self.job.pending()
        st = self.job.status
        lines = [f"Serving {self.predictor.round} · {collected} examples collected "
                 f"({usable} usable{' — verified only' if self.cfg.verified_only else ''}) · "
                 f"{new} new, {more} more start the next round (threshold {self.job.threshold})"]
        if st.state == "running":
            lines.append(f"Retraining: {st.stage}" + (f" {st.done}/{st.total} steps" if st.total else ""))
        elif st.stage:
            lines.append(f"Last round: {st.stage}")
        if self.sync is not None:
            s = self.sync.status()
            lines.append(f"Hub: {s['repo']} · last push {s['last_push'] or 'not yet'} · {s['pending']} pending"
                         + (f" · {s['last_error']}" if s["last_error"] else ""))
        else:
            lines.append("Hub: not configured (HF_TOKEN and DADC_DATASET_REPO): flags are kept locally")
        return "\n\n".join(lines)

    def _history(self):
        """Every attempt and rollback, newest first, as table rows."""
        out = []
        for h in reversed(self.registry.history()):
            if h.get("event") == "attempt":
                c = h.get("candidate", {})
                out.append([h["time"], f"attempt {h.get('attempt', '?')} on {h.get('base', '?')}",
                            f"promoted {h['round']}" if h.get("passed") else "rejected",
                            "; ".join(h.get("reasons", [])) or "passed the gate",
                            _pct(c.get("clean_acc")), _pct(c.get("robust_acc")), h.get("seconds")])
            elif h.get("event") == "rollback":
                out.append([h["time"], "rollback", f"{h['from']} -> {h['to']}", h.get("why", ""), "", "", ""])
        return out


def _pct(v):
    return f"{v:.2%}" if isinstance(v, (int, float)) else ""


class Attempts:
    """Attempts per round for the model error rate: one per drawing a person got a prediction for
    (not one per stroke of live prediction). Kept in memory, saved to DADC_HOME every few seconds."""

    def __init__(self, path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._open = {}
        self._saved = 0.0
        try:
            self._counts = Counter({int(k): v for k, v in json.loads(self.path.read_text()).items()})
        except (OSError, ValueError, AttributeError):
            self._counts = Counter()

    def open(self, session, round_):
        with self._lock:
            if session not in self._open:
                if len(self._open) >= MAX_SESSIONS:
                    self._open.pop(next(iter(self._open)))
                self._open[session] = round_
                self._counts[round_] += 1
        if time.monotonic() - self._saved > 5:
            self.save()

    def close(self, session):
        with self._lock:
            self._open.pop(session, None)

    def counts(self):
        with self._lock:
            return dict(self._counts)

    def save(self):
        with self._lock:
            text = json.dumps({str(k): v for k, v in self._counts.items()})
            self._saved = time.monotonic()
        try:
            files.write_atomic(self.path, text)
        except OSError:
            pass  # a counter, not data: never fail a request for it


class RateLimit:
    """At most n events per `per` seconds for each key (a sliding window), e.g. flags per session."""

    def __init__(self, n, per):
        self.n, self.per = n, per
        self._lock = threading.Lock()
        self._times = {}  # key -> deque of the monotonic times of its last n events

    def take(self, key):
        """Record one event for key and return 0, or, over the limit, the seconds until the next is
        allowed (and record nothing)."""
        now = time.monotonic()
        with self._lock:
            times = self._times.setdefault(key, deque(maxlen=self.n))
            if len(times) == self.n and now - times[0] < self.per:
                return self.per - (now - times[0])
            times.append(now)
            if len(self._times) > MAX_SESSIONS:  # bounded memory: forget the keys that are quiet now
                self._times = {k: t for k, t in self._times.items() if now - t[-1] < self.per}
            return 0.0
