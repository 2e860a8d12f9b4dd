"""Rows downloaded from the Hub are untrusted input (anyone with write access to the dataset repo
wrote them): check each one before the store adopts it (store.fill_replica). A good row is
rewritten as canonical JSON of our own; a bad one is skipped, logged one line (logger
"dadc.restore") and counted by reason. Two layouts come down (layout.py): a replica's parquet
shards (Shards: the images inside each row, as PNG bytes) and the earlier folders (Folder: ROWS and
VOTES, images under images/). Both give the same canonical rows, images checked the same way."""
import io
import json
import logging
import math
import os
import re
import stat
import time
from pathlib import Path

from PIL import Image

from ..store import MAX_SESSION, ROWS, VOTES, keepable, png_bytes

HEX_ID = re.compile(r"[0-9a-f]{1,64}")  # an id as FlagStore.append makes it (uuid4 hex); it names the row's images
MAX_CANVAS = 4096    # pixels a side of a restored canvas (the app refuses larger drawings too)
MAX_TIME = 64        # characters of a restored time stamp (ours are 20)
MAX_ROUND = 10**6    # far more rounds than any run makes; keeps the export's int64 column safe
MAX_ROW_GROUP = 96 * 2**20  # bytes a parquet row group may claim decoded (ours: at most a 64 MiB shard)
MAX_IMAGE_BYTES = 16 * 2**10   # a restored 28x28 PNG (ours are under 1 KB)
MAX_CANVAS_BYTES = 4 * 2**20   # a restored canvas PNG (the app takes no larger upload)
# What one downloaded replica may bring into the home, in proportion to what was downloaded of it
# (a parquet shard's dictionary encoding stores a repeated image once: 169 KB made 60,000 rows):
ROWS_BASE, BYTES_PER_ROW = 1000, 256         # rows: 1,000 + one per 256 bytes downloaded (ours: >= 400 a row)
WRITE_BASE, WRITE_FACTOR = 64 * 2**20, 16    # bytes written: 64 MiB + 16x the bytes downloaded
TIME_BASE, TIME_PER_ROW = 60.0, 0.02         # seconds: 60 + 20 ms per row it may bring (ours: ~2 ms)

log = logging.getLogger("dadc.restore")

# --- checking rows restored from the Hub (untrusted: anyone with write access to the repo) -----

class _Skip(ValueError):
    """A downloaded row that must not enter the store: `reason` is its count key, `detail` the log's."""

    def __init__(self, reason, detail=""):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


def _skip(skipped, path, n, e):
    skipped[e.reason] += 1
    detail = repr(e.detail)[:80] if e.detail != "" else ""  # bounded: a row may hold 10,000 characters
    log.warning("restore: skipped row %d of %s/%s: %s %s", n, path.parent.name, path.name, e.reason, detail)


def _lines(path):
    """(line number, bytes) of the non-blank lines of a downloaded JSON-lines file; none unless it
    is a regular file (a symlink could point anywhere on this machine)."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return []
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    return [(n, line) for n, line in enumerate(data.split(b"\n"), 1) if line.strip()]


def _object(line):
    try:
        row = json.loads(line)
    except ValueError:  # also bad UTF-8
        raise _Skip("not JSON", line[:40]) from None
    if not isinstance(row, dict):
        raise _Skip("not a JSON object", row)
    return row


def _int(row, key, lo, hi):
    value = row.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:  # True is an int
        raise _Skip(f"bad {key}", value)
    return value


def _text(row, key, most):
    value = row.get(key)
    if not isinstance(value, str) or len(value) > most:
        raise _Skip(f"bad {key}", value)
    return value


def _confidences(row):
    value = row.get("confidences")
    if not (isinstance(value, list) and len(value) == 10 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 <= v <= 1
            for v in value)):
        raise _Skip("bad confidences", value)
    return [float(v) for v in value]


def _checked_fields(row, id_):
    """The fields every restored row has, whatever the layout, checked; canonical."""
    return {"label": _int(row, "label", 0, 9), "prediction": _int(row, "prediction", -1, 9),
            "confidences": _confidences(row), "round": _int(row, "round", 0, MAX_ROUND),
            "time": _text(row, "time", MAX_TIME), "session": _text(row, "session", MAX_SESSION), "id": id_}


def _checked_id(row, seen):
    """The row's id; a duplicate if the store or an earlier row has it (the first one wins), checked
    before the images (the first row's may have been moved into the store already)."""
    id_ = row.get("id")
    if not (isinstance(id_, str) and HEX_ID.fullmatch(id_)):
        raise _Skip("bad id", id_)
    if id_ in seen:
        raise _Skip("duplicate id", id_)
    return id_


def _restored_row(line, src, seen):
    """One metadata line of the earlier layout as (the canonical row we write, {image name: file}),
    or _Skip. The image names are the only ones append() makes, images/<id>.png and
    images/<id>-canvas.png (or the 28x28 again), so no other path on this machine can be named; the
    images must be there and decode."""
    row = _object(line)
    id_ = _checked_id(row, seen)
    file_name = f"images/{id_}.png"
    if row.get("file_name") != file_name:
        raise _Skip("bad file_name", row.get("file_name"))
    if row.get("canvas_file_name") not in (file_name, f"images/{id_}-canvas.png"):
        raise _Skip("bad canvas_file_name", row.get("canvas_file_name"))
    out = {"file_name": file_name, "canvas_file_name": row["canvas_file_name"], **_checked_fields(row, id_)}
    images = {file_name: _image(_image_file(src, file_name), file_name, canvas=False)}
    if out["canvas_file_name"] != file_name:
        images[out["canvas_file_name"]] = _image(_image_file(src, out["canvas_file_name"]), out["canvas_file_name"],
                                                 canvas=True)
    return out, images


def _shard_row(row, seen):
    """One parquet row of the shard layout as (the canonical row we write, {image name: PNG bytes}),
    or _Skip: the images come inside the row, checked as the earlier layout's files are. A canvas
    equal to the 28x28 is the 28x28 itself (no canvas was kept)."""
    id_ = _checked_id(row, seen)
    fields = _checked_fields(row, id_)
    image, canvas = _png_bytes(row, "image"), _png_bytes(row, "canvas")
    file_name = f"images/{id_}.png"
    canvas_name = file_name if canvas == image else f"images/{id_}-canvas.png"
    out = {"file_name": file_name, "canvas_file_name": canvas_name, **fields}
    images = {file_name: _image(io.BytesIO(image), file_name, canvas=False)}
    if canvas_name != file_name:
        images[canvas_name] = _image(io.BytesIO(canvas), canvas_name, canvas=True)
    return out, images


def _image(src, name, canvas):
    """A restored image as the store would have written it: its size checked from the header, then
    decoded and encoded again as our own PNG (what else the file carried, chunks or bytes after its
    end, stays behind), a canvas kept as the store keeps canvases (keepable: at most 256 px a side)."""
    most = MAX_CANVAS_BYTES if canvas else MAX_IMAGE_BYTES
    size = src.getbuffer().nbytes if isinstance(src, io.BytesIO) else os.stat(src).st_size
    what = "canvas" if canvas else "image"
    if size > most:
        raise _Skip(f"{what} over {most} bytes", name)
    img = _decoded(src, MAX_CANVAS if canvas else 28, what, name)
    if not canvas and img.size != (28, 28):
        raise _Skip("image not 28x28", name)
    return png_bytes(keepable(img) if canvas else img.convert("L"))


def _png_bytes(row, key):
    """The PNG bytes of an Image column's value ({"bytes": ..., "path": ...} as `datasets` writes it)."""
    value = row.get(key)
    data = value.get("bytes") if isinstance(value, dict) else None
    if not isinstance(data, bytes) or not data:
        raise _Skip(f"{key} missing", type(value).__name__)
    return data


def _image_file(src, name):
    """src/<name> if it is a regular file in src/images itself: no symlink on the way."""
    images, path = src / "images", src / name
    try:
        if not (stat.S_ISDIR(os.lstat(images).st_mode) and stat.S_ISREG(os.lstat(path).st_mode)):
            raise _Skip("image not a regular file", name)
    except FileNotFoundError:
        raise _Skip("image missing", name) from None
    return path


def _decoded(src, max_side, what, name):
    """The PNG decoded (src: a file or a BytesIO), its header's size checked first, so a small file
    that claims 8000x8000 is refused before a pixel of it is decoded."""
    try:
        with Image.open(src, formats=["PNG"]) as img:
            if max(img.size) > max_side:
                raise _Skip(f"{what} over {max_side} px", f"{img.size[0]}x{img.size[1]} {name}")
            img.load()
            return img.copy() if img.mode in ("RGBA", "RGB", "L", "LA") else img.convert("RGBA")
    except _Skip:
        raise
    except Image.DecompressionBombError:  # PIL's own limit, from the header too
        raise _Skip(f"{what} over {max_side} px", name) from None
    except Exception as e:  # PIL raises many kinds on hostile bytes (OSError, SyntaxError, ValueError...)
        raise _Skip(f"{what} unreadable", f"{type(e).__name__} {name}") from None


def _vote(row, known):
    """A vote (a dict, from either layout) as the canonical one we write, or _Skip. `known`: the
    flag ids a vote may name; None: any well-formed id (a conversion, checked again at restore)."""
    id_ = row.get("id")
    if not (isinstance(id_, str) and (id_ in known if known is not None else HEX_ID.fullmatch(id_))):
        raise _Skip("unknown id", id_)
    if not isinstance(row.get("agree"), bool):
        raise _Skip("bad agree", row.get("agree"))
    digit = row.get("digit")
    if digit is not None and (type(digit) is not int or not 0 <= digit <= 9 or row["agree"]):
        raise _Skip("bad digit", digit)
    if row.get("admin") not in (None, True, False):
        raise _Skip("bad admin", row.get("admin"))
    return {"id": id_, "session": _text(row, "session", MAX_SESSION), "agree": row["agree"],
            "time": _text(row, "time", MAX_TIME), **({"digit": digit} if digit is not None else {}),
            **({"admin": True} if row.get("admin") is True else {})}


def _good_rows(items, check, known, skipped, budget):
    """(canonical row, images) for each good one of `items` ((file, number, item)), in order, while
    the budget lasts; the bad ones logged and counted in `skipped`. An id the store (`known`) or an
    earlier item already has is a duplicate: the first one wins."""
    seen = set(known)
    for where, n, item in items:
        try:
            row, images = check(item, seen)
            budget.take(images)
        except _Skip as e:
            _skip(skipped, where, n, e)
            continue
        seen.add(row["id"])
        yield row, images


class Budget:
    """What one downloaded replica may bring into the home: rows, bytes written and seconds in
    proportion to the bytes downloaded of it (ROWS_BASE, BYTES_PER_ROW, WRITE_*, TIME_*), and rows
    while the store has room (`room`: [rows left under DADC_MAX_FLAGS], shared by a restore's
    replicas; None: no cap). Past any, rows are skipped with the reason, never written."""

    def __init__(self, downloaded, room=None):
        self.rows = ROWS_BASE + downloaded // BYTES_PER_ROW
        self.bytes = WRITE_BASE + WRITE_FACTOR * downloaded
        self.deadline = time.monotonic() + TIME_BASE + TIME_PER_ROW * self.rows
        self.room = room

    def take(self, images):
        size = sum(len(data) for data in images.values())
        if self.rows <= 0 or self.bytes < size or time.monotonic() > self.deadline:
            raise _Skip("over the replica's share (rows, bytes or time for its download's size)")
        if self.room is not None and self.room[0] <= 0:
            raise _Skip("over the store's cap (DADC_MAX_FLAGS)")
        self.rows, self.bytes = self.rows - 1, self.bytes - size
        if self.room is not None:
            self.room[0] -= 1


def _good_votes(items, check, skipped):
    good = []
    for where, n, item in items:
        try:
            good.append(check(item))
        except _Skip as e:
            _skip(skipped, where, n, _Skip(f"vote: {e.reason}", e.detail))
    return good


def _parquet_rows(path, skipped):
    """(path, row number, row dict) of each row of a downloaded parquet shard, a few at a time. A
    shard that is no regular file, claims row groups over MAX_ROW_GROUP bytes or is not readable
    parquet is skipped (its rows, unread, count once); a row whose images are over their byte limits
    is skipped before its bytes are copied out of the batch (memory stays bounded: a shard's
    dictionary encoding can repeat one 4 MiB image in every row)."""
    import pyarrow as pa
    import pyarrow.parquet as pq  # only a restore or a migration reads parquet

    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            raise _Skip("shard not a regular file", path.name)
        with pq.ParquetFile(path) as f:
            meta = f.metadata
            if any(meta.row_group(i).total_byte_size > MAX_ROW_GROUP for i in range(meta.num_row_groups)):
                raise _Skip("shard row group too large", path.name)
            n = 0
            for batch in f.iter_batches(batch_size=8):
                sizes = list(zip(_byte_lengths(batch, "image"), _byte_lengths(batch, "canvas")))
                small = [i <= MAX_IMAGE_BYTES and c <= MAX_CANVAS_BYTES for i, c in sizes]
                rows = iter(batch.filter(pa.array(small)).to_pylist())
                for ok, (i, c) in zip(small, sizes):
                    n += 1
                    if ok:
                        yield path, n, next(rows)
                    else:
                        what, most = ("image", MAX_IMAGE_BYTES) if i > MAX_IMAGE_BYTES else ("canvas", MAX_CANVAS_BYTES)
                        _skip(skipped, path, n, _Skip(f"{what} over {most} bytes"))
    except _Skip as e:
        _skip(skipped, path, 0, e)
    except Exception as e:  # pyarrow raises many kinds on hostile bytes
        _skip(skipped, path, 0, _Skip("shard unreadable", f"{type(e).__name__} {path.name}"))


def _byte_lengths(batch, key):
    """The length of each row's `key` image bytes ({"bytes", "path"} as `datasets` writes an Image),
    0 where there is none, read from the batch without copying the bytes out."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if key not in batch.schema.names or not pa.types.is_struct(batch.schema.field(key).type) \
            or batch.schema.field(key).type.get_field_index("bytes") < 0:
        return [0] * batch.num_rows
    values = pc.struct_field(batch.column(key), "bytes")
    if not (pa.types.is_binary(values.type) or pa.types.is_large_binary(values.type)):
        return [0] * batch.num_rows
    return pc.fill_null(pc.binary_length(values), 0).to_pylist()


class Folder:
    """A downloaded replica folder of the earlier layout: data/<replica>/ with metadata.jsonl,
    votes.jsonl and images/*.png."""

    def __init__(self, path, room=None):
        self.path = Path(path)
        self.name = self.path.name
        self.room = room  # see Budget

    def rows(self, known, skipped):
        """(canonical row, {image name: PNG bytes}) for each good row, in order."""
        if self.path.is_symlink() or not self.path.is_dir():
            return iter(())
        downloaded = sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file() and not p.is_symlink())
        items = ((self.path / ROWS, n, line) for n, line in _lines(self.path / ROWS))
        return _good_rows(items, lambda line, seen: _restored_row(line, self.path, seen), known, skipped,
                          Budget(downloaded, self.room))

    def votes(self, known, skipped):
        """The good votes, canonical."""
        items = [(self.path / VOTES, n, line) for n, line in _lines(self.path / VOTES)]
        return _good_votes(items, lambda line: _vote(_object(line), known), skipped)


class Shards:
    """The downloaded parquet shards of one replica: data/<replica>/*.parquet (flags) and
    votes/<replica>/*.parquet, read in the order they were pushed (their names: first row)."""

    def __init__(self, name, flag_files, vote_files, room=None, start=(0, 0)):
        self.name = name
        self.flag_files, self.vote_files = sorted(flag_files), sorted(vote_files)
        self.room = room  # see Budget
        self.start = start     # (flags, votes) rows taken by an earlier pull: their rows are passed over
        self.end = list(start)  # (flags, votes): rows seen so far, where the next pull starts

    def rows(self, known, skipped):
        """(canonical row, {image name: PNG bytes}) for each good row, in order."""
        downloaded = sum(os.lstat(p).st_size for p in self.flag_files)
        return _good_rows(self._items(self.flag_files, skipped, 0), _shard_row, known, skipped,
                          Budget(downloaded, self.room))

    def votes(self, known, skipped):
        return _good_votes(list(self._items(self.vote_files, skipped, 1)), lambda row: _vote(row, known), skipped)

    def _items(self, paths, skipped, k):
        """The rows of the shards from row start[k] on: a shard's name is its first row's number."""
        for path in paths:
            first = int(path.stem) if path.stem.isdigit() else 0
            for where, n, row in _parquet_rows(path, skipped):
                self.end[k] = max(self.end[k], first + n)
                if first + n > self.start[k]:
                    yield where, n, row
