"""`python -m dadc import SOURCE`: bring drawings or another campaign's flags into this home's store.

SOURCE is one of
- a folder of canvases with labels.csv (columns file,label; others such as family,style ignored),
  the format `python -m dadc simulate --make-drawings` and dadc/synth/drawings.py write: each canvas goes
  through the app's own preprocessing (preprocess.to_mnist) and is stored beside its 28x28, scaled
  down as the app keeps canvases (store.keepable);
- a parquet export of another campaign (`python -m dadc export OUT` writes OUT/data/*.parquet, a
  `datasets` dataset), or one such .parquet file: its 28x28 `image` column is stored as it is (it
  must decode to 28x28), with `label`, and `canvas`, `prediction`, `confidences`, `round` when there.
  Votes and time stamps are not carried over (each imported row is a new flag of this home).

Every row is untrusted input. A row that cannot be imported (missing file, not a regular file inside
the folder, not an image, label not 0-9, a canvas the preprocessing cannot read or over
MAX_INPUT_SIDE px a side, read from its header before decoding) is reported on stderr (the first
MAX_SHOWN, then a summary by reason) and skipped.
A row whose 28x28 pixels equal those of an example already in the store, or of an earlier row of
this import, is a duplicate: skipped and counted. Imported rows get session "import:<source name>",
prediction -1 unless the export had one, round as the export gives it, else 0.

Every file the import opens under SOURCE (labels.csv, the drawings it names, the shards of an
export) must be a regular file that lies inside SOURCE: it is opened through its folders one at a
time from SOURCE, none of them followed when a symlink (open_inside), and refused when it is a
symlink, a FIFO, a device or a folder. SOURCE itself may be a symlink: the person named it.

The import holds DADC_HOME/app.lock from start to end: it refuses to run beside an app serving the
same home, and no app starts on the home mid-import. Every row is durable once appended (the store
fsyncs it), so an interrupted import keeps what it imported; running it again skips those as
duplicates.
"""
import errno
import hashlib
import io
import math
import os
import stat
import sys
import warnings
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePath

import numpy as np
from PIL import Image

from .. import files
from .. import preprocess
from ..store import FlagStore, keepable
from ..synth import labels

MAX_SHOWN = 20        # bad rows reported one line each; the rest only counted
MAX_NAME = 64         # characters of the source's name kept in the session
MAX_DETAIL = 80       # characters of a row's file name or value quoted in a report
MAX_ROUND = 10**6     # as hub_rows: far more rounds than any run makes
WORKERS = 2           # threads reading and preprocessing rows (PIL and numpy release the GIL)
APPENDERS = 4         # threads appending to the store (mostly waiting on fsync)
COLUMNS = ("image", "canvas", "label", "prediction", "confidences", "round")
OUTSIDE = "not a regular file inside the folder"  # the reason of a file refused by open_inside
# a file is opened without following a last symlink, and without waiting for a FIFO's writer
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


class Bad(ValueError):
    """A row that cannot be imported: `reason` counts it, the message says why (one short line)."""

    def __init__(self, reason, message=None):
        super().__init__(message or reason)
        self.reason = reason


@dataclass
class Row:
    pixels: np.ndarray            # uint8 [28, 28], white on black
    label: int
    canvas: Image.Image | None = None   # as the app keeps it (store.keepable)
    prediction: int | None = None
    confidences: list | None = None
    round: int = 0


def _quote(value):
    """A value from a row, bounded, for a report: strings quoted, anything else as Python shows it."""
    if not isinstance(value, str):
        return repr(value)[:MAX_DETAIL]
    return repr(value[:MAX_DETAIL] + ("..." if len(value) > MAX_DETAIL else ""))


def _int(value, lo, hi, what):
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise Bad(f"{what} not {lo}-{hi}", f"{what} {_quote(value)} is not an integer {lo}-{hi}") from None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
        raise Bad(f"{what} not {lo}-{hi}", f"{what} {_quote(value)} is not an integer {lo}-{hi}")
    return int(value)


def _open(data_or_path, what):
    """A lazily opened PIL image (header read only), refused when over MAX_INPUT_SIDE a side."""
    try:
        img = Image.open(data_or_path)
    except FileNotFoundError:
        raise Bad("missing file", f"{what} missing") from None
    except Exception as e:  # UnidentifiedImageError, a decompression bomb, a truncated header...
        raise Bad("not an image", f"{what}: not an image ({type(e).__name__})") from None
    try:
        preprocess.check_size(*img.size)
    except preprocess.CanvasError as e:
        img.close()
        raise Bad("image too large", f"{what}: {e}") from None
    return img


def _load(img, what):
    try:
        img.load()
    except Exception as e:  # a truncated or corrupt image body
        raise Bad("not an image", f"{what}: not a readable image ({type(e).__name__}: "
                                  f"{str(e)[:MAX_DETAIL]})") from None


def compact(img):
    """The same pixels in the narrowest of RGBA -> RGB/LA -> L that holds them exactly: drop an alpha
    that is opaque everywhere, and colour where every pixel is grey. The Sketchpad's composite (and
    drawings.render) is opaque RGBA with grey ink: stored as L it is ~30 % smaller and its PNG is
    encoded 2-3x faster, which is most of an imported row's cost."""
    if img.mode not in ("RGBA", "RGB", "LA"):
        return img
    arr = original = np.asarray(img)
    if img.mode in ("RGBA", "LA") and arr[..., -1].min() == 255:
        arr = arr[..., :-1]
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    color = arr.ndim == 3 and arr.shape[2] in (3, 4)
    if color and (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all():
        arr = arr[..., [0, 3]] if arr.shape[2] == 4 else arr[..., 0]
    if arr.shape == original.shape:
        return img
    return Image.fromarray(np.ascontiguousarray(arr))  # uint8 HxW, HxWx2, HxWx3: L, LA, RGB


def key(pixels):
    """The duplicate key of a 28x28: a digest of its exact pixels."""
    return hashlib.blake2b(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes(), digest_size=16).digest()


# --- a folder of drawings with labels.csv -------------------------------------------------------

def drawing_rows(folder):
    """[(where, file, label text)] of folder/labels.csv, read whole before anything is written."""
    def open_file(name):
        try:
            return open_inside(folder, name, f"{folder / name}")
        except Bad as e:  # not a row: the whole import is refused (one error line)
            raise ValueError(str(e)) from None

    return [(f"labels.csv line {r['line']}", r.get("file"), r.get("label")) for r in labels.read(folder, open_file)]


def _kind(mode):
    """What a file that is not a regular file is, in words."""
    for test, what in ((stat.S_ISLNK, "a symlink"), (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")):
        if test(mode):
            return what
    return "not a regular file"


def _regular(fd, what):
    """fd, once fstat says it is a regular file; else closed, and Bad."""
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise Bad(OUTSIDE, f"{what} is {OUTSIDE} ({_kind(mode)})")
    return fd


def _step(dir_fd, part, folder, what):
    """The fd of `part` in the folder dir_fd (lstat-checked, then opened without following a symlink):
    a folder when `folder`, else a regular file opened for reading (never waiting on a FIFO). Bad when
    it is anything else."""
    mode = os.stat(part, dir_fd=dir_fd, follow_symlinks=False).st_mode
    if not (stat.S_ISDIR(mode) if folder else stat.S_ISREG(mode)):  # a device or FIFO is never opened
        where = f"{_quote(part)} in its path is" if folder else "it is"
        raise Bad(OUTSIDE, f"{what} is {OUTSIDE} ({where} {_kind(mode)})")
    return os.open(part, DIR_FLAGS if folder else READ_FLAGS, dir_fd=dir_fd)


def open_inside(source, name, what):
    """SOURCE/name opened for reading (a binary file object) when it is a regular file that really lies
    inside SOURCE: its folders are walked down one at a time from SOURCE (openat), none followed when
    a symlink, and the file must be a regular file, not a symlink, FIFO, device or folder (checked
    with lstat before it is opened, and with fstat after, against a swap in between). Bad otherwise:
    "missing file", OUTSIDE, or "unreadable file". SOURCE itself is followed when a symlink: the
    person named it, so where it points is what they meant to import."""
    path = PurePath(name) if isinstance(name, str) and name and "\0" not in name else None
    if path is None or path.is_absolute() or ".." in path.parts or not path.parts:
        raise Bad("file outside the folder", f"{what} is not a file inside the folder")
    fds = []
    try:
        fds.append(os.open(source, os.O_RDONLY | os.O_DIRECTORY))
        for part in path.parts[:-1]:
            fds.append(_step(fds[-1], part, True, what))
        fd = _regular(_step(fds[-1], path.parts[-1], False, what), what)
    except FileNotFoundError:
        raise Bad("missing file", f"{what} missing") from None
    except OSError as e:  # ELOOP, ENOTDIR: swapped for a symlink or a file since its lstat
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise Bad(OUTSIDE, f"{what} is {OUTSIDE}") from None
        raise Bad("unreadable file", f"{what}: {e.strerror or type(e).__name__}") from None
    finally:
        for d in fds:
            os.close(d)
    os.set_blocking(fd, True)  # no effect on a regular file; as an ordinary open() leaves it
    return os.fdopen(fd, "rb")


def read_drawing(folder, name, label):
    """One labels.csv row as a Row, or Bad."""
    label = _int(label, 0, 9, "label")
    what = f"file {_quote(name)}"
    with open_inside(folder, name, what) as f, _open(f, what) as img:
        _load(img, what)
        try:
            x = preprocess.to_mnist(img)
        except preprocess.CanvasError as e:
            raise Bad("unreadable canvas", f"{what}: unreadable canvas: {e}") from None
        return Row(preprocess.to_uint8(x), label, canvas=keepable(img))  # small: rows in flight stay bounded


# --- a parquet export ----------------------------------------------------------------------------

def parquet_files(source):
    """The .parquet files of SOURCE (itself, or every one under it), each checked to have the
    columns of an export (image, label) before anything is written. A .parquet under SOURCE that is
    not a regular file inside it (a symlink, a FIFO, one under a symlinked folder) is an error."""
    import pyarrow.parquet as pq

    out = []
    for path in _shards(source):
        try:
            if path == source:  # SOURCE itself, named by the person: followed when a symlink
                f = os.fdopen(_regular(os.open(source, os.O_RDONLY | os.O_NONBLOCK), str(source)), "rb")
            else:
                f = open_inside(source, path.relative_to(source).as_posix(), str(path))
        except Bad as e:
            raise ValueError(str(e)) from None
        except OSError as e:
            raise ValueError(f"{path} cannot be read ({e.strerror or type(e).__name__})") from None
        try:
            pf = pq.ParquetFile(f)
        except Exception as e:
            f.close()
            raise ValueError(f"{path} is not a readable parquet file ({type(e).__name__}: {e})") from None
        names = pf.schema_arrow.names
        if not {"image", "label"} <= set(names):
            f.close()
            raise ValueError(f"{path} has no image and label columns: not an export of `python -m dadc export` "
                             f"(columns: {', '.join(names[:12])})")
        out.append((path, pf, [c for c in COLUMNS if c in names]))
    return out


def _shards(source):
    """The paths of SOURCE's .parquet files: SOURCE when it is a file, else every name *.parquet under
    it that is not a folder (rglob does not descend into a symlinked folder)."""
    if source.is_file():
        return [source]
    out = []
    for path in sorted(source.rglob("*.parquet")):
        try:
            if not stat.S_ISDIR(path.lstat().st_mode):
                out.append(path)
        except OSError:
            continue  # gone since it was listed
    return out


def parquet_rows(shards, source):
    """(where, row dict) of every row of the shards, read a batch at a time (bounded memory)."""
    for path, pf, columns in shards:
        rel = path.name if path == source else path.relative_to(source).as_posix()
        n = 0
        for batch in pf.iter_batches(batch_size=256, columns=columns):
            for row in batch.to_pylist():
                yield f"{rel} row {n}", row
                n += 1
        pf.close(force=True)  # and the file parquet_files opened


def _image_bytes(value, what):
    if isinstance(value, dict):
        value = value.get("bytes")
    if not isinstance(value, (bytes, bytearray)) or not value:
        raise Bad(f"no {what}", f"{what} has no embedded image bytes")
    return bytes(value)


def read_exported(row):
    """One exported row as a Row, or Bad. The 28x28 is used as it is."""
    label = _int(row.get("label"), 0, 9, "label")
    data = _image_bytes(row.get("image"), "image")
    with _open(io.BytesIO(data), "image column") as img:
        if img.size != (28, 28):
            raise Bad("image not 28x28", f"image is {img.size[0]}x{img.size[1]}, not 28x28")
        _load(img, "image column")
        pixels = np.asarray(preprocess.eight_bit(img).convert("L"), dtype=np.uint8)
    prediction = row.get("prediction")
    prediction = None if prediction is None or prediction == -1 else _int(prediction, 0, 9, "prediction")
    confidences = row.get("confidences")
    if confidences is not None:
        if not (isinstance(confidences, list) and len(confidences) == 10 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 <= v <= 1
                for v in confidences)):
            raise Bad("bad confidences", f"confidences {_quote(confidences)} are not 10 probabilities")
        confidences = [float(v) for v in confidences]
    round_ = row.get("round")
    round_ = 0 if round_ is None else _int(round_, 0, MAX_ROUND, "round")
    canvas = None
    raw = row.get("canvas")
    raw = raw.get("bytes") if isinstance(raw, dict) else raw
    if raw and bytes(raw) != data:  # the export repeats the 28x28 where no canvas was kept

        with _open(io.BytesIO(bytes(raw)), "canvas column") as img:
            _load(img, "canvas column")
            canvas = keepable(img)
    return Row(pixels, label, canvas, prediction, confidences, round_)


# --- the import ------------------------------------------------------------------------------------

def detect(source):
    """("drawings" | "parquet", what to read) for SOURCE, or ValueError when it is neither."""
    source = Path(source)
    if not source.exists():
        raise ValueError(f"SOURCE {source} does not exist")
    if source.is_dir() and os.path.lexists(source / labels.NAME):  # drawing_rows refuses a labels.csv that is
        # not a regular file (a symlink, a FIFO...) with an error, instead of taking the folder for an export
        return "drawings", drawing_rows(source)
    if (source.is_file() and source.suffix == ".parquet") or source.is_dir():
        shards = parquet_files(source)
        if shards:
            return "parquet", shards
    raise ValueError(f"SOURCE {source} is neither a folder of drawings with labels.csv (columns file,label) "
                     "nor a parquet export (`python -m dadc export OUT` writes OUT/data/*.parquet)")


def visitor_name(source):
    name = "".join(c if c.isprintable() else "?" for c in Path(source).resolve().name)[:MAX_NAME]
    return f"import:{name}"


def _prefetched(fn, items, workers=WORKERS, window=32):
    """(item, fn(item) or the exception it raised), in order, computed by `workers` threads at most
    `window` items ahead (PIL and numpy release the GIL: decoding overlaps the store's fsyncs)."""
    def call(item):
        try:
            return fn(item), None
        except Exception as e:
            return None, e

    with ThreadPoolExecutor(workers) as pool:
        pending = deque()
        for item in items:
            pending.append((item, pool.submit(call, item)))
            if len(pending) >= window:
                it, fut = pending.popleft()
                yield (it, *fut.result())
        while pending:
            it, fut = pending.popleft()
            yield (it, *fut.result())


def append(store, row, visitor):
    """Store one row (its canvas in compact form: made only for a row that is not a duplicate)."""
    canvas = None if row.canvas is None else compact(row.canvas)
    return store.append(row.pixels, row.label, canvas=canvas, prediction=row.prediction,
                        confidences=row.confidences, round=row.round, visitor=visitor)


def run(source, home, max_flags=None, err=None):
    """Import SOURCE into the store under `home`. Returns {"imported", "duplicates", "bad", "source",
    "format", ...}. ValueError for a SOURCE that is neither format; files.Busy (with a message for
    the person) when an app holds the home's app.lock."""
    err = err or sys.stderr
    source, home = Path(source), Path(home)
    kind, what = detect(source)  # before anything under home is touched
    total, rows, read = reader(kind, what, source)
    lock = hold_home(home)
    try:
        job = _Import(FlagStore(home), visitor_name(source), max_flags, err)
        job.add(rows, read, total, source.name)
    finally:
        os.close(lock)
    job.summarise()
    out = {"imported": job.counts["imported"], "duplicates": job.counts["duplicates"], "bad": job.counts["bad"],
           "source": str(source), "format": kind, "session": job.visitor}
    if job.counts["over_cap"]:
        out["over_cap"] = job.counts["over_cap"]
    return out


def reader(kind, what, source):
    """(how many rows, the rows as (where, item), read(item) -> Row or Bad) of what detect() found."""
    if kind == "drawings":
        rows = ((where, (name, label)) for where, name, label in what)
        return len(what), rows, lambda item: read_drawing(source, *item)
    return sum(pf.metadata.num_rows for _, pf, _ in what), parquet_rows(what, source), read_exported


def hold_home(home):
    """Make `home` if needed and hold its app.lock (an fd to os.close): files.Busy while an app serves it."""
    if home.exists() and not home.is_dir():
        raise ValueError(f"DADC_HOME {home} is not a directory")
    home.mkdir(parents=True, exist_ok=True)
    try:
        return files.hold_app(home)  # an app serving this home holds it; none starts while we do
    except files.Busy as e:
        raise files.Busy(f"an app is running on DADC_HOME {home} ({e}): stop it first, or import into "
                         "another home") from None


class _Import:
    """One import into an open store: the keys of the 28x28s already there (a row equal to one is a
    duplicate), the counts by outcome, the bad rows by reason and their first MAX_SHOWN reports."""

    def __init__(self, store, visitor, max_flags, err):
        self.store, self.visitor, self.max_flags, self.err = store, visitor, max_flags, err
        self.seen, self.stored = set(), 0
        for example in store.examples():
            self.stored += 1
            try:
                self.seen.add(key(np.asarray(store.image(example), dtype=np.uint8)))
            except OSError:
                pass  # an unreadable stored image cannot be duplicated anyway
        self.counts, self.reasons, self.bar = Counter(), Counter(), None

    def add(self, rows, read, total, name):
        """Read the rows and append each new one, with a progress bar. Rows are read (and
        preprocessed) by WORKERS threads ahead of this loop, which decides in source order what is a
        duplicate; the appends run on APPENDERS threads, so that the store's fsyncs (4 a row, in two
        rounds) overlap instead of queueing (FlagStore is safe for many threads). A store error ends
        the import (RuntimeError, saying how many rows it imported before)."""
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=f"importing {name}"[:40], unit="row", file=self.err, mininterval=0.5)
        pending = deque()
        with warnings.catch_warnings(), ThreadPoolExecutor(APPENDERS) as writers:
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # sizes are checked from the header
            try:
                for (where, _), row, e in _prefetched(lambda item: read(item[1]), rows):
                    self.bar.update(1)
                    while pending and (len(pending) >= 4 * APPENDERS or pending[0][2].done()):
                        self.settle(*pending.popleft())
                    k = self.admit(where, row, e, len(pending))
                    if k is not None:
                        pending.append((where, k, writers.submit(append, self.store, row, self.visitor)))
                while pending:
                    self.settle(*pending.popleft())
            except Exception as e:  # e.g. StoreError: a full or read-only disk
                for _, _, done in pending:
                    done.cancel()
                for _, _, done in pending:  # what was written before the error still counts
                    if not done.cancelled() and done.exception() is None:
                        self.counts["imported"] += 1
                self.bar.close()
                raise RuntimeError(f"{e} ({self.counts['imported']} rows were imported before that; importing "
                                   "again skips them as duplicates)") from None
        self.bar.close()

    def admit(self, where, row, error, in_flight):
        """The key of a row to append, or None for a bad row (reported), a duplicate or a row over the
        store's cap (counted). `in_flight`: rows appended but not yet settled."""
        if error is not None:
            if isinstance(error, Bad):
                self.report(where, error.reason, str(error))
            else:  # anything else a broken file can make a decoder raise
                self.report(where, "unreadable", f"{type(error).__name__}: {str(error)[:MAX_DETAIL]}")
            return None
        k = key(row.pixels)
        if k in self.seen:
            self.counts["duplicates"] += 1
            return None
        if self.max_flags is not None and self.stored + self.counts["imported"] + in_flight >= self.max_flags:
            self.counts["over_cap"] += 1
            return None
        self.seen.add(k)
        return k

    def report(self, where, reason, why):
        self.counts["bad"] += 1
        self.reasons[reason] += 1
        if self.counts["bad"] <= MAX_SHOWN:
            self.bar.write(f"bad row: {where}: {why}", file=self.err)

    def settle(self, where, k, done):
        """Wait for one append: counted as imported, or reported when the store refused the row."""
        try:
            done.result()
        except ValueError as e:  # the store's own checks (StoreError, a full disk, is not one)
            self.seen.discard(k)
            self.report(where, "refused by the store", str(e)[:MAX_DETAIL])
            return
        self.counts["imported"] += 1

    def summarise(self):
        """The import's last lines on err: bad rows not shown, bad rows by reason, rows over the cap."""
        if self.counts["bad"] > MAX_SHOWN:
            print(f"... and {self.counts['bad'] - MAX_SHOWN} more bad rows", file=self.err)
        if self.counts["bad"]:
            print("bad rows by reason: " + ", ".join(f"{r} {n}" for r, n in self.reasons.most_common()),
                  file=self.err)
        if self.counts["over_cap"]:
            print(f"the store is full (DADC_MAX_FLAGS={self.max_flags}): {self.counts['over_cap']} rows not imported",
                  file=self.err)
