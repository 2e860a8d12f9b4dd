"""Push this replica's new flags and votes to the dataset repo as parquet shards (hub_layout.py):
one commit per push, then the record of what it carried (store.hub.record_pushed), so a restart
sends only what is new."""
import logging

from huggingface_hub import CommitOperationAdd, CommitOperationDelete

from . import hub_layout, hub_restore
from .hub_rows import ROWS, VOTES

log = logging.getLogger("dadc.hubsync")


ROW_FILES = {ROWS: "data", VOTES: "votes"}  # a replica's row file -> the Hub folder of its shards


def mark_of(marks, name):
    """What the pushes recorded so far carried of one row file: its first `bytes`, `rows` rows."""
    mark = marks.get(name)
    ok = isinstance(mark, dict) and all(isinstance(mark.get(k), int) and mark[k] >= 0 for k in ("bytes", "rows"))
    return mark if ok else {"bytes": 0, "rows": 0}


def _flag_records(file, rows):
    """The shard records of a store file's rows, with their images' bytes. A row that is not whole
    or whose image is gone (edited by hand: append() never leaves one) is logged and left out, so
    it cannot stop every later push."""
    for row in rows:
        try:
            yield hub_layout.flag_record(row, file.image(row["file_name"]), file.image(row["canvas_file_name"]))
        except (KeyError, TypeError, OSError) as e:
            log.warning("push: left out row %r of %s: %s", str(row.get("id"))[:64], file.path, type(e).__name__)


def push_flags(api, repo_id, store):
    """One commit: the card if it changed, and a shard of each row file's rows past what the
    record (store.pushed) says earlier pushes carried; then the record, once the commit worked.
    No record (a first push, or it was lost) means from row 0: this replica's shards already
    on the Hub are then deleted in the same commit, the new ones holding all their rows."""
    marks = store.hub.pushed(repo_id)
    files_now = store.hub.snapshot()
    if any(files_now[name].size < mark_of(marks, name)["bytes"] for name in ROW_FILES):
        marks = {}  # a row file is shorter than what was pushed of it: not the file we pushed
    with store.hub.scratch() as tmp:
        ops, new_marks = [], {"card": hub_layout.CARD_SHA}
        if marks.get("card") != hub_layout.CARD_SHA:
            ops.append(CommitOperationAdd(path_or_fileobj=hub_layout.CARD.encode(), path_in_repo="README.md"))
        for name, kind in ROW_FILES.items():
            shards, new_marks[name] = _shards(store, files_now[name], kind, mark_of(marks, name), tmp)
            ops += [CommitOperationAdd(path_or_fileobj=str(path), path_in_repo=rel) for rel, path in shards]
        if not marks:
            ops += _stale_shards(api, repo_id, store, {op.path_in_repo for op in ops})
        if not ops:
            return None
        rows = {k: new_marks[k]["rows"] - mark_of(marks, k)["rows"] for k in ROW_FILES}
        info = api.create_commit(repo_id=repo_id, repo_type="dataset", operations=ops,
                                 commit_message=f"Replica {store.replica}: {rows[ROWS]} flags, "
                                                f"{rows[VOTES]} votes")
    store.hub.record_pushed(repo_id, new_marks)
    return info

def _shards(store, file, kind, mark, tmp):
    """([(path in repo, local shard file)], the new mark) for the rows of `file` past `mark`:
    usually one shard; more when they hold over hub_layout.SHARD_BYTES of images."""
    rows, end = file.rows(mark["bytes"])
    if kind == "data":
        groups, schema = hub_layout.chunks(_flag_records(file, rows)), hub_layout.FLAG_SCHEMA
    else:
        groups, schema = [[hub_layout.vote_record(r) for r in rows]] if rows else [], hub_layout.VOTE_SCHEMA
    out, first = [], mark["rows"]
    for group in groups:
        rel = hub_layout.shard_name(kind, store.replica, first)
        path = tmp / rel.replace("/", "_")
        hub_layout.write_shard(group, schema, path)
        out.append((rel, path))
        first += len(group)
    return out, {"bytes": end, "rows": first}

def _stale_shards(api, repo_id, store, keep):
    """Deletions of this replica's shards on the Hub but those in `keep` (being rewritten)."""
    mine = (f"data/{store.replica}/", f"votes/{store.replica}/")
    return [CommitOperationDelete(path_in_repo=p) for p in hub_restore.repo_files(api, repo_id) or []
            if p.startswith(mine) and hub_layout.SHARD.fullmatch(p) and p not in keep]
