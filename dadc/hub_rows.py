"""Rows downloaded from the Hub are untrusted input (anyone with write access to the dataset repo
wrote them): check each one before the store adopts it (store.fill_replica). A good row is
rewritten as canonical JSON of our own; a bad one is skipped, logged one line (logger
"dadc.restore") and counted by reason. The files are the store's layout: ROWS and VOTES in a
replica folder, images under images/."""
import json
import logging
import math
import os
import re
import stat
from dataclasses import dataclass, field

from PIL import Image

from . import files

ROWS, VOTES = "metadata.jsonl", "votes.jsonl"
MAX_SESSION = 200
HEX_ID = re.compile(r"[0-9a-f]{1,64}")  # an id as FlagStore.append makes it (uuid4 hex); it names the row's images
MAX_CANVAS = 4096    # pixels a side of a restored canvas (the app refuses larger drawings too)
MAX_TIME = 64        # characters of a restored time stamp (ours are 20)
MAX_ROUND = 10**6    # far more rounds than any run makes; keeps the export's int64 column safe

log = logging.getLogger("dadc.restore")

# --- checking rows restored from the Hub (untrusted: anyone with write access to the repo) -----

@dataclass(frozen=True)
class Filled:
    """What store.fill_replica adopted from the folders downloaded for one restore."""
    added: int = 0                                # flagged examples written
    votes: int = 0                                # votes written
    skipped: dict = field(default_factory=dict)   # reason -> rows (flags and votes) left out

    @property
    def skipped_rows(self):
        return sum(self.skipped.values())


class _Skip(ValueError):
    """A downloaded row that must not enter the store: `reason` is its count key, `detail` the log's."""

    def __init__(self, reason, detail=""):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


def _skip(skipped, path, n, e):
    skipped[e.reason] += 1
    detail = repr(e.detail)[:80] if e.detail != "" else ""  # bounded: a row may hold 10,000 characters
    log.warning("restore: skipped line %d of %s/%s: %s %s", n, path.parent.name, path.name, e.reason, detail)


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


def write_rows(fd, rows):
    """Append rows as our own canonical JSON (never the downloaded bytes), fsynced."""
    files.write_all(fd, b"".join((json.dumps(r, separators=(",", ":")) + "\n").encode() for r in rows))
    os.fsync(fd)


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


def _restored_row(line, src):
    """One downloaded metadata line as the canonical row we write, or _Skip. The image names are
    the only ones append() makes, images/<id>.png and images/<id>-canvas.png (or the 28x28 again),
    so no other path on this machine can be named; the images must be there and decode."""
    row = _object(line)
    id_ = row.get("id")
    if not (isinstance(id_, str) and HEX_ID.fullmatch(id_)):
        raise _Skip("bad id", id_)
    file_name = f"images/{id_}.png"
    if row.get("file_name") != file_name:
        raise _Skip("bad file_name", row.get("file_name"))
    if row.get("canvas_file_name") not in (file_name, f"images/{id_}-canvas.png"):
        raise _Skip("bad canvas_file_name", row.get("canvas_file_name"))
    out = {"file_name": file_name, "canvas_file_name": row["canvas_file_name"],
           "label": _int(row, "label", 0, 9), "prediction": _int(row, "prediction", -1, 9),
           "confidences": _confidences(row), "round": _int(row, "round", 0, MAX_ROUND),
           "time": _text(row, "time", MAX_TIME), "session": _text(row, "session", MAX_SESSION), "id": id_}
    if _png_size(_image_file(src, file_name), 28, "image") != (28, 28):
        raise _Skip("image not 28x28", file_name)
    if out["canvas_file_name"] != file_name:
        _png_size(_image_file(src, out["canvas_file_name"]), MAX_CANVAS, "canvas")
    return out


def _image_file(src, name):
    """src/<name> if it is a regular file in src/images itself: no symlink on the way."""
    images, path = src / "images", src / name
    try:
        if not (stat.S_ISDIR(os.lstat(images).st_mode) and stat.S_ISREG(os.lstat(path).st_mode)):
            raise _Skip("image not a regular file", name)
    except FileNotFoundError:
        raise _Skip("image missing", name) from None
    return path


def _png_size(path, max_side, what):
    """The PNG's (width, height) once all its pixels decoded. The header's size is checked first, so
    a small file that claims 8000x8000 is refused before a pixel of it is decoded."""
    try:
        with Image.open(path, formats=["PNG"]) as img:
            if max(img.size) > max_side:
                raise _Skip(f"{what} over {max_side} px", f"{img.size[0]}x{img.size[1]} {path.name}")
            img.load()
            return img.size
    except _Skip:
        raise
    except Image.DecompressionBombError:  # PIL's own limit, from the header too
        raise _Skip(f"{what} over {max_side} px", path.name) from None
    except Exception as e:  # PIL raises many kinds on hostile bytes (OSError, SyntaxError, ValueError...)
        raise _Skip(f"{what} unreadable", f"{type(e).__name__} {path.name}") from None


def _restored_vote(line, known):
    row = _object(line)
    if not (isinstance(row.get("id"), str) and row["id"] in known):
        raise _Skip("unknown id", row.get("id"))
    if not isinstance(row.get("agree"), bool):
        raise _Skip("bad agree", row.get("agree"))
    return {"id": row["id"], "session": _text(row, "session", MAX_SESSION), "agree": row["agree"],
            "time": _text(row, "time", MAX_TIME)}


def good_votes(src, known, skipped):
    """The good votes of a downloaded replica folder, canonical; the others counted in `skipped`."""
    good = []
    for n, line in _lines(src / VOTES):
        try:
            good.append(_restored_vote(line, known))
        except _Skip as e:
            _skip(skipped, src / VOTES, n, _Skip(f"vote: {e.reason}", e.detail))
    return good


def good_rows(src, known, skipped):
    """The good rows of a downloaded replica folder, canonical; the others counted in `skipped`.
    An id the store (or an earlier row of the folder) already has is a duplicate: first one wins."""
    seen, good = set(known), []
    for n, line in _lines(src / ROWS):
        try:
            row = _restored_row(line, src)
            if row["id"] in seen:
                raise _Skip("duplicate id", row["id"])
        except _Skip as e:
            _skip(skipped, src / ROWS, n, e)
            continue
        seen.add(row["id"])
        good.append(row)
    return good
