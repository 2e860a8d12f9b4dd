"""Bring the flags and rounds back from the Hub into a home that lacks them (a Space restarted
with an empty disk). Local disk stays the source of truth: only replica folders the store lacks
are filled, and rounds only come into a home that has trained none of its own."""
from pathlib import Path

from huggingface_hub.errors import RepositoryNotFoundError

from . import layout
from .rows import Folder, Shards
from ..rounds.registry import ROUND_FILES
from ..store import Filled, fill_replica


def _download(api, repo_id, repo_type, allow_patterns, into):
    """Download into `into`; False if the repo does not exist yet (nothing was ever pushed)."""
    try:
        api.snapshot_download(repo_id, repo_type=repo_type, local_dir=into, allow_patterns=allow_patterns)
    except RepositoryNotFoundError:
        return False
    return True


def missing_replicas(paths, store):
    """{replica: "shards" | "folder"} for the replicas of the repo (its file paths) that the store
    lacks: a replica with parquet shards restores from them (they hold all its rows: a push starts
    from row 0 where nothing was recorded), else from its folder of the earlier layout."""
    shards = layout.shard_replicas(paths)
    found = {**{r: "folder" for r in layout.old_replicas(paths)}, **{r: "shards" for r in shards}}
    return {r: how for r, how in sorted(found.items()) if store.hub.lacks_replica(r)}


def _patterns(replica, how):
    if how == "shards":
        return [f"data/{replica}/*.parquet", f"votes/{replica}/*.parquet"]
    return [f"data/{replica}/{f}" for f in ("metadata.jsonl", "votes.jsonl", "images/*.png")]


def _source(tmp, replica, how, room):
    """What was downloaded for one replica, as rows.py reads it."""
    if how == "folder":
        return Folder(tmp / "data" / replica, room)
    return Shards(replica, (tmp / "data" / replica).glob("*.parquet"), (tmp / "votes" / replica).glob("*.parquet"),
                  room)


def restore_flags(api, repo_id, store, max_flags=None):
    """Fill every replica the store lacks from the dataset repo. Its rows are untrusted: the store
    checks each one and skips (logs, counts) the bad ones; each replica brings at most its share
    (rows.Budget), all of them together no more than the store's room under `max_flags`. Returns a
    store.Filled: examples added and rows skipped by reason."""
    paths = layout.repo_files(api, repo_id)
    missing = missing_replicas(paths or [], store)
    if not missing:
        return Filled()
    with store.hub.scratch() as tmp:
        patterns = [p for r, how in missing.items() for p in _patterns(r, how)]
        if not _download(api, repo_id, "dataset", patterns, tmp):
            return Filled()
        # all at once: a vote in one replica may name a flag in another
        room = None if max_flags is None else [max(0, max_flags - store.count())]
        return fill_replica(store, *(_source(tmp, r, how, room) for r, how in missing.items()))


def restore_rounds(api, model_repo, registry, store):
    """The rounds of the model repo, with CURRENT and the history, into a registry that has trained
    none of its own (else the Hub's rounds could share names with other weights: this home's
    lineage stays as it is)."""
    if registry.has_trained() or registry.history():
        return []
    with store.hub.scratch() as tmp:
        patterns = [f"rounds/round-*/{f}" for f in ROUND_FILES] + ["rounds/CURRENT", "rounds/history.jsonl"]
        if not _download(api, model_repo, "model", patterns, tmp):
            return []
        rounds = Path(tmp, "rounds")
        folders = sorted(p for p in rounds.iterdir() if p.is_dir()) if rounds.is_dir() else []
        return registry.adopt_restored(folders, current=rounds / "CURRENT", history=rounds / "history.jsonl")
