"""Durable files: the few idioms every writer under DADC_HOME uses, written once.

- write_atomic: a file either does not exist or is complete (temp file, fsync, rename, fsync dir);
- locked: an exclusive (or shared) flock held on an open file. flock locks belong to open file
  descriptions, so this excludes threads of one process as well as other processes on one home;
  try_locked: the same, exclusive, without waiting (None when someone else holds it);
- append_line: one JSON row appended whole and fsynced, under the file's lock, after cutting a
  torn tail (a writer killed mid-line); a row that could not be written whole is cut back out;
- read_jsonl: the rows of a JSON-lines file, a torn or corrupt line skipped, never fatal;
- utc_now: the one time stamp format of every row and record.
"""
import errno
import fcntl
import json
import os
import time
import uuid
from contextlib import contextmanager
from pathlib import Path


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def fsync_dir(path):
    """Make renames and new names inside `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd, data):
    # os.write may write less than asked (e.g. the disk fills up mid-way): loop until done or error
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n == 0:
            raise OSError(errno.ENOSPC, "no space left on device")
        view = view[n:]


def write_atomic(path, data, tmp_dir=None):
    """Write bytes (or text) to `path` so that it either keeps its old content or has all of the
    new one. The temp file lives in tmp_dir (same file system) or next to `path`."""
    path = Path(path)
    data = data.encode() if isinstance(data, str) else data
    tmp = Path(tmp_dir or path.parent) / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(path.parent)


@contextmanager
def locked(path, flags=os.O_RDWR | os.O_CREAT, shared=False):
    """Open `path` and hold its flock until the block ends; yields the descriptor."""
    fd = os.open(path, flags, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)  # closing the descriptor releases the flock


@contextmanager
def try_locked(path, flags=os.O_RDWR | os.O_CREAT):
    """As locked (exclusive), but never waits: yields the descriptor, or None when another open
    file (this process or another) holds the lock; the lock, if taken, is held until the block ends."""
    fd = os.open(path, flags, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield None
        else:
            yield fd
    finally:
        os.close(fd)


def repair_tail(fd):
    """Cut a torn last line (a crash or a full disk mid-write) so the next row starts on its own
    line. Call with the file's lock held. Returns the file size after the repair."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size
    data = os.pread(fd, size, 0)  # rare path: read it all, keep up to the last newline
    keep = data.rfind(b"\n") + 1
    os.ftruncate(fd, keep)
    os.fsync(fd)
    return keep


def repair(path):
    """Cut a torn tail of `path` if it has one (at start: a writer may have died mid-line)."""
    try:
        with locked(path, os.O_RDWR) as fd:
            repair_tail(fd)
    except FileNotFoundError:
        pass
    except OSError:
        pass  # read-only home: readers skip a torn line anyway


def append_line(path, row):
    """Append one JSON row, whole and fsynced, or raise OSError with nothing of it left behind."""
    line = (json.dumps(row, separators=(",", ":")) + "\n").encode()
    with locked(path, os.O_RDWR | os.O_APPEND | os.O_CREAT) as fd:
        size = repair_tail(fd)
        try:
            write_all(fd, line)
            os.fsync(fd)
        except BaseException:
            try:  # a half-written row must not count: cut back to where it started
                os.ftruncate(fd, size)
            except OSError:
                pass
            raise


def read_jsonl(path):
    """The dict rows of a JSON-lines file (none if it does not exist); torn or corrupt lines skipped."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    rows = []
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
