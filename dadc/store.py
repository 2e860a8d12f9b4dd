"""FlagStore: the local, durable, append-only store of flagged human examples.

Local disk is the source of truth; the Hub is a copy (see hubsync.py). The layout under
DADC_HOME/flags/ is the Hub dataset's layout, so that the pushed repo and the local folder load the
same way with `datasets` (the imagefolder convention: a metadata.jsonl whose rows name their image
under `file_name` and the true digit under `label`):

    flags/README.md                          dataset card (tells `datasets` which files are data)
    flags/replica                            this DADC_HOME's replica id (Hub path data/<replica>/)
    flags/data/<replica>/metadata.jsonl      one JSON row per flagged example, append-only
    flags/data/<replica>/votes.jsonl         validations ("I agree this is a 7"), append-only
    flags/data/<replica>/images/<id>.png     the 28x28 image (white digit on black, as MNIST)
    flags/data/<replica>/images/<id>-canvas.png   the original canvas
    flags/tmp/  flags/.lock                  never pushed

Concurrency: every append opens metadata.jsonl with O_APPEND and holds an exclusive fcntl.flock
while it repairs a torn tail (if any), writes one whole line and fsyncs. flock locks belong to open
file descriptions, so this excludes threads of one process as well as other processes on the same
DADC_HOME. Images are written to tmp/, fsynced and renamed into place *before* the row naming them
is appended, so a row never points at a missing file; a crash in between leaves an unnamed image,
which `datasets` ignores (rows come from metadata).
"""
import errno
import fcntl
import hashlib
import io
import json
import os
import secrets
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

# Shown on the Hub and read by `datasets`: only images and metadata.jsonl are data files, so the
# votes.jsonl files never make `datasets` pick the json builder instead of imagefolder.
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

FIELDS = ("file_name", "canvas_file_name", "label", "prediction", "confidences", "round", "time", "session", "id")
MAX_SESSION = 200


class StoreError(RuntimeError):
    """The store cannot write (read-only or full DADC_HOME...). Nothing half-written was kept."""


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd, data):
    # os.write may write less than asked (e.g. the disk fills up mid-way): loop until done or error
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n == 0:
            raise OSError(errno.ENOSPC, "no space left on device")
        view = view[n:]


def _write_file_atomic(tmp_dir, dest, data):
    """Write bytes to dest so that dest either does not exist or is complete (temp, fsync, rename)."""
    tmp = Path(tmp_dir) / f"{uuid.uuid4().hex}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _repair_tail(fd):
    """Cut a torn last line (a crash or a full disk mid-write) so the next row starts on its own line.
    Called with the file's flock held. Returns the file size after repair."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size
    data = os.pread(fd, size, 0)  # rare path: read it all, keep up to the last newline
    keep = data.rfind(b"\n") + 1
    os.ftruncate(fd, keep)
    os.fsync(fd)
    return keep


def _read_jsonl(path):
    """Rows of a jsonl file; a torn or corrupt line is skipped, never fatal."""
    rows = []
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return rows
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _png(img):
    buf = io.BytesIO()
    img.save(buf, format="PNG")
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


class FlagStore:
    """Append-only store of flagged examples under DADC_HOME/flags. Safe for many threads and
    several processes on one DADC_HOME. readonly=True never writes (e.g. export from a read-only home)."""

    def __init__(self, home, readonly=False):
        self.home = Path(home)
        self.root = self.home / "flags"
        self.readonly = readonly
        self.replica = None
        if not readonly:
            try:
                for d in (self.root / "data", self.root / "tmp"):
                    d.mkdir(parents=True, exist_ok=True)
                with self._locked(self.root / ".lock"):
                    self.replica = self._replica_id()
                    if not (self.root / "README.md").exists():
                        _write_file_atomic(self.root / "tmp", self.root / "README.md", CARD.encode())
                    self.dir.joinpath("images").mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StoreError(f"cannot write the flag store under {self.root}: {e.strerror or e}") from None
            self._repair()

    # --- layout -------------------------------------------------------------------------------

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
        _write_file_atomic(self.root / "tmp", path, rid.encode())
        return rid

    @contextmanager
    def _locked(self, path, flags=os.O_RDWR | os.O_CREAT):
        fd = os.open(path, flags, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)  # closing the descriptor releases the flock

    def _repair(self):
        # a writer killed mid-line leaves a torn tail; cut it at start (appends also check)
        for name in ("metadata.jsonl", "votes.jsonl"):
            path = self.dir / name
            if path.exists():
                try:
                    with self._locked(path, os.O_RDWR) as fd:
                        _repair_tail(fd)
                except OSError:
                    pass  # read-only: readers skip a torn line anyway

    def _append_line(self, name, row):
        line = (json.dumps(row, separators=(",", ":")) + "\n").encode()
        with self._locked(self.dir / name, os.O_RDWR | os.O_APPEND | os.O_CREAT) as fd:
            size = _repair_tail(fd)
            try:
                _write_all(fd, line)
                os.fsync(fd)
            except BaseException:
                # a half-written row must not count: cut back to where it started
                try:
                    os.ftruncate(fd, size)
                except OSError:
                    pass
                raise

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
        row = {
            "file_name": file_name,
            "canvas_file_name": canvas_name,
            "label": label,
            "prediction": prediction,
            "confidences": confidences,
            "round": int(round),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "session": str(session)[:MAX_SESSION],
            "id": id_,
        }
        written = []
        try:
            tmp = self.root / "tmp"
            for name, img in ((file_name, image28), (canvas_name, canvas)):
                if img is None or name in written:
                    continue
                _write_file_atomic(tmp, self.dir / name, _png(img))
                written.append(name)
            _fsync_dir(self.dir / "images")  # the renames are durable before a row names them
            self._append_line("metadata.jsonl", row)
        except OSError as e:
            for name in written:  # unnamed images are harmless, but do not leave litter
                try:
                    os.unlink(self.dir / name)
                except OSError:
                    pass
            raise StoreError(self._why(e)) from None
        return id_

    def validate(self, id, session, agree):
        """Record that `session` agrees (or not) with the label of flag `id`. Appended, never rewritten."""
        if self.readonly:
            raise StoreError("the flag store was opened read-only")
        if not isinstance(agree, bool):
            raise ValueError(f"agree must be a bool, got {agree!r}")
        if not any(r["id"] == id for r in self._rows()):
            raise ValueError(f"no flagged example with id {id!r}")
        row = {"id": id, "session": str(session)[:MAX_SESSION], "agree": agree,
               "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        try:
            self._append_line("votes.jsonl", row)
        except OSError as e:
            raise StoreError(self._why(e)) from None

    def _why(self, e):
        if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return f"DADC_HOME is read-only: cannot save the flag under {self.root} ({e.strerror})"
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return f"DADC_HOME is full: cannot save the flag under {self.root} ({e.strerror})"
        return f"cannot save the flag under {self.root}: {e.strerror or e}"

    # --- reading ------------------------------------------------------------------------------

    def replica_dirs(self):
        """Every replica's folder: this home's and the ones restored from the Hub."""
        data = self.root / "data"
        return sorted(p for p in data.iterdir() if p.is_dir()) if data.is_dir() else []

    def _rows(self):
        rows = []
        for d in self.replica_dirs():
            for row in _read_jsonl(d / "metadata.jsonl"):
                if all(k in row for k in FIELDS):
                    row["path"] = str(d / row["file_name"])
                    row["canvas_path"] = str(d / row["canvas_file_name"])
                    rows.append(row)
        return rows

    def validations(self):
        """All validation rows of all replicas, oldest first per replica."""
        return [v for d in self.replica_dirs() for v in _read_jsonl(d / "votes.jsonl") if "id" in v]

    def examples(self):
        """All flagged examples (dicts: the metadata row, plus absolute `path`/`canvas_path` and the
        validation counts `agree`/`disagree`, one vote per session, its latest)."""
        rows = self._rows()
        latest = {}
        for v in self.validations():
            latest[(v["id"], v.get("session"))] = bool(v.get("agree"))
        tally = {}
        for (id_, _), agree in latest.items():
            tally.setdefault(id_, [0, 0])[0 if agree else 1] += 1
        for r in rows:
            r["agree"], r["disagree"] = tally.get(r["id"], (0, 0))
        return rows

    def count(self):
        return len(self._rows())

    def image(self, record):
        with Image.open(record["path"]) as img:
            return img.convert("L").copy()


def human_tensors(home, drop_disputed=True):
    """The human examples for training: x float [N,1,28,28] in [0,1] (white on black), y long [N].
    drop_disputed leaves out examples that more validators rejected than accepted."""
    import torch  # only training needs torch; the store and the app's flag path do not

    store = FlagStore(home, readonly=True)
    rows = [r for r in store.examples() if not (drop_disputed and r["disagree"] > r["agree"])]
    if not rows:
        return torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long)
    x = np.stack([np.asarray(store.image(r), dtype=np.uint8) for r in rows])
    x = torch.from_numpy(x).float().div_(255.0).unsqueeze(1)
    y = torch.tensor([r["label"] for r in rows], dtype=torch.long)
    return x, y


def _split_of(id_):
    # stable: an example keeps its split as the data grows (about 1 in 10 goes to validation)
    return "validation" if int(hashlib.sha256(id_.encode()).hexdigest()[:8], 16) % 10 == 0 else "train"


def export_dataset(home, out_dir):
    """Write the collected examples as a `datasets` parquet dataset with train/validation splits:
    OUT/data/train-00000-of-00001.parquet and OUT/data/validation-00000-of-00001.parquet (images
    embedded). Loads with datasets.load_dataset(OUT). Returns {split: count}."""
    import datasets

    store = FlagStore(home, readonly=True)
    rows = store.examples()
    if not rows:
        raise ValueError(f"no flagged examples under {store.root}: nothing to export")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} exists and is not an empty folder")
    splits = {"train": [], "validation": []}
    for r in rows:
        splits[_split_of(r["id"])].append(r)
    if not splits["validation"] and len(rows) > 1:  # too few to hash-split: hold out one
        splits["validation"].append(splits["train"].pop())
    features = datasets.Features({
        "image": datasets.Image(), "canvas": datasets.Image(),
        "label": datasets.ClassLabel(names=[str(i) for i in range(10)]),
        "prediction": datasets.Value("int64"), "confidences": datasets.Sequence(datasets.Value("float32")),
        "round": datasets.Value("int64"), "time": datasets.Value("string"),
        "session": datasets.Value("string"), "id": datasets.Value("string"),
        "agree": datasets.Value("int64"), "disagree": datasets.Value("int64"),
    })
    (out / "data").mkdir(parents=True, exist_ok=True)
    counts = {}
    was_quiet = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()  # a CLI answers in one line, without progress bars
    try:
        for split, rs in splits.items():
            # in the features' column order; bytes, not paths: the parquet holds the images themselves
            cols = {k: [r[k] for r in rs] for k in features if k not in ("image", "canvas")}
            cols = {"image": [{"bytes": Path(r["path"]).read_bytes(), "path": None} for r in rs],
                    "canvas": [{"bytes": Path(r["canvas_path"]).read_bytes(), "path": None} for r in rs], **cols}
            ds = datasets.Dataset.from_dict(cols, features=features)
            ds.to_parquet(str(out / "data" / f"{split}-00000-of-00001.parquet"))
            counts[split] = len(rs)
    finally:
        if not was_quiet:
            datasets.enable_progress_bars()
    return counts
