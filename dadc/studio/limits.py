"""What a flood of flags may cost us: at most `flag_limit` flags a minute from one identity, at
most `flag_budget` an hour from all anonymous visitors together, of which one anonymous visitor
may take ANON_SHARE, and at most `max_flags` in the store, of which anonymous flags may fill all
but LOGGED_IN_ROOM. So one client (one address) cannot lock every other anonymous visitor out for
the hour, nor fill the store for logged-in visitors. Checked before anything is written; only flags
that would be stored count."""
import math
import threading
import time
from collections import deque

MAX_KEYS = 10_000  # rate-limit windows remembered (bounded memory)
ANON_SHARE = 0.1       # of the anonymous hourly budget, what one anonymous visitor may use (at least 1)
LOGGED_IN_ROOM = 0.2   # of the store's cap, what only logged-in visitors may fill


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
            if len(self._times) > MAX_KEYS:  # bounded memory: forget the keys that are quiet now
                self._times = {k: t for k, t in self._times.items() if now - t[-1] < self.per}
            return 0.0


class FlagLimits:
    def __init__(self, settings, stored, anonymous=0):
        """stored: the examples already in the store (the cap counts from there); anonymous: how
        many of them anonymous visitors flagged."""
        self.per_visitor = RateLimit(settings.flag_limit, per=60.0)
        self.anonymous = RateLimit(settings.flag_budget, per=3600.0)
        self.each_anonymous = RateLimit(max(1, int(settings.flag_budget * ANON_SHARE)), per=3600.0)
        self.max_flags = settings.max_flags
        self.max_anonymous = settings.max_flags - int(settings.max_flags * LOGGED_IN_ROOM)
        self.stored, self.stored_anonymous = stored, anonymous
        self._lock = threading.Lock()

    def refusal(self, who):
        """Why this visitor's flag is refused now (a message for them), else None, having reserved
        its place under the cap (give it back with `unreserve` if the flag is not stored after all)."""
        wait = self.per_visitor.take(who.id)
        if wait:
            return (f"Nothing stored: too many flags from this session (at most {self.per_visitor.n} a minute). "
                    f"Try again in {math.ceil(wait)} s.")
        if who.anonymous and self.each_anonymous.take(who.id):
            return ("Nothing stored: you have used your share of this hour's anonymous flags: "
                    "log in to keep flagging, or come back within the hour.")
        if who.anonymous and self.anonymous.take("anonymous"):
            return "Nothing stored: anonymous visitors have used this hour's flags: log in to keep flagging."
        with self._lock:
            if self.stored >= self.max_flags:
                return (f"Nothing stored: the collection is full ({self.max_flags} examples); "
                        "the Space's owner has been asked to make room.")
            if who.anonymous and self.stored_anonymous >= self.max_anonymous:
                return "Nothing stored: the room for anonymous flags is full: log in to keep flagging."
            self.stored += 1
            self.stored_anonymous += who.anonymous
        return None

    def unreserve(self, who):
        with self._lock:
            self.stored -= 1
            self.stored_anonymous -= who.anonymous

    def recount(self, stored, anonymous):
        """After a restore brought examples in."""
        with self._lock:
            self.stored, self.stored_anonymous = stored, anonymous
