"""Studio: everything the app does, as plain Python (no Gradio): predict, flag, verify, roll back,
and the numbers the dashboard shows. Errors meant for the visitor are StudioError, whose message
is safe to show; ui.py turns them into Gradio errors in one place.

Lifecycle: Studio(settings) opens the store and the rounds (no network, no threads); start()
restores from the Hub when one is configured, starts the Hub sync and any round already due;
stop() makes the final push.
"""
import json
import math
import re
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import dashboard, data, files, preprocess
from .checkpoint import CheckpointError
from .config import RoundConfig
from .examples import eligible, round_number
from .registry import ROUND0, Predictor, Registry
from .retrain import RetrainJob
from .store import FlagStore, StoreError

KEEP_CANVAS = 256      # the stored copy of a canvas is at most this many pixels a side (enough to verify)
SHUTDOWN_S = (3.0, 5.0)  # at shutdown: wait for a round to stop, then for the final push (8 s < a Space's 10 s)
MAX_SESSIONS = 10_000  # open drawings and rate-limit windows remembered (bounded memory)
MAX_VISITORS = 100_000  # visitors whose attempts are counted and who may choose a nickname


class StudioError(Exception):
    """A request that cannot be done, with a message for the person who asked."""


@dataclass(frozen=True)
class Visitor:
    """Who asks. `id` keys the limits, the votes and the store's `session` column: the HF username
    when logged in, else an id the server derived from the client's address (never one the client
    chose). A plain string stands for an anonymous visitor with that id."""
    id: str
    username: str | None = None  # set only by a Hugging Face OAuth login

    @property
    def anonymous(self):
        return self.username is None


def visitor(who):
    return who if isinstance(who, Visitor) else Visitor(str(who))


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
    img = img if img.mode in ("RGBA", "RGB", "L", "LA") else img.convert("RGBA")
    factor = math.ceil(max(img.size) / KEEP_CANVAS)
    return img.reduce(factor) if factor > 1 else img.copy()  # a box average: fast, keeps thin strokes


class Studio:
    def __init__(self, settings, seed=ROUND0, round_cfg=None, sync=None, mnist=None):
        """sync: a function (store, registry) -> HubSync or None (None: local only). One Studio per
        home: a second one (another app process on the same DADC_HOME) raises files.Busy."""
        self.settings = settings
        settings.home.mkdir(parents=True, exist_ok=True)
        try:
            self._home_lock = files.hold(settings.home / "app.lock")  # held until the process ends
        except files.Busy as e:
            raise files.Busy(f"another app is already running on DADC_HOME {settings.home}: {e}. "
                             "Stop it, or give this one its own DADC_HOME.") from None
        self.store = FlagStore(settings.home)
        self.registry = Registry(settings.home, seed)
        self.sync = sync(self.store, self.registry) if sync is not None else None
        self.predictor = Predictor(self.registry)
        self.cfg = round_cfg or RoundConfig.from_env()
        self.job = RetrainJob(self.registry, self.predictor, self.store, settings.threshold, self.cfg,
                              mnist=mnist or (lambda: data.fetch(settings.home, log=lambda m: None)),
                              on_promote=self.sync.push_round if self.sync and self.sync.model_repo else None)
        self.attempts = Attempts(settings.home / "rounds" / "attempts.json")
        self.nicknames = Nicknames(settings.home / "nicknames.json")
        self.flag_limit = RateLimit(settings.flag_limit, per=60.0)         # per identity
        self.anonymous_budget = RateLimit(settings.flag_budget, per=3600.0)  # all anonymous visitors together
        self._lock = threading.Lock()
        self._stored = self.store.count()  # for the store's hard cap (DADC_MAX_FLAGS), counted from here on
        self.restoring = False  # the Hub restore is running (start())
        self.counts = dashboard.Counts(self)  # the dashboard's counts, shared by all visitors

    def start(self, background=True):
        """Restore from the Hub (when one is configured) and start the Hub sync and any round due.
        The restore runs in the background: the app serves at once (the local round, else
        round-000) and swaps to the restored round when it is in; no round starts before it is
        done, so the restored history says what earlier rounds used."""
        if self.sync is None:
            self.job.start()  # flags stored before a restart may already be due
            return self
        self.job.hold()
        self.restoring = True
        if background:
            threading.Thread(target=self._restore, name="restore", daemon=True).start()
        else:
            self._restore()
        return self

    def _restore(self):
        try:
            got = self.sync.restore()  # a Space restarts with an empty disk: flags and rounds come back
            if got["rounds"] or self.registry.current() != self.predictor.round:
                self.predictor.swap(self.registry.current())
            with self._lock:
                self._stored = self.store.count()
        finally:
            self.restoring = False
            self.job.release()
            self.sync.start()

    def stop(self):
        """Shut down within sum(SHUTDOWN_S) seconds: a running round stops at its next step, then the
        final push. Safe to call twice (a signal, then atexit)."""
        if getattr(self, "_stopped", False):
            return
        self._stopped = True
        self.job.stop(timeout=SHUTDOWN_S[0])
        if self.sync is not None:
            self.sync.stop(timeout=SHUTDOWN_S[1])

    def _changed(self):
        if self.sync is not None:
            self.sync.changed()

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

    def flag(self, canvas, digit, who):
        """Store one flagged example; the receipt says whether it fooled the model."""
        who = visitor(who)
        digit = check_digit(digit)
        try:
            x = preprocess.to_mnist(canvas)
        except preprocess.CanvasError as e:
            raise StudioError(f"Nothing stored: {e}.") from None
        self._admit_flag(who)
        name, p = self.predictor.probs(x)
        prediction = int(p.argmax())
        try:
            id_ = self.store.append(x, digit, canvas=keepable(preprocess.pick(canvas)), prediction=prediction,
                                    confidences=[float(v) for v in p], round=round_number(name), session=who.id)
        except StoreError as e:
            with self._lock:
                self._stored -= 1
            raise StudioError(str(e)) from None
        self.attempts.close(who.id)
        self._changed()
        if not self.cfg.verified_only:
            self.job.notify()
        return {"id": id_, "saved": True, "label": digit, "prediction": prediction, "fooled": prediction != digit,
                "round": name, "message": self._receipt(name, digit, prediction, p[prediction])}

    def _admit_flag(self, who):
        """Refuse a flag over the limits (before anything is written), else reserve its place in
        the store's cap. Only flags that would be stored count against the limits."""
        wait = self.flag_limit.take(who.id)
        if wait:
            raise StudioError(f"Nothing stored: too many flags from this session (at most {self.flag_limit.n} "
                              f"a minute). Try again in {math.ceil(wait)} s.")
        if who.anonymous and self.anonymous_budget.take("anonymous"):
            raise StudioError("Nothing stored: anonymous visitors have used this hour's flags: log in to keep "
                              "flagging.")
        with self._lock:
            if self._stored >= self.settings.max_flags:
                raise StudioError(f"Nothing stored: the collection is full ({self.settings.max_flags} examples); "
                                  "the Space's owner has been asked to make room.")
            self._stored += 1

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

    def next_to_verify(self, who):
        """Someone else's example this visitor has not judged yet and nobody has decided, fewest
        votes first; None if none."""
        e = self.store.next_to_judge(visitor(who).id, self.cfg.votes)
        return None if e is None else {"id": e.id, "label": e.label, "canvas": str(e.canvas_path)}

    def verify(self, id_, agree, who, digit=None):
        """One vote per visitor and example (a later one replaces theirs), never on one's own; a
        disagreeing voter may say which digit it is, and `votes` such corrections relabel it. An
        admin's vote decides alone (Dynabench's validation)."""
        who = visitor(who)
        if self.settings.vote_login and who.anonymous:
            raise StudioError("Log in with Hugging Face to vote.")
        example = self._example(id_)
        if example.session == who.id:
            raise StudioError("You cannot verify your own example (you may retract it).")
        if not isinstance(agree, bool):
            raise StudioError(f"agree must be true or false, got {agree!r}.")
        if digit is not None and (agree or isinstance(digit, bool) or digit not in range(10)):
            raise StudioError("The right digit (0-9) goes only with a 'no' vote.")
        self._vote(example, who, agree, digit)
        example = self.store.find(id_)
        return {"id": id_, "agree": example.agree, "disagree": example.disagree,
                "verified": example.verified(self.cfg.votes), "corrected": example.corrected(self.cfg.votes),
                "decided": example.decided(self.cfg.votes)}

    def retract(self, id_, who):
        """The flagger takes their own example back: it trains nothing and is asked of nobody."""
        who = visitor(who)
        example = self._example(id_)
        if example.session != who.id:
            raise StudioError("Only the person who flagged an example may retract it.")
        self._vote(example, who, False, None)
        return {"id": id_, "retracted": True}

    def _example(self, id_):
        example = self.store.find(id_) if isinstance(id_, str) else None
        if example is None:
            raise StudioError(f"No flagged example with id {str(id_)[:80]!r}.")
        return example

    def _usable(self, example):
        return bool(eligible([example], self.cfg))

    def _vote(self, example, who, agree, digit):
        try:
            self.store.validate(example.id, who.id, agree, digit=digit, admin=self.is_admin(who))
        except (StoreError, ValueError) as e:
            raise StudioError(str(e)) from None
        self._changed()
        if self.cfg.verified_only and not self._usable(example) and self._usable(self.store.find(example.id)):
            self.job.notify()  # it just became something a round may learn from

    # --- rounds ---

    def is_admin(self, who):
        who = visitor(who)
        return who.username is not None and who.username in self.settings.admins

    def _require_admin(self, who, what):
        # checked here, in the handler's path, so it holds however the event is called (API name,
        # queue index, a hidden button): hiding a control is not a permission check
        if not self.is_admin(who):
            raise StudioError(f"Only an admin may {what} (log in with a Hugging Face account named in DADC_ADMINS).")

    def rollback(self, name, who=None):
        self._require_admin(who, "roll back the served round")
        if self.job.running:
            raise StudioError("A round is training: roll back when it has finished.")
        try:
            self.registry.rollback(name, why="asked on the dashboard or API")  # checks that it loads
            self.predictor.swap(name)
            self._changed()  # CURRENT and the history go to the Hub
        except (ValueError, CheckpointError) as e:
            raise StudioError(str(e)) from None
        return {"serving": name}

    def set_nickname(self, name, who):
        """Opt in to the leaderboard under `name` (empty: opt out)."""
        return {"nickname": self.nicknames.set(visitor(who).id, name)}

    def retrain_now(self, who=None):
        self._require_admin(who, "start a retraining round")
        return "Retraining started." if self.job.run_now() else "A round is already training."

    # --- dashboard ---

    def dashboard(self, who=None):
        """The dashboard's numbers (dashboard.py); repo ids and error texts only for admins."""
        return dashboard.numbers(self, self.is_admin(who))


class Attempts:
    """Attempts per round and per visitor, for the model error rate: one per drawing a person got a
    prediction for (not one per stroke of live prediction). Kept in memory, saved to DADC_HOME every
    few seconds. At most MAX_VISITORS visitors are counted (bounded memory; later ones are not)."""

    def __init__(self, path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._open = {}
        self._saved = 0.0
        try:
            saved = json.loads(self.path.read_text())
            saved = saved if "rounds" in saved else {"rounds": saved}  # the earlier format: rounds only
            self._counts = Counter({int(k): int(v) for k, v in saved["rounds"].items()})
            self._visitors = Counter({str(k): int(v) for k, v in saved.get("visitors", {}).items()})
        except (OSError, ValueError, AttributeError, TypeError):
            self._counts, self._visitors = Counter(), Counter()

    def open(self, session, round_):
        with self._lock:
            if session not in self._open:
                if len(self._open) >= MAX_SESSIONS:
                    self._open.pop(next(iter(self._open)))
                self._open[session] = round_
                self._counts[round_] += 1
                if session in self._visitors or len(self._visitors) < MAX_VISITORS:
                    self._visitors[session] += 1
        if time.monotonic() - self._saved > 5:
            self.save()

    def close(self, session):
        with self._lock:
            self._open.pop(session, None)

    def counts(self):
        with self._lock:
            return dict(self._counts)

    def by_visitor(self):
        with self._lock:
            return dict(self._visitors)

    def save(self):
        with self._lock:
            text = json.dumps({"rounds": {str(k): v for k, v in self._counts.items()}, "visitors": self._visitors})
            self._saved = time.monotonic()
        try:
            files.write_atomic(self.path, text)
        except OSError:
            pass  # a counter, not data: never fail a request for it


class Nicknames:
    """The names visitors chose for the leaderboard (opt-in: an anonymous visitor is never shown
    without one). {visitor id: name} in DADC_HOME/nicknames.json."""

    NAME = re.compile(r"[\w .\-]{1,24}")

    def __init__(self, path):
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self._names = {str(k): str(v) for k, v in json.loads(self.path.read_text()).items()}
        except (OSError, ValueError, AttributeError):
            self._names = {}

    def set(self, who, name):
        """Show `who` as `name` (stripped; empty: not shown any more)."""
        name = str(name or "").strip()
        if name and not self.NAME.fullmatch(name):
            raise StudioError("A nickname is 1-24 letters, digits, spaces, dots, dashes or underscores.")
        with self._lock:
            if name:
                if who not in self._names and len(self._names) >= MAX_VISITORS:
                    raise StudioError("The leaderboard is full.")
                self._names[who] = name
            else:
                self._names.pop(who, None)
            files.write_atomic(self.path, json.dumps(self._names))
        return name or None

    def all(self):
        with self._lock:
            return dict(self._names)


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
