"""The trainer's working copy of the dataset repo: every replica's flags and votes pulled into its
own store, a little at a time. The Hub is the source of truth; the store under DADC_HOME/flags is
refilled incrementally: a pull reads one listing of the repo's shards (their blob ids), downloads
only the shards that are new or changed since the last pull, and appends the rows past those it took
before (a shard is named by its first row; a merged shard brings old rows again: they are passed
over). What each pull took is recorded in flags/pulled.json after the rows are on disk, so a crash
in between pulls them again (ids the store has are duplicates, skipped). Rows are untrusted input,
checked as a restore checks them (rows.py)."""
from collections import defaultdict

from huggingface_hub.errors import RepositoryNotFoundError

from . import layout
from .rows import Shards
from ..store import PULLED, Filled, fill_replica


def shard_blobs(api, repo_id):
    """(the head commit, {shard path: blob id}) of the dataset repo; (None, {}) if it does not exist."""
    try:
        sha = api.repo_info(repo_id, repo_type="dataset").sha
        tree = api.list_repo_tree(repo_id, repo_type="dataset", recursive=True, revision=sha)
        return sha, {f.path: f.blob_id for f in tree if getattr(f, "blob_id", None) and layout.SHARD.fullmatch(f.path)}
    except RepositoryNotFoundError:
        return None, {}


def pull_flags(api, repo_id, store, max_flags=None):
    """Pull what is new of every replica in the dataset repo into `store` (its own replica aside).
    Returns a store.Filled: examples and votes added, rows skipped by reason."""
    sha, blobs = shard_blobs(api, repo_id)
    record = store.hub.pushed(repo_id, PULLED)
    seen, taken = record.get("seen") or {}, record.get("rows") or {}
    new = sorted(p for p, blob in blobs.items() if seen.get(p) != blob and p.split("/")[1] != store.replica)
    if not new:
        return Filled()
    by_replica = defaultdict(lambda: ([], []))
    with store.hub.scratch() as tmp:
        api.snapshot_download(repo_id, repo_type="dataset", revision=sha, local_dir=tmp, allow_patterns=new)
        for path in new:
            kind, replica = layout.SHARD.fullmatch(path).group(1, 2)
            by_replica[replica][kind == "votes"].append(tmp / path)
        room = None if max_flags is None else [max(0, max_flags - store.count())]
        sources = [Shards(r, flags, votes, room, start=tuple(_taken(taken, r)))
                   for r, (flags, votes) in sorted(by_replica.items())]
        filled = fill_replica(store, *sources, extend=True)
    taken = {**taken, **{src.name: src.end for src in sources}}
    others = {p: blob for p, blob in blobs.items() if p.split("/")[1] != store.replica}  # merged-away ones drop out
    store.hub.record_pushed(repo_id, {"seen": others, "rows": taken}, PULLED)
    return filled


def _taken(taken, replica):
    marks = taken.get(replica)
    ok = isinstance(marks, list) and len(marks) == 2 and all(isinstance(v, int) and v >= 0 for v in marks)
    return marks if ok else [0, 0]
