"""Bring the flags and rounds back from the Hub into a home that lacks them (a Space restarted
with an empty disk). Local disk stays the source of truth: only replica folders the store lacks
are filled, and rounds only come into a home that has trained none of its own."""
from pathlib import Path

from huggingface_hub.errors import RepositoryNotFoundError

from .registry import ROUND_FILES
from .store import fill_replica
from .store import Filled


def _download(api, repo_id, repo_type, allow_patterns, into):
    """Download into `into`; False if the repo does not exist yet (nothing was ever pushed)."""
    try:
        api.snapshot_download(repo_id, repo_type=repo_type, local_dir=into, allow_patterns=allow_patterns)
    except RepositoryNotFoundError:
        return False
    return True


def missing_replicas(api, repo_id, store):
    """Replica folders in the dataset repo whose flags the store does not have (one listing)."""
    try:
        info = api.repo_info(repo_id, repo_type="dataset")
    except RepositoryNotFoundError:
        return []  # first start: nothing pushed yet
    remote = {f.rfilename.split("/")[1] for f in info.siblings or [] if f.rfilename.startswith("data/")
              and f.rfilename.endswith(("/metadata.jsonl", "/votes.jsonl"))}  # a voter may have no flags
    return [r for r in sorted(remote) if store.lacks_replica(r)]


def restore_flags(api, repo_id, store):
    """Fill every replica folder the store lacks from the dataset repo. Its rows are untrusted: the
    store checks each one and skips (logs, counts) the bad ones. Returns a store.Filled: examples
    added and rows skipped by reason."""
    missing = missing_replicas(api, repo_id, store)
    if not missing:
        return Filled()
    with store.scratch() as tmp:
        patterns = [f"data/{r}/{f}" for r in missing for f in ("metadata.jsonl", "votes.jsonl", "images/*.png")]
        if not _download(api, repo_id, "dataset", patterns, tmp):
            return Filled()
        folders = sorted((tmp / "data").iterdir()) if (tmp / "data").is_dir() else []
        return fill_replica(store, *folders)  # all at once: a vote in one folder may name a flag in another


def restore_rounds(api, model_repo, registry, store):
    """The rounds of the model repo, with CURRENT and the history, into a registry that has trained
    none of its own (else the Hub's rounds could share names with other weights: this home's
    lineage stays as it is)."""
    if registry.has_trained() or registry.history():
        return []
    with store.scratch() as tmp:
        patterns = [f"rounds/round-*/{f}" for f in ROUND_FILES] + ["rounds/CURRENT", "rounds/history.jsonl"]
        if not _download(api, model_repo, "model", patterns, tmp):
            return []
        rounds = Path(tmp, "rounds")
        folders = sorted(p for p in rounds.iterdir() if p.is_dir()) if rounds.is_dir() else []
        return registry.adopt_restored(folders, current=rounds / "CURRENT", history=rounds / "history.jsonl")
