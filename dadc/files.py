"""Durable files: the few idioms every writer under DADC_HOME uses, written once.

- write_atomic: a file either does not exist or is complete (temp file, fsync, rename, fsync dir);
- place + fsync_all: files put in place now and made durable later, their fsyncs (and their
  folder's) issued together, so a journalling file system commits them once instead of once each;
- locked: an exclusive (or shared) flock held on an open file. flock locks belong to open file
  descriptions, so this excludes threads of one process as well as other processes on one home;
  try_locked: the same, exclusive, without waiting (None when someone else holds it);
- append_line: one JSON row appended whole and fsynced, under the file's lock, after cutting a
  torn tail (a writer killed mid-line); a row that could not be written whole is cut back out;
- parse_rows, read_jsonl, read_tail: the rows of JSON-lines bytes, of a whole file, of what was
  appended past an offset (whole lines only); a torn or corrupt line skipped, never fatal;
- write_rows: rows appended as canonical JSON and fsynced (rows adopted from outside);
- utc_now: the one time stamp format of every row and record.
"""
import errno
import fcntl
import json
import logging
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("dadc.files")


APP_LOCK = "app.lock"  # under DADC_HOME: held by the one process serving or importing into that home


def hold_app(home):
    """Hold DADC_HOME/app.lock until the process ends (see hold): one app, or one import, per home.
    Raises Busy when another process holds it."""
    return hold(Path(home) / APP_LOCK)


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


def write_atomic(path, data, tmp_dir=None, sync_dir=True):
    """Write bytes (or text) to `path` so that it either keeps its old content or has all of the
    new one. The temp file lives in tmp_dir (same file system) or next to `path`. sync_dir=False
    leaves the rename's durability to one fsync_dir after several writes into one folder."""
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
    if sync_dir:
        fsync_dir(path.parent)


def place(path, data, tmp_dir=None):
    """Write bytes to a temp file (in tmp_dir, same file system, or next to `path`) and rename it to
    `path`, *not yet durable*: returns the file's open descriptor. The caller closes it after
    fsync_all([it, ..., folder's descriptor]) and names `path` anywhere durable only after that
    returned. A crash before then may leave `path` missing, empty or partial, so use it only for a
    file nothing reads unless a later, durable record names it (the store's images)."""
    path = Path(path)
    tmp = Path(tmp_dir or path.parent) / f".{path.name}.{uuid.uuid4().hex}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        write_all(fd, data)
        os.replace(tmp, path)
    except BaseException:
        os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return fd


_SYNC_POOL, _SYNC_POOL_LOCK = None, threading.Lock()


def fsync_all(fds):
    """fsync every descriptor (files and folders alike), all at once: the calls run concurrently,
    so on a journalling file system (ext4, xfs) they share one journal commit, where one after the
    other each waits for its own (3-4x faster here than in sequence). Returns when all are durable;
    raises the first OSError (all were still waited for)."""
    global _SYNC_POOL
    fds = list(fds)
    if len(fds) <= 1:
        for fd in fds:
            os.fsync(fd)
        return
    with _SYNC_POOL_LOCK:
        if _SYNC_POOL is None:
            _SYNC_POOL = ThreadPoolExecutor(max_workers=16, thread_name_prefix="dadc-fsync")
    futures = [_SYNC_POOL.submit(os.fsync, fd) for fd in fds[1:]]
    error = None
    try:
        os.fsync(fds[0])
    except OSError as e:
        error = e
    for f in futures:
        try:
            f.result()
        except OSError as e:
            error = error or e
    if error is not None:
        raise error


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


class Busy(RuntimeError):
    """A lock that one process at a time may hold is held by another."""


def hold(path):
    """Take the lock file `path` for as long as this process lives (or until the returned descriptor
    is closed), writing our pid into it; Busy, naming the process that holds it, if another does."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise Busy(f"{path} is held by process {holder}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def repair_tail(fd, path=None):
    """Cut a torn last line (a crash or a full disk mid-write) so the next row starts on its own
    line. Call with the file's lock held. The cut bytes are kept aside in `<path>.torn` (one line
    per repair: the count) and logged. Returns the file size after the repair."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size
    data = os.pread(fd, size, 0)  # rare path: read it all, keep up to the last newline
    keep = data.rfind(b"\n") + 1
    if path is not None:
        try:
            with open(f"{path}.torn", "ab") as aside:
                aside.write(data[keep:].replace(b"\n", b" ") + b"\n")
                aside.flush()
                os.fsync(aside.fileno())
        except OSError:
            pass  # a full disk: the cut matters more than the copy
        log.warning("%s: cut a torn last line of %d bytes (kept in %s.torn)", path, size - keep, path)
    os.ftruncate(fd, keep)
    os.fsync(fd)
    return keep


def repair(path):
    """Cut a torn tail of `path` if it has one (at start: a writer may have died mid-line)."""
    try:
        with locked(path, os.O_RDWR) as fd:
            repair_tail(fd, path)
    except FileNotFoundError:
        pass
    except OSError:
        pass  # read-only home: readers skip a torn line anyway


def append_line(path, row):
    """Append one JSON row, whole and fsynced, or raise OSError with nothing of it left behind."""
    line = (json.dumps(row, separators=(",", ":")) + "\n").encode()
    with locked(path, os.O_RDWR | os.O_APPEND | os.O_CREAT) as fd:
        size = repair_tail(fd, path)
        try:
            write_all(fd, line)
            os.fsync(fd)
        except BaseException:
            try:  # a half-written row must not count: cut back to where it started
                os.ftruncate(fd, size)
            except OSError:
                pass
            raise


def parse_rows(data: bytes) -> list:
    """The dict rows of JSON-lines bytes; blank, torn or corrupt lines skipped, never fatal."""
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


def read_jsonl(path):
    """The dict rows of a JSON-lines file (none if it does not exist); torn or corrupt lines skipped."""
    try:
        return parse_rows(Path(path).read_bytes())
    except FileNotFoundError:
        return []


def read_tail(path, start=0, end=None):
    """(the rows of the whole lines between byte `start` and `end` (the file's end if None), the
    byte offset after the last of them): what a reader that follows an appended file reads next.
    A line still being written (no newline yet) is left for the next read."""
    try:
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read(-1 if end is None else max(0, end - start))
    except FileNotFoundError:
        return [], start
    whole = data.rfind(b"\n") + 1
    return parse_rows(data[:whole]), start + whole


def write_rows(fd, rows):
    """Append rows to an open file as our own canonical JSON, one a line, fsynced."""
    write_all(fd, b"".join((json.dumps(r, separators=(",", ":")) + "\n").encode() for r in rows))
    os.fsync(fd)
