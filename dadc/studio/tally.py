"""What the Draw tab tells a visitor after a flag, besides the receipt: their own running count
(flags, and flags that fooled the model) and a hint of what still fools the serving round (the
digit with the highest fool rate among the latest flags on it).

Kept in memory and updated in O(1) per flag; no scan of the store per request. The flags already
on disk are counted once, by seed(): only rows stamped before this Tally was made, because every
flag this process stores after that is counted by add() (so a flag is never counted twice, even
when seed() runs after a background Hub restore while flags are coming in).
"""
import threading
from collections import deque

from .. import files
from ..examples import round_number

WINDOW = 200  # the latest flags on the serving round that the hint is drawn from


class Tally:
    def __init__(self, window=WINDOW):
        self.since = files.utc_now()  # rows stamped before this are seed()'s, the rest add()'s
        self.seeded = False
        self._lock = threading.Lock()
        self._visitors = {}  # visitor id -> [flags, fooled]; one entry per visitor with a stored flag
        self._round = None   # the round the window is about (the round the latest flag was judged by)
        self._window = deque(maxlen=window)  # (label, fooled) of its latest flags
        self._by_digit = [[0, 0] for _ in range(10)]  # [flags, fooled] per true digit in the window

    def seed(self, examples, serving_round):
        """Count the stored flags (store.examples()) once: per visitor, and the serving round's latest
        ones into the window (ahead of any flag add() already put there)."""
        old = sorted((e for e in examples if e.time < self.since), key=lambda e: e.time)
        with self._lock:
            if self.seeded:
                return
            for e in old:
                v = self._visitors.setdefault(e.visitor, [0, 0])
                v[0] += 1
                v[1] += e.fooled
            if self._round in (None, serving_round):
                live = list(self._window)
                self._round = serving_round
                self._window.clear()
                self._by_digit = [[0, 0] for _ in range(10)]
                for label, fooled in [(e.label, e.fooled) for e in old if e.round == serving_round] + live:
                    self._push(label, fooled)
            self.seeded = True

    def add(self, visitor_id, receipt):
        """One stored flag (a Studio.flag receipt): the visitor's count and the window."""
        label, fooled = receipt["label"], bool(receipt["fooled"])
        round_ = round_number(receipt["round"])
        with self._lock:
            v = self._visitors.setdefault(visitor_id, [0, 0])
            v[0] += 1
            v[1] += fooled
            if round_ != self._round:  # a new round serves: what fooled the last one says nothing
                self._round = round_
                self._window.clear()
                self._by_digit = [[0, 0] for _ in range(10)]
            self._push(label, fooled)

    def _push(self, label, fooled):
        if len(self._window) == self._window.maxlen:
            old_label, old_fooled = self._window[0]
            self._by_digit[old_label][0] -= 1
            self._by_digit[old_label][1] -= old_fooled
        self._window.append((label, fooled))
        self._by_digit[label][0] += 1
        self._by_digit[label][1] += fooled

    def visitor(self, visitor_id):
        """(flags, fooled) of this visitor."""
        with self._lock:
            return tuple(self._visitors.get(visitor_id, (0, 0)))

    def hint(self):
        """(round, digit, fooled, flags): the digit that fooled the window's round most often of late
        (highest rate, then most fools), or (round, None, 0, n) when none of its last n flags fooled it."""
        with self._lock:
            fooling = [(f / n, f, n, d) for d, (n, f) in enumerate(self._by_digit) if f]
            if not fooling:
                return self._round, None, 0, len(self._window)
            _, f, n, d = max(fooling)
            return self._round, d, f, n
