"""The store's files as the Hub sync sees them: a consistent snapshot for a push, the record of
what was pushed, scratch space for downloads, which replicas it lacks. The store still owns the files."""
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .. import files
from .layout import PULLED, PUSHED, REPLICA_NAME, ROWS, VOTES


@dataclass(frozen=True)
class StoreFile:
    """One row file of this replica (flags or votes) as a push should read it: its first `size`
    bytes, measured under the appenders' lock, so only whole rows, each naming images in place."""
    path: Path
    size: int

    def rows(self, start=0):
        """(the rows from byte `start` up to `size`, the byte offset after the last whole line)."""
        return files.read_tail(self.path, start, self.size)  # a torn tail is not a row yet

    def image(self, name) -> bytes:
        """The PNG bytes of an image a row of this file names (images/<id>.png)."""
        return (self.path.parent / name).read_bytes()


class HubFiles:
    """This store's files as the Hub sync sees them: a consistent snapshot for a push, what was
    pushed, scratch space for downloads, which replicas it lacks. The store still owns the files."""

    def __init__(self, store):
        self.store, self.root = store, store.root

    @contextmanager
    def push_lock(self):
        """Held from snapshot to commit: two processes on one home then push in snapshot order."""
        with files.locked(self.root / ".push.lock"):
            yield

    def snapshot(self):
        """{ROWS: StoreFile, VOTES: StoreFile} of this replica, as a push should read them. Both are
        measured under the appenders' lock, so every row pushed names an image that is already in
        place (images are renamed before their row is appended)."""
        out = {}
        for name in (ROWS, VOTES):
            path = self.store.dir / name
            try:
                with files.locked(path, os.O_RDONLY, shared=True) as fd:
                    out[name] = StoreFile(path, os.fstat(fd).st_size)
            except FileNotFoundError:
                out[name] = StoreFile(path, 0)
        return out

    def row_counts(self, after=None):
        """{ROWS: n, VOTES: n}: rows of this replica's row files past byte `after[name]` (all rows
        by default); for 'pending' counts, reading only what was not pushed."""
        counts = {}
        for name in (ROWS, VOTES):
            try:
                with open(self.store.dir / name, "rb") as f:
                    f.seek((after or {}).get(name, 0))
                    counts[name] = f.read().count(b"\n")
            except FileNotFoundError:
                counts[name] = 0
        return counts

    def pushed(self, repo_id, name=PUSHED):
        """What earlier pushes of this replica to `repo_id` carried (flags/pushed.json), as
        hub/sync.py recorded it after each successful commit; {} if none (or the record is unreadable:
        then everything is pushed again, which the shard names make harmless). name=PULLED: what a
        trainer's pulls took (hub/mirror.py; unreadable: everything is pulled again, duplicates skipped)."""
        try:
            record = json.loads((self.root / name).read_bytes())
        except (FileNotFoundError, ValueError):
            return {}
        marks = record.get(repo_id) if isinstance(record, dict) else None
        return marks if isinstance(marks, dict) else {}

    def record_pushed(self, repo_id, marks, name=PUSHED):
        """Record (atomically) what the pushes to `repo_id` have carried so far; call after the
        commit succeeded, under push_lock. Other repos' records are kept. name=PULLED: the pulls'."""
        try:
            record = json.loads((self.root / name).read_bytes())
        except (FileNotFoundError, ValueError):
            record = {}
        record = {**(record if isinstance(record, dict) else {}), repo_id: marks}
        files.write_atomic(self.root / name, json.dumps(record, indent=1), self.root / "tmp")

    @contextmanager
    def scratch(self):
        """A fresh folder under flags/tmp (the same file system, so what is downloaded into it can
        be renamed into place), removed when the block ends."""
        path = Path(tempfile.mkdtemp(dir=self.root / "tmp", prefix="download-"))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def lacks_replica(self, name):
        """True if `name` is a plain replica name of which this store has neither rows nor votes."""
        folder = self.root / "data" / str(name)
        return bool(REPLICA_NAME.fullmatch(str(name))) and not any(
            (folder / f).is_file() and (folder / f).stat().st_size for f in (ROWS, VOTES))
