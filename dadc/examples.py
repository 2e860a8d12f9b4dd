"""The flagged example and the vote, and every rule about them, written once.

An Example is one drawing a person flagged with its true digit; a Vote is another person's
judgement of that label. The rules: when an example fooled the model, when it is verified or
disputed, which votes are believed, which examples a round may learn from, which are held out (never
trained on: the gate measures on them, and the export's validation split is the same set), how
rounds are named, and the two kinds of visitor id (a login's, and those the app derives).
"""
import hashlib
import numbers
import random
import re
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

ROUND_NAME = re.compile(r"round-(\d{3,})")


def round_name(number: int) -> str:
    return f"round-{number:03d}"


def round_number(name: str) -> int:
    m = ROUND_NAME.fullmatch(str(name))
    if not m:
        raise ValueError(f"{name!r} is not a round name (round-NNN)")
    return int(m.group(1))



def as_digit(value, name="digit"):
    """`value` as an int 0-9: the one rule for a digit from outside (an int, numpy's too; not a
    bool, float or string); ValueError naming `name` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= int(value) <= 9:
        raise ValueError(f"{name} must be an int 0-9, got {value!r}")
    return int(value)

@dataclass(frozen=True)
class Example:
    id: str
    label: int                 # the true digit, as the person said
    prediction: int            # what the serving model said, -1 if not recorded
    confidences: tuple         # its 10 probabilities (all 0 if not recorded)
    round: int                 # the number of the round that served it
    time: str                  # UTC, files.utc_now()
    visitor: str               # who flagged it (the row's `session`: see account_id) (an identity, never a secret)
    path: Path                 # the 28x28 PNG (white digit on black, as MNIST)
    canvas_path: Path          # the original canvas (the 28x28 itself when none was kept)
    agree: int = 0             # votes of others: one per voter, their latest
    disagree: int = 0
    corrections: tuple = ()    # the digits that disagreeing voters said it is (one per voter who gave one)
    admin: bool | None = None  # an admin's verdict (their latest vote), if one voted
    retracted: bool = False    # the flagger took it back

    @property
    def fooled(self) -> bool:
        """The model said another digit than the person's (not just unsure)."""
        return self.prediction not in (-1, self.label)

    def corrected(self, votes: int):
        """The digit that at least `votes` disagreeing voters gave, or None (the label stands)."""
        if self.corrections:
            digit, n = Counter(self.corrections).most_common(1)[0]
            if n >= votes:
                return digit
        return None

    @property
    def disputed(self) -> bool:
        return self.admin is False or (self.admin is None and self.disagree > self.agree)

    def verified(self, votes: int) -> bool:
        """An admin agreed, or `votes` others agreed and more agreed than disagreed."""
        if self.retracted or self.admin is not None:
            return bool(self.admin) and not self.retracted
        return self.agree >= votes and self.agree > self.disagree

    def decided(self, votes: int) -> bool:
        """No more votes are asked for: retracted, judged by an admin, or `votes` voters on one side."""
        return self.retracted or self.admin is not None or max(self.agree, self.disagree) >= votes

    @property
    def held_out(self) -> bool:
        return held_out(self.id)


@dataclass(frozen=True)
class Vote:
    id: str        # the example voted on
    visitor: str   # who voted (stored as the vote's `session`) (the flagger voting against their own example retracts it)
    agree: bool
    time: str
    digit: int | None = None  # with a disagreeing vote: the digit the voter says it is
    admin: bool = False       # marked as cast by an admin: decides alone while its voter is one (believed)


# --- who: the visitor ids in a row's or a vote's `session` -------------------------------------------

def derived(visitor_id: str) -> bool:
    """Whether a visitor id is one the app derives, not a login's: an anonymous visitor's (the HMAC
    of an address, "anon-…"), an import's ("import:<source>"), the simulation's ("simulate")."""
    text = str(visitor_id).lower()
    return text.startswith(("anon-", "import:")) or text == "simulate"


def account_id(username: str) -> str:
    """The visitor id (the stored `session`) of a Hugging Face login: the username itself, as stores
    have always kept it, unless it could pass for an id the app derives (derived(), any case) or
    holds a ":": then "hf:<username>". A login never takes another visitor's id (an account named
    like an anonymous visitor's public id is not that visitor)."""
    name = str(username)
    return f"hf:{name}" if derived(name) or ":" in name else name


def is_account(visitor_id: str) -> bool:
    """Whether a stored visitor id is a login's (the same person wherever the vote was cast), not an
    id one home derives (an anonymous visitor's HMAC is keyed per home: in another replica the same
    text is nobody in particular)."""
    return bool(visitor_id) and not derived(visitor_id)


def believed(voter, admin_mark, flagger, same_replica, admins) -> bool:
    """Whether a stored vote counts at all, as far as its replica and its voter allow (a replica
    restored from the Hub was written by whoever could write there). `admins`: the account ids of
    the admins now (DADC_ADMINS). The flagger's own vote (a "no" is a retraction; it never counts
    as a verdict, marked or not) is believed from the flag's own replica, or from a login. Anyone
    else's: an admin mark is believed only from an admin now, and a marked vote by anyone else (a
    forged shard, an admin since removed) counts for nothing."""
    if voter == flagger:
        return same_replica or is_account(voter)
    return not admin_mark or voter in admins


def held_out(example_id: str) -> bool:
    """About 1 in 10 examples never trains any round: the gate measures on them, and the export
    puts them in its validation split. Stable per id, so an example keeps its side as data grows."""
    return int(hashlib.sha256(example_id.encode()).hexdigest()[:8], 16) % 10 == 0


def eligible(examples, cfg):
    """Examples a round may learn from, with the label they are learnt with: not retracted; an
    example that `cfg.votes` voters corrected to one digit, with that digit (validated); else not
    disputed, and verified if the round uses verified examples only (cfg.verified_only)."""
    out = []
    for e in examples:
        if e.retracted or e.admin is False:
            continue
        digit = e.corrected(cfg.votes)
        if digit is not None and e.admin is None:
            out.append(replace(e, label=digit))
        elif not e.disputed and (e.verified(cfg.votes) or not cfg.verified_only):
            out.append(e)
    return out


def for_round(examples, since, cap, seed):
    """The human examples a round trains on, at most `cap`: every one flagged after `since` (the
    last round's time; UTC stamps sort as text), newest first, then a seeded random replay sample
    of the older ones, so a round's cost stays bounded as the store grows and old lessons are not
    forgotten."""
    new = sorted((e for e in examples if e.time > since), key=lambda e: e.time, reverse=True)[:cap]
    old = [e for e in examples if e.time <= since]
    return new + random.Random(seed).sample(old, min(len(old), cap - len(new)))


def sample(examples, cap, seed):
    """At most `cap` of the examples, a seeded random sample (the gate's human hold-out)."""
    return list(examples) if len(examples) <= cap else random.Random(seed).sample(list(examples), cap)
