"""Push this replica's new flags and votes to the dataset repo as parquet shards (layout.py):
one commit per push, then the record of what it carried (store.hub.record_pushed), so a restart
sends only what is new.

A push every DADC_PUSH_DELAY for months would leave a shard per push. So shards are merged as a
log-structured store does: each shard's size class is log_MERGE of its rows, and when the newest
MERGE shards of a file share a class, the push rewrites them as one (in the same commit: the new
shard, named by its first row, replaces the first of them, the others are deleted). A replica then
keeps O(MERGE * log(rows)) shards, and each row is uploaded O(log(rows)) times."""
import logging
import math

from huggingface_hub import CommitOperationAdd, CommitOperationDelete

from . import layout
from .rows import ROWS, VOTES

log = logging.getLogger("dadc.hubsync")


ROW_FILES = {ROWS: "data", VOTES: "votes"}  # a replica's row file -> the Hub folder of its shards
MERGE = 8      # this many shards of one size class in a row are merged into one
SEALED = 99    # the class of a shard split off at SHARD_BYTES: full, never merged again


def mark_of(marks, name):
    """What the pushes recorded so far carried of one row file: its first `bytes`, `rows` rows, and
    the shards they made, [first row, byte offset, size class] each, oldest first (a record from
    before merging has none: its shards are never merged)."""
    mark = marks.get(name)
    ok = isinstance(mark, dict) and all(isinstance(mark.get(k), int) and mark[k] >= 0 for k in ("bytes", "rows"))
    if not ok:
        return {"bytes": 0, "rows": 0, "shards": []}
    shards = mark.get("shards")
    ok = isinstance(shards, list) and all(isinstance(s, list) and len(s) == 3 and all(isinstance(v, int) for v in s)
                                          for s in shards)
    return {**mark, "shards": shards if ok else []}


def _flag_records(file, rows):
    """The shard records of a store file's rows, with their images' bytes. A row that is not whole
    or whose image is gone (edited by hand: append() never leaves one) is logged and left out, so
    it cannot stop every later push."""
    for row in rows:
        try:
            yield layout.flag_record(row, file.image(row["file_name"]), file.image(row["canvas_file_name"]))
        except (KeyError, TypeError, OSError) as e:
            log.warning("push: left out row %r of %s: %s", str(row.get("id"))[:64], file.path, type(e).__name__)


def push_flags(api, repo_id, store):
    """One commit: the card if it changed, and a shard of each row file's rows past what the
    record (store.pushed) says earlier pushes carried; then the record, once the commit worked.
    No record (a first push, or it was lost) means from row 0: this replica's shards already
    on the Hub are then deleted in the same commit, the new ones holding all their rows."""
    marks = _settled(api, repo_id, store, store.hub.pushed(repo_id))
    files_now = store.hub.snapshot()
    if any(files_now[name].size < mark_of(marks, name)["bytes"] for name in ROW_FILES):
        marks = {}  # a row file is shorter than what was pushed of it: not the file we pushed
    with store.hub.scratch() as tmp:
        ops, new_marks = [], {"card": layout.CARD_SHA}
        if marks.get("card") != layout.CARD_SHA:
            ops.append(CommitOperationAdd(path_or_fileobj=layout.CARD.encode(), path_in_repo="README.md"))
        merged = []
        for name, kind in ROW_FILES.items():
            shards, new_marks[name], gone = _push_file(store, files_now[name], kind, mark_of(marks, name), tmp)
            ops += [CommitOperationAdd(path_or_fileobj=str(path), path_in_repo=rel) for rel, path in shards]
            merged += gone
        added = {op.path_in_repo for op in ops}
        if not marks:
            ops += _stale_shards(api, repo_id, store, added)
        elif merged:  # only those on the Hub: a commit whose record was lost may have deleted some already
            on_hub = set(layout.repo_files(api, repo_id) or [])
            ops += [CommitOperationDelete(path_in_repo=p) for p in merged if p in on_hub and p not in added]
        if not ops:
            return None
        rows = {k: new_marks[k]["rows"] - mark_of(marks, k)["rows"] for k in ROW_FILES}
        store.hub.record_pushed(repo_id, {**marks, "pending": new_marks})  # the intent, settled if we die
        info = api.create_commit(repo_id=repo_id, repo_type="dataset", operations=ops,
                                 commit_message=f"Replica {store.replica}: {rows[ROWS]} flags, "
                                                f"{rows[VOTES]} votes")
    store.hub.record_pushed(repo_id, new_marks)
    return info

def _settled(api, repo_id, store, record):
    """The record of what earlier pushes carried. A record that still holds a push's intent
    ("pending": that push died, or its commit failed, between intent and record) may be behind the
    Hub: if the commit landed and merged shards, pushing on from the old record would put rows in
    two shards. One listing of the repo settles it: this replica's shards on the Hub are those of
    the intent (it landed), or those of the record (it did not); anything else: from row 0 again."""
    intent = record.pop("pending", None)
    if intent is None:
        return record
    mine = (f"data/{store.replica}/", f"votes/{store.replica}/")
    on_hub = {p for p in layout.repo_files(api, repo_id) or [] if p.startswith(mine) and layout.SHARD.fullmatch(p)}
    for marks in (intent, record):
        if isinstance(marks, dict) and on_hub == _shard_paths(store, marks):
            return marks
    return {}


def _shard_paths(store, marks):
    return {layout.shard_name(kind, store.replica, tier[0])
            for name, kind in ROW_FILES.items() for tier in mark_of(marks, name)["shards"]}


def _size_class(rows):
    return int(math.log(max(rows, 1), MERGE))


def _push_file(store, file, kind, mark, tmp):
    """(shards to add, the new mark, repo paths of shards merged away) for one row file: its rows
    past `mark` as a new shard; if that makes MERGE shards of one size class in a row, those are
    rewritten as one instead (and again, while the merged one completes another such run)."""
    shards, new_mark = _shards(store, file, kind, mark, tmp)
    if not shards:
        return [], {**new_mark, "shards": mark["shards"]}, []
    if len(shards) > 1:  # split at SHARD_BYTES: full shards, never merged
        return shards, {**new_mark, "shards": mark["shards"] + [[_first(rel), -1, SEALED] for rel, _ in shards]}, []
    tiers = mark["shards"] + [[mark["rows"], mark["bytes"], _size_class(new_mark["rows"] - mark["rows"])]]
    gone = []
    while len(tiers) >= MERGE and len({t[2] for t in tiers[-MERGE:]}) == 1 and tiers[-1][2] < SEALED:
        run = tiers[-MERGE:]
        gone += [layout.shard_name(kind, store.replica, t[0]) for t in run[1:]]
        tiers[-MERGE:] = [[run[0][0], run[0][1], _size_class(new_mark["rows"] - run[0][0])]]
    if gone:  # rewrite from the merged shard's first row
        first, offset, _ = tiers[-1]
        shards, new_mark = _shards(store, file, kind, {"bytes": offset, "rows": first}, tmp)
        if len(shards) > 1:
            tiers[-1:] = [[_first(rel), -1, SEALED] for rel, _ in shards]
    return shards, {**new_mark, "shards": tiers}, gone


def _first(rel):
    return int(layout.SHARD.fullmatch(rel).group(3))


def _shards(store, file, kind, mark, tmp):
    """([(path in repo, local shard file)], the new mark) for the rows of `file` past `mark`:
    usually one shard; more when they hold over layout.SHARD_BYTES of images."""
    rows, end = file.rows(mark["bytes"])
    if kind == "data":
        groups, schema = layout.chunks(_flag_records(file, rows)), layout.FLAG_SCHEMA
    else:
        groups, schema = [[layout.vote_record(r) for r in rows]] if rows else [], layout.VOTE_SCHEMA
    out, first = [], mark["rows"]
    for group in groups:
        rel = layout.shard_name(kind, store.replica, first)
        path = tmp / rel.replace("/", "_")
        layout.write_shard(group, schema, path)
        out.append((rel, path))
        first += len(group)
    return out, {"bytes": end, "rows": first}

def _stale_shards(api, repo_id, store, keep):
    """Deletions of this replica's shards on the Hub but those in `keep` (being rewritten)."""
    mine = (f"data/{store.replica}/", f"votes/{store.replica}/")
    return [CommitOperationDelete(path_in_repo=p) for p in layout.repo_files(api, repo_id) or []
            if p.startswith(mine) and layout.SHARD.fullmatch(p) and p not in keep]
