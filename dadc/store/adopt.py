"""Adopting replicas restored from the Hub: their checked rows written into the store, images first.
(Module functions, not FlagStore methods: the class stays the store itself.)"""
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .. import files
from .layout import REPLICA_NAME, ROWS, VOTES


@dataclass(frozen=True)
class Filled:
    """What fill_replica adopted from the folders downloaded for one restore."""
    added: int = 0                                # flagged examples written
    votes: int = 0                                # votes written
    skipped: dict = field(default_factory=dict)   # reason -> rows (flags and votes) left out

    @property
    def skipped_rows(self):
        return sum(self.skipped.values())


def fill_replica(store, *srcs, extend=False):
    """Adopt replicas downloaded from the Hub that the store lacks. Each source has a `name` (the
    replica), `rows(known, skipped)` and `votes(known, skipped)` yielding checked, canonical rows
    (hub/rows.py: Shards for the parquet layout, Folder for the earlier one). Their rows are
    untrusted input: each one is checked there and only good ones are written, as canonical JSON of
    our own, after the images they name are in place. Every replica's rows come first, then the
    votes, kept only when they name a row the store then has (a vote lives in the voter's replica;
    the flag it judges may be in another). Bad rows are skipped, logged one line each (logger
    "dadc.restore") and counted by reason. Local rows are never merged with or overwritten.
    extend=True: the replicas this store has already (the trainer's working copy) get the sources'
    rows appended (ids it has are duplicates, skipped); this home's own replica is never touched."""
    skipped = Counter()
    filled = {src: _fill_rows(store, src, skipped, extend) for src in srcs}
    filled = {src: n for src, n in filled.items() if n is not None}
    known = _row_ids(store)
    votes = sum(_fill_votes(store, src, known, skipped, extend) for src in filled)
    return Filled(added=sum(filled.values()), votes=votes, skipped=dict(skipped))

def _fill_rows(store, src, skipped, extend=False):
    """Write the good rows of one replica and put their images in place first; the number written,
    or None if the store does not lack this replica (then nothing is touched)."""
    if extend and (src.name == store.replica or not REPLICA_NAME.fullmatch(src.name)):
        return None  # never into this home's own folder, never a path from outside
    if not (extend or store.hub.lacks_replica(src.name)):
        return None
    dest = store.root / "data" / src.name
    (dest / "images").mkdir(parents=True, exist_ok=True)
    with files.locked(dest / ROWS) as fd:
        if os.fstat(fd).st_size and not extend:  # another process on this home filled it meanwhile
            return None
        rows = []
        for row, images in src.rows(_row_ids(store), skipped):  # streamed: one shard batch in memory
            for name, data in images.items():
                _put_image(dest / name, data)
            rows.append(row)
        # the images are durable before a row names them: one sync for all of them (an fsync each
        # took 85 % of a restore: 3 ms a file here), then their names
        os.sync()
        files.fsync_dir(dest / "images")
        os.lseek(fd, 0, os.SEEK_END)  # extend: after the rows it has
        files.write_rows(fd, rows)  # a crash before this line leaves images no row names: harmless
    return len(rows)

def _put_image(dest, data):
    """A downloaded image file moved in, or PNG bytes from a shard written (synced by the caller)."""
    if isinstance(data, Path):
        os.replace(data, dest)
        return
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    try:
        files.write_all(fd, data)
    finally:
        os.close(fd)

def _fill_votes(store, src, known, skipped, extend=False):
    """Write the good votes of one filled replica, unless its votes file has some already."""
    votes = src.votes(known, skipped)
    with files.locked(store.root / "data" / src.name / VOTES) as fd:
        if os.fstat(fd).st_size and not extend:
            return 0
        os.lseek(fd, 0, os.SEEK_END)
        files.write_rows(fd, votes)
    return len(votes)

def _row_ids(store):
    """The ids of every row in the store, all replicas."""
    rows = (r for d in store.replica_dirs() for r in files.read_jsonl(d / ROWS))
    return {r["id"] for r in rows if isinstance(r.get("id"), str)}
