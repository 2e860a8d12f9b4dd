"""FlagStore: the local, durable, append-only store of flagged human examples. It alone opens the
files under DADC_HOME/flags; others use its public methods (the Hub sync included).

Local disk is the source of truth; the Hub is a copy, in a layout of its own (parquet shards with
the images inside: hub/layout.py). The local folder loads with `datasets` too (the imagefolder
convention: a metadata.jsonl whose rows name their image under `file_name` and the true digit
under `label`; file names and the row format: layout.py).

Concurrency: rows are appended with files.append_line (flock, torn-tail repair, fsync), so many
threads and several processes may share one home. Images are written to tmp/ and renamed into
place, then they and their folder are fsynced (together: files.fsync_all) *before* the row naming
them is appended, so a durable row never points at a missing or partial file; a crash before the
row leaves an unnamed image (perhaps partial), which nothing reads (rows come from metadata).
"""
import errno
import io
import math
import os
import random
import secrets
import threading
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

from .. import config, files
from ..examples import Vote, account_id, as_digit
from ..preprocess import to_uint8
from .index import Index
from .layout import MAX_SESSION, ROWS, VOTES, card
from .snapshot import HubFiles


KEEP_CANVAS = 256  # the stored copy of a canvas is at most this many pixels a side (enough to verify)


class StoreError(RuntimeError):
    """The store cannot write (read-only or full DADC_HOME...). Nothing half-written was kept."""


def keepable(img):
    """The canvas as the store keeps it next to the 28x28: at most KEEP_CANVAS a side (the app and
    the import both store this)."""
    if img is None:
        return None
    img = img if img.mode in ("RGBA", "RGB", "L", "LA") else img.convert("RGBA")
    factor = math.ceil(max(img.size) / KEEP_CANVAS)
    return img.reduce(factor) if factor > 1 else img.copy()  # a box average: fast, keeps thin strokes


def png_bytes(img):
    """The PNG the store writes for an image (fast, lossless)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)  # 2-3x faster than the default, about 1.5x larger
    return buf.getvalue()


def _as_image28(image):
    if isinstance(image, np.ndarray):
        arr = image
        if arr.dtype != np.uint8:  # floats in [0,1] as the model sees them
            arr = to_uint8(arr)
        image = Image.fromarray(arr.squeeze())
    if not isinstance(image, Image.Image):
        raise ValueError(f"image must be a PIL image or a numpy array, got {type(image).__name__}")
    if image.size != (28, 28):
        raise ValueError(f"image must be 28x28, got {image.size[0]}x{image.size[1]}")
    return image.convert("L")


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


def _why(root, e):
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"DADC_HOME is read-only: cannot save the flag under {root} ({e.strerror})"
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return f"DADC_HOME is full: cannot save the flag under {root} ({e.strerror})"
    return f"cannot save the flag under {root}: {e.strerror or e}"


class FlagStore:
    """Append-only store of flagged examples under DADC_HOME/flags. Safe for many threads and
    several processes on one DADC_HOME. readonly=True never writes (e.g. export from a read-only home).
    admins: the Hugging Face usernames who are admins now (default: DADC_ADMINS, as the app reads
    it): a vote marked as an admin's is believed only from one of them (examples.believed)."""

    def __init__(self, home, readonly=False, admins=None):
        self.home = Path(home)
        self.root = self.home / "flags"
        self.readonly = readonly
        self.admins = frozenset(account_id(a) for a in (config.admins() if admins is None else admins))
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
                    files.write_atomic(self.root / "README.md", card(), self.root / "tmp")
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

    def append(self, image28, label, *, canvas=None, prediction=None, confidences=None, round=0, visitor=""):
        """Store one flagged example durably; returns its id once it is on disk (fsynced)."""
        if self.readonly:
            raise StoreError("the flag store was opened read-only")
        image28 = _as_image28(image28)
        label = as_digit(label, "label")
        prediction = -1 if prediction is None else as_digit(prediction, "prediction")
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
               "session": str(visitor)[:MAX_SESSION], "id": id_}
        written, fds = [], []
        try:
            for name, img in ((file_name, image28), (canvas_name, canvas)):
                if img is None or name in written:
                    continue
                fds.append(files.place(self.dir / name, png_bytes(img), self.root / "tmp"))
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

    def vote(self, id, visitor, agree, digit=None, admin=False):
        """Record that `visitor` agrees (or not) with the label of flag `id`, and with a disagreeing
        vote the digit it is (optional); `admin`: cast by an admin (it decides while `visitor` is
        one of self.admins). A vote by the flagger against their own example retracts it. Appended,
        never rewritten: a voter's latest (believed) vote counts."""
        if self.readonly:
            raise StoreError("the flag store was opened read-only")
        if not isinstance(agree, bool):
            raise ValueError(f"agree must be a bool, got {agree!r}")
        if digit is not None and (agree or as_digit(digit, "digit") is None):
            raise ValueError("a digit goes only with a disagreeing vote")
        if self.find(id) is None:
            raise ValueError(f"no flagged example with id {str(id)[:80]!r}")
        row = {"id": id, "session": str(visitor)[:MAX_SESSION], "agree": agree, "time": files.utc_now(),
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

    def votes(self):
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

    def next_to_vote(self, visitor, votes, rng=random, also=()):
        """An example `visitor` neither flagged nor voted on and not yet decided (Example.decided
        with `votes`), among those with the fewest votes (a random one of them), or None; `also`:
        the same person's other ids, whose flags are not offered either. Cost bounded by PROBES per
        vote count, not by the store."""
        with self._index_lock:
            index = self._fresh_index()
            id_ = index.next_to_vote(visitor, rng, votes, also)
            return None if id_ is None else index.example(id_)

    def version(self):
        """Changes whenever a row or a vote is added (bytes of rows and votes read so far)."""
        with self._index_lock:
            return sum(self._fresh_index().offset.values())

    def _fresh_index(self):
        """The in-memory index (rows, votes), caught up with the files (lock held): rows appended
        since, by this process or another, are read from where it stopped, never the whole store."""
        if self._index is None:
            self._index = Index(self.admins)
        if not self._index.follow(self.replica_dirs()):
            self._index = Index(self.admins)  # a file shrank (a torn tail was cut): read everything again
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



def human_tensors(home, drop_disputed=True):
    """The human examples under `home` for training (FlagStore.tensors). drop_disputed leaves out
    examples that more validators rejected than accepted."""
    store = FlagStore(home, readonly=True)
    return store.tensors([e for e in store.examples() if not (drop_disputed and e.disputed)])
