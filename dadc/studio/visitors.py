"""What the studio remembers of its visitors besides their flags: how many drawings each tried
per round (Attempts, for the model error rate) and the nickname each chose for the leaderboard
(Nicknames). Both are small JSON files in DADC_HOME with bounded memory."""
import json
import re
import threading
import time
from collections import Counter
from pathlib import Path

from .. import files
from .limits import RateLimit

MAX_SESSIONS = 10_000  # open drawings remembered (bounded memory)
MAX_VISITORS = 100_000  # visitors whose attempts are counted and who may choose a nickname


class Attempts:
    """Attempts per round and per visitor, for the model error rate: one per drawing a person got a
    prediction for (not one per stroke of live prediction). Kept in memory, saved to DADC_HOME every
    few seconds. At most MAX_VISITORS visitors are counted (bounded memory; later ones are not).

    The live prediction is public and unlimited, so a script could alternate a drawing with a blank
    canvas to add an attempt a request and talk the error rate down. So a drawing counts only when it
    differs from the visitor's last counted one (`drawing`: a digest of what the model read), and one
    visitor's attempts count at most PER_HOUR an hour (a person draws a digit in seconds)."""

    PER_HOUR = 300

    def __init__(self, path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._open = {}
        self._saved = 0.0
        self._last = {}  # visitor -> the digest of their last counted drawing (as _open, bounded)
        self._hourly = RateLimit(self.PER_HOUR, per=3600.0)
        try:
            saved = json.loads(self.path.read_text())
            saved = saved if "rounds" in saved else {"rounds": saved}  # the earlier format: rounds only
            self._counts = Counter({int(k): int(v) for k, v in saved["rounds"].items()})
            self._visitors = Counter({str(k): int(v) for k, v in saved.get("visitors", {}).items()})
        except (OSError, ValueError, AttributeError, TypeError):
            self._counts, self._visitors = Counter(), Counter()

    def open(self, visitor, round_, drawing=None):
        with self._lock:
            if visitor not in self._open:
                if len(self._open) >= MAX_SESSIONS:
                    self._open.pop(next(iter(self._open)))
                self._open[visitor] = round_
                if drawing is not None and self._last.get(visitor) == drawing or self._hourly.take(visitor):
                    return  # the same drawing again, or more than a person draws: not an attempt
                if visitor not in self._last and len(self._last) >= MAX_SESSIONS:
                    self._last.pop(next(iter(self._last)))
                self._last[visitor] = drawing
                self._counts[round_] += 1
                if visitor in self._visitors or len(self._visitors) < MAX_VISITORS:
                    self._visitors[visitor] += 1
        if time.monotonic() - self._saved > 5:
            self.save()

    def close(self, visitor):
        with self._lock:
            self._open.pop(visitor, None)

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
    without one). {visitor id: name} in DADC_HOME/nicknames.json.

    A name is ASCII letters, digits, spaces, dots, dashes and underscores: on a public board every
    name must read as what it is, and Unicode lets two names look the same (Cyrillic "а" for "a"),
    or a name look empty (U+3164, an invisible "letter"). No name may pass for another visitor or
    the studio: names taken by another visitor, usernames and admins (`reserved`, case-insensitive)
    and the studio's own words are refused. Changes are rate-limited per visitor, and an unchanged
    name writes nothing: each write is an atomic rewrite of the file (with its fsyncs)."""

    NAME = re.compile(r"[A-Za-z0-9 ._-]{1,24}")
    OWN_WORDS = ("admin", "administrator", "moderator", "root", "system", "dadc", "studio", "simulate",
                 "import", "anonymous", "anon")
    CHANGES = (3, 60.0)  # nickname changes per visitor per seconds

    def __init__(self, path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self.changes = RateLimit(*self.CHANGES)
        try:
            self._names = {str(k): str(v) for k, v in json.loads(self.path.read_text()).items()}
        except (OSError, ValueError, AttributeError):
            self._names = {}

    def set(self, who, name, reserved=()):
        """Show `who` as `name` (spaces collapsed; empty: not shown any more). `reserved`: names no
        visitor may take (usernames, admins). A refused name: ValueError, with a message for the visitor."""
        name = " ".join(str(name or "").split())
        self._check(who, name, reserved)
        with self._lock:
            if self._names.get(who) == (name or None):
                return name or None
            if self.changes.take(who):
                raise ValueError("Too many nickname changes: try again in a minute.")
            if name:
                if who not in self._names and len(self._names) >= MAX_VISITORS:
                    raise ValueError("The leaderboard is full.")
                self._names[who] = name
            else:
                self._names.pop(who, None)
            files.write_atomic(self.path, json.dumps(self._names))
        return name or None

    def _check(self, who, name, reserved):
        if not name:
            return
        if not self.NAME.fullmatch(name) or not any(c.isalnum() for c in name):
            raise ValueError("A nickname is 1-24 letters (A-Z), digits, spaces, dots, dashes or underscores.")
        key = name.casefold()
        if key in self.OWN_WORDS or key.startswith(("anon-", "import:", "hf:")):
            raise ValueError(f"{name!r} is a word the studio uses: pick another nickname.")
        taken = {str(r).casefold() for r in reserved if str(r).casefold() != str(who).casefold()}
        with self._lock:
            taken |= {v.casefold() for k, v in self._names.items() if k != who}
        if key in taken:
            raise ValueError(f"{name!r} is taken: pick another nickname.")

    def all(self):
        with self._lock:
            return dict(self._names)
