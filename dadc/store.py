"""FlagStore: the local, durable, append-only store of flagged human examples. It alone opens the
files under DADC_HOME/flags; others use its public methods (the Hub sync included).

Local disk is the source of truth; the Hub is a copy, in a layout of its own (parquet shards with
the images inside: hub_layout.py). The local folder loads with `datasets` too (the imagefolder
convention: a metadata.jsonl whose rows name their image under `file_name` and the true digit
under `label`):

    flags/README.md                          dataset card of the local folder (tells `datasets` which files are data)
    flags/replica                            this DADC_HOME's replica id (Hub paths data/<replica>/, votes/<replica>/)
    flags/data/<replica>/metadata.jsonl      one JSON row per flagged example, append-only
    flags/data/<replica>/votes.jsonl         validations ("I agree this is a 7"), append-only
    flags/data/<replica>/images/<id>.png     the 28x28 image (white digit on black, as MNIST)
    flags/data/<replica>/images/<id>-canvas.png   the original canvas
    flags/pushed.json                        what the pushes to each Hub repo carried (byte offsets, rows)
    flags/tmp/  flags/.lock  flags/.push.lock     never pushed

Concurrency: rows are appended with files.append_line (flock, torn-tail repair, fsync), so many
threads and several processes may share one home. Images are written to tmp/ and renamed into
place, then they and their folder are fsynced (together: files.fsync_all) *before* the row naming
them is appended, so a durable row never points at a missing or partial file; a crash before the
row leaves an unnamed image (perhaps partial), which nothing reads (rows come from metadata).
"""
import errno
import io
import json
import os
import re
import random
import secrets
import shutil
import threading
import tempfile
import uuid
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from . import files, hub_rows
from .hub_rows import MAX_SESSION, ROWS, VOTES, Filled
from .examples import Example, Vote

# Read by `datasets` in the local folder (the Hub has its own card, hub_layout.CARD): only images and
# metadata.jsonl are data files, so the votes.jsonl files never make `datasets` pick the json
# builder instead of imagefolder.
CARD = """---
configs:
- config_name: default
  data_files:
  - split: train
    path:
    - "data/*/metadata.jsonl"
    - "data/*/images/*.png"
license: cc-by-4.0
task_categories:
- image-classification
---
# DADC studio: human-flagged handwritten digits

Digits drawn by people that the current MNIST model got wrong, with the true digit they gave.
Collected by dynamic adversarial data collection (DADC). One folder per app replica under `data/`.

Columns: `image` (28x28, white digit on black, as MNIST), `canvas` (the original drawing),
`label` (true digit 0-9), `prediction` (the model's digit, -1 if not recorded), `confidences`
(10 probabilities, all 0 if not recorded), `round` (model round that was fooled), `time` (UTC),
`session`, `id`. `data/*/votes.jsonl` holds validations by other people: `{"id", "session", "agree", "time"}`.
"""

PUSHED = "pushed.json"  # what the pushes to each Hub repo carried (hubsync), under flags/
FIELDS = ("file_name", "canvas_file_name", "label", "prediction", "confidences", "round", "time", "session", "id")
REPLICA_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # a replica folder name from outside is used only if plain



class StoreError(RuntimeError):
    """The store cannot write (read-only or full DADC_HOME...). Nothing half-written was kept."""


@dataclass(frozen=True)
class StoreFile:
    """One row file of this replica (flags or votes) as a push should read it: its first `size`
    bytes, measured under the appenders' lock, so only whole rows, each naming images in place."""
    path: Path
    size: int

    def rows(self, start=0):
        """(the rows from byte `start` up to `size`, the byte offset after the last whole line)."""
        try:
            with open(self.path, "rb") as f:
                f.seek(start)
                data = f.read(max(0, self.size - start))
        except FileNotFoundError:
            return [], start
        end = data.rfind(b"\n") + 1  # a torn tail (cut at the next append) is not a row yet
        rows = []
        for line in data[:end].split(b"\n"):
            try:
                row = json.loads(line) if line.strip() else None
            except ValueError:
                continue
            if isinstance(row, dict):
                rows.append(row)
        return rows, start + end

    def image(self, name) -> bytes:
        """The PNG bytes of an image a row of this file names (images/<id>.png)."""
        return (self.path.parent / name).read_bytes()


def _png(img):
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)  # 2-3x faster than the default, about 1.5x larger
    return buf.getvalue()


def _as_image28(image):
    if isinstance(image, np.ndarray):
        arr = image
        if arr.dtype != np.uint8:  # floats in [0,1] as the model sees them
            arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
        image = Image.fromarray(arr.squeeze())
    if not isinstance(image, Image.Image):
        raise ValueError(f"image must be a PIL image or a numpy array, got {type(image).__name__}")
    if image.size != (28, 28):
        raise ValueError(f"image must be 28x28, got {image.size[0]}x{image.size[1]}")
    return image.convert("L")


def _as_label(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an int 0-9, got {value!r}")
    if not 0 <= int(value) <= 9:
        raise ValueError(f"{name} must be 0-9, got {value}")
    return int(value)


def _as_confidences(conf):
    # always 10 floats, so every metadata file has the same schema (datasets refuses mixed ones)
    if conf is None:
        return [0.0] * 10
    if isinstance(conf, dict):
        out = [0.0] * 10
        for k, v in conf.items():
            out[int(k)] = float(v)
        return [round(v, 6) for v in out]
    conf = [float(v) for v in conf]
    if len(conf) != 10:
        raise ValueError(f"confidences must have 10 values, got {len(conf)}")
    return [round(v, 6) for v in conf]


class _Index:
    """The store's rows and votes in memory, kept up with the files by reading what was appended
    since the last look (their tails): a request costs a stat per file, not a read of the store.
    rows: id -> (row, folder), the first row of an id wins; votes: id -> {voter: agree}, the
    latest vote of each voter; voted: voter -> ids; by_votes[k]: the ids with k voters."""

    PROBES = 64  # random looks into a large group of examples with equal votes before scanning it

    def __init__(self):
        self.rows, self.order, self.votes, self.voted = {}, [], {}, {}
        self.by_votes = {0: _Bag()}
        self.offset = {}  # file -> bytes read (up to the last whole line)
        self.pending_votes = []  # votes read before the row they name (another replica's order)

    def follow(self, folders):
        """Read what was appended to each folder's files; False if a file shrank."""
        for d in folders:
            for name, apply in ((ROWS, self._add_row), (VOTES, self._add_vote)):
                path = d / name
                try:
                    size = path.stat().st_size
                except FileNotFoundError:
                    continue
                seen = self.offset.get(path, 0)
                if size < seen:
                    return False
                if size == seen:
                    continue
                with open(path, "rb") as f:
                    f.seek(seen)
                    data = f.read(size - seen)
                end = data.rfind(b"\n") + 1  # a line still being written is read next time
                self.offset[path] = seen + end
                for line in data[:end].split(b"\n"):
                    try:
                        row = json.loads(line) if line.strip() else None
                    except ValueError:
                        continue
                    if isinstance(row, dict):
                        apply(row, d)
        pending, self.pending_votes = self.pending_votes, []
        for row in pending:
            self._add_vote(row, None)
        return True

    def _add_row(self, row, folder):
        if all(k in row for k in FIELDS) and row["id"] not in self.rows:
            self.rows[row["id"]] = (row, folder)
            self.order.append(row["id"])
            self.votes[row["id"]] = {}
            self.by_votes[0].add(row["id"])

    def _add_vote(self, row, folder):
        id_, who = row.get("id"), str(row.get("session", ""))
        if id_ not in self.rows:
            if isinstance(id_, str) and folder is not None:
                self.pending_votes.append(row)
            return
        votes = self.votes[id_]
        if who not in votes:  # a new voter: the example moves up a group
            self.by_votes[len(votes)].discard(id_)
            self.by_votes.setdefault(len(votes) + 1, _Bag()).add(id_)
            self.voted.setdefault(who, set()).add(id_)
        digit = row.get("digit")
        votes[who] = (bool(row.get("agree")), digit if isinstance(digit, int) and 0 <= digit <= 9 else None,
                      row.get("admin") is True)

    def example(self, id_):
        row, d = self.rows[id_]
        others = {who: v for who, v in self.votes[id_].items() if who != row["session"]}
        own = self.votes[id_].get(row["session"])
        agree = sum(a for a, _, _ in others.values())
        admin = [a for a, _, is_admin in others.values() if is_admin]
        return Example(id=id_, label=row["label"], prediction=row["prediction"], confidences=tuple(row["confidences"]),
                       round=row["round"], time=row["time"], session=row["session"], path=d / row["file_name"],
                       canvas_path=d / row["canvas_file_name"], agree=agree, disagree=len(others) - agree,
                       corrections=tuple(g for a, g, _ in others.values() if not a and g is not None),
                       admin=admin[-1] if admin else None, retracted=own is not None and not own[0])

    def next_to_judge(self, who, rng, votes):
        voted = self.voted.get(who, ())

        def fits(i):
            return i not in voted and self.rows[i][0]["session"] != who and not self.example(i).decided(votes)
        for k in sorted(self.by_votes):
            bag = self.by_votes[k]
            for _ in range(self.PROBES if len(bag) > self.PROBES else 0):
                i = bag.choice(rng)
                if fits(i):
                    return i
            fit = [i for i in bag.items if fits(i)]  # small, or the probes found nothing: look at all
            if fit:
                return rng.choice(fit)
        return None


class _Bag:
    """A set with O(1) add, discard and random choice."""

    def __init__(self):
        self.items, self.where = [], {}

    def __len__(self):
        return len(self.items)

    def add(self, x):
        if x not in self.where:
            self.where[x] = len(self.items)
            self.items.append(x)

    def discard(self, x):
        i = self.where.pop(x, None)
        if i is not None:
            last = self.items.pop()
            if i < len(self.items):
                self.items[i], self.where[last] = last, i

    def choice(self, rng):
        return self.items[rng.randrange(len(self.items))]


def _why(root, e):
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"DADC_HOME is read-only: cannot save the flag under {root} ({e.strerror})"
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return f"DADC_HOME is full: cannot save the flag under {root} ({e.strerror})"
    return f"cannot save the flag under {root}: {e.strerror or e}"


class FlagStore:
    """Append-only store of flagged examples under DADC_HOME/flags. Safe for many threads and
    several processes on one DADC_HOME. readonly=True never writes (e.g. export from a read-only home)."""

    def __init__(self, home, readonly=False):
        self.home = Path(home)
        self.root = self.home / "flags"
        self.readonly = readonly
        self.replica = None
        self._index, self._index_lock = None, threading.Lock()
        self.hub = HubFiles(self)  # what the Hub sync needs of this store
        if readonly:
            return
        try:
            for d in (self.root / "data", self.root / "tmp"):
                d.mkdir(parents=True, exist_ok=True)
            with files.locked(self.root / ".lock"):
                self.replica = self._replica_id()
                if not (self.root / "README.md").exists():
                    files.write_atomic(self.root / "README.md", CARD, self.root / "tmp")
                self.dir.joinpath("images").mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot write the flag store under {self.root}: {e.strerror or e}") from None
        for name in (ROWS, VOTES):  # a writer killed mid-line left a torn tail: cut it
            files.repair(self.dir / name)

    @property
    def dir(self):
        """This replica's folder (the only one this DADC_HOME appends to)."""
        return self.root / "data" / self.replica

    def _replica_id(self):
        # one id per DADC_HOME, so two processes on one home share a folder and replicas on other
        # machines (other homes) get distinct Hub paths. Hex only: no split keyword ("test", "val"...)
        path = self.root / "replica"
        if path.exists():
            return path.read_text().strip()
        rid = secrets.token_hex(6)
        files.write_atomic(path, rid, self.root / "tmp")
        return rid

    # --- writing ------------------------------------------------------------------------------

    def append(self, image28, label, *, canvas=None, prediction=None, confidences=None, round=0, session=""):
        """Store one flagged example durably; returns its id once it is on disk (fsynced)."""
        if self.readonly:
            raise StoreError("the flag store was opened read-only")
        image28 = _as_image28(image28)
        label = _as_label(label, "label")
        prediction = -1 if prediction is None else _as_label(prediction, "prediction")
        confidences = _as_confidences(confidences)
        if isinstance(round, bool) or not isinstance(round, (int, np.integer)) or round < 0:
            raise ValueError(f"round must be an int >= 0, got {round!r}")
        if canvas is not None and not isinstance(canvas, Image.Image):
            raise ValueError(f"canvas must be a PIL image, got {type(canvas).__name__}")
        id_ = uuid.uuid4().hex
        file_name = f"images/{id_}.png"
        # with no canvas given, the 28x28 image is the original input: point at it, so the
        # canvas column always holds an image (one schema for every metadata file)
        canvas_name = f"images/{id_}-canvas.png" if canvas is not None else file_name
        row = {"file_name": file_name, "canvas_file_name": canvas_name, "label": label, "prediction": prediction,
               "confidences": confidences, "round": int(round), "time": files.utc_now(),
               "session": str(session)[:MAX_SESSION], "id": id_}
        written, fds = [], []
        try:
            for name, img in ((file_name, image28), (canvas_name, canvas)):
                if img is None or name in written:
                    continue
                fds.append(files.place(self.dir / name, _png(img), self.root / "tmp"))
                written.append(name)
            fds.append(os.open(self.dir / "images", os.O_RDONLY))
            # the images and their names are durable before a row names them: their fsyncs and the
            # folder's run together (one journal commit, not three), then the row's own
            files.fsync_all(fds)
            files.append_line(self.dir / ROWS, row)
        except OSError as e:
            for name in written:  # unnamed images are harmless, but do not leave litter
                try:
                    os.unlink(self.dir / name)
                except OSError:
                    pass
            raise StoreError(_why(self.root, e)) from None
        finally:
            for fd in fds:
                os.close(fd)
        return id_

    def validate(self, id, session, agree, digit=None, admin=False):
        """Record that `session` agrees (or not) with the label of flag `id`, and with a disagreeing
        vote the digit it is (optional); `admin`: cast by an admin. A vote by the flagger against
        their own example retracts it. Appended, never rewritten: a voter's latest vote counts."""
        if self.readonly:
            raise StoreError("the flag store was opened read-only")
        if not isinstance(agree, bool):
            raise ValueError(f"agree must be a bool, got {agree!r}")
        if digit is not None and (agree or _as_label(digit, "digit") is None):
            raise ValueError("a digit goes only with a disagreeing vote")
        if self.find(id) is None:
            raise ValueError(f"no flagged example with id {str(id)[:80]!r}")
        row = {"id": id, "session": str(session)[:MAX_SESSION], "agree": agree, "time": files.utc_now(),
               **({"digit": int(digit)} if digit is not None else {}), **({"admin": True} if admin else {})}
        try:
            files.append_line(self.dir / VOTES, row)
        except OSError as e:
            raise StoreError(_why(self.root, e)) from None

    # --- reading ------------------------------------------------------------------------------

    def replica_dirs(self):
        """Every replica's folder: this home's and the ones restored from the Hub."""
        data = self.root / "data"
        return sorted(p for p in data.iterdir() if p.is_dir()) if data.is_dir() else []

    def validations(self):
        """All votes of all replicas, oldest first per replica."""
        return [Vote(str(v["id"]), str(v.get("session", "")), bool(v.get("agree")), str(v.get("time", "")),
                     v.get("digit") if v.get("digit") in range(10) else None, v.get("admin") is True)
                for d in self.replica_dirs() for v in files.read_jsonl(d / VOTES) if "id" in v]

    def examples(self):
        """All flagged examples, with their vote counts (one vote per voter: their latest)."""
        with self._index_lock:
            index = self._fresh_index()
            return [index.example(i) for i in index.order]

    def find(self, id_):
        """The example with this id, or None. O(1)."""
        with self._index_lock:
            index = self._fresh_index()
            return index.example(id_) if id_ in index.rows else None

    def count(self):
        with self._index_lock:
            return len(self._fresh_index().rows)

    def next_to_judge(self, session, votes, rng=random):
        """An example `session` neither flagged nor voted on and not yet decided (Example.decided
        with `votes`), among those with the fewest votes (a random one of them), or None. Cost
        bounded by PROBES per vote count, not by the store."""
        with self._index_lock:
            index = self._fresh_index()
            id_ = index.next_to_judge(session, rng, votes)
            return None if id_ is None else index.example(id_)

    def version(self):
        """Changes whenever a row or a vote is added (bytes of rows and votes read so far)."""
        with self._index_lock:
            return sum(self._fresh_index().offset.values())

    def _fresh_index(self):
        """The in-memory index (rows, votes), caught up with the files (lock held): rows appended
        since, by this process or another, are read from where it stopped, never the whole store."""
        if self._index is None:
            self._index = _Index()
        if not self._index.follow(self.replica_dirs()):
            self._index = _Index()  # a file shrank (a torn tail was cut): read everything again
            self._index.follow(self.replica_dirs())
        return self._index

    def image(self, example):
        with Image.open(example.path) as img:
            return img.convert("L").copy()

    def png(self, example, canvas=False) -> bytes:
        """The stored PNG bytes of an example's 28x28 (or of its canvas)."""
        return Path(example.canvas_path if canvas else example.path).read_bytes()

    def tensors(self, examples):
        """x float [N,1,28,28] in [0,1] (white on black) and y long [N], for training and the gate."""
        import torch  # only training needs torch; the store and the app's flag path do not

        if not examples:
            return torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long)
        x = np.stack([np.asarray(self.image(e), dtype=np.uint8) for e in examples])
        return torch.from_numpy(x).float().div_(255).unsqueeze(1), torch.tensor([e.label for e in examples])

    # --- what the Hub sync needs --------------------------------------------------------------


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

    def pushed(self, repo_id):
        """What earlier pushes of this replica to `repo_id` carried (flags/pushed.json), as
        hubsync recorded it after each successful commit; {} if none (or the record is unreadable:
        then everything is pushed again, which the shard names make harmless)."""
        try:
            record = json.loads((self.root / PUSHED).read_bytes())
        except (FileNotFoundError, ValueError):
            return {}
        marks = record.get(repo_id) if isinstance(record, dict) else None
        return marks if isinstance(marks, dict) else {}

    def record_pushed(self, repo_id, marks):
        """Record (atomically) what the pushes to `repo_id` have carried so far; call after the
        commit succeeded, under push_lock. Other repos' records are kept."""
        try:
            record = json.loads((self.root / PUSHED).read_bytes())
        except (FileNotFoundError, ValueError):
            record = {}
        record = {**(record if isinstance(record, dict) else {}), repo_id: marks}
        files.write_atomic(self.root / PUSHED, json.dumps(record, indent=1), self.root / "tmp")

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


# --- adopting replicas restored from the Hub (module functions: the class stays the store itself) ---

def fill_replica(store, *srcs):
    """Adopt replicas downloaded from the Hub that the store lacks: hub_rows.Shards (the parquet
    layout) or hub_rows.Folder (the earlier one; a path is taken as one). Their rows are untrusted
    input: each one is checked (hub_rows.py) and only good ones are written, as canonical JSON of
    our own, after the images they name are in place. Every replica's rows come first, then the
    votes, kept only when they name a row the store then has (a vote lives in the voter's replica;
    the flag it judges may be in another). Bad rows are skipped, logged one line each (logger
    "dadc.restore") and counted by reason. Local rows are never merged with or overwritten."""
    skipped = Counter()
    srcs = [src if hasattr(src, "rows") else hub_rows.Folder(src) for src in srcs]
    filled = {src: _fill_rows(store, src, skipped) for src in srcs}
    filled = {src: n for src, n in filled.items() if n is not None}
    known = _row_ids(store)
    votes = sum(_fill_votes(store, src, known, skipped) for src in filled)
    return Filled(added=sum(filled.values()), votes=votes, skipped=dict(skipped))

def _fill_rows(store, src, skipped):
    """Write the good rows of one replica and put their images in place first; the number written,
    or None if the store does not lack this replica (then nothing is touched)."""
    if not store.hub.lacks_replica(src.name):
        return None
    dest = store.root / "data" / src.name
    (dest / "images").mkdir(parents=True, exist_ok=True)
    with files.locked(dest / ROWS) as fd:
        if os.fstat(fd).st_size:  # another process on this home filled it meanwhile
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
        hub_rows.write_rows(fd, rows)  # a crash before this line leaves images no row names: harmless
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

def _fill_votes(store, src, known, skipped):
    """Write the good votes of one filled replica, unless its votes file has some already."""
    votes = src.votes(known, skipped)
    with files.locked(store.root / "data" / src.name / VOTES) as fd:
        if os.fstat(fd).st_size:
            return 0
        hub_rows.write_rows(fd, votes)
    return len(votes)

def _row_ids(store):
    """The ids of every row in the store, all replicas."""
    rows = (r for d in store.replica_dirs() for r in files.read_jsonl(d / ROWS))
    return {r["id"] for r in rows if isinstance(r.get("id"), str)}


def human_tensors(home, drop_disputed=True):
    """The human examples under `home` for training (FlagStore.tensors). drop_disputed leaves out
    examples that more validators rejected than accepted."""
    store = FlagStore(home, readonly=True)
    return store.tensors([e for e in store.examples() if not (drop_disputed and e.disputed)])
