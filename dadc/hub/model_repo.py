"""The model repo (DADC_MODEL_REPO) as the one record of rounds that a trainer promotes into and
replicas follow (DADC_TRAINER=remote):

    rounds/round-NNN/   model.safetensors, config.json, metrics.json, README.md (its model card)
    rounds/CURRENT      the name of the round every replica serves
    rounds/history.jsonl every attempt and rollback
    README.md           the newest round's model card

Every change is one commit made as a compare-and-swap: create_commit(parent_commit=the commit it
read). If anyone committed meanwhile the Hub refuses it (412), the writer reads again and decides
anew, so two trainers never both promote round-00N and nobody's history is lost. Each promoted round
gets a git tag of its name.
"""
import json
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import CommitOperationAdd
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError

from .. import files
from ..examples import ROUND_NAME
from ..rounds.gate import REFERENCE
from ..rounds.registry import ROUND_FILES
from .model_card import model_card

TRIES = 5  # compare-and-swap attempts before giving up with a clear message


class Moved(RuntimeError):
    """The model repo moved since it was read: the compare-and-swap commit was refused."""


@dataclass(frozen=True)
class Head:
    """The model repo as read at one commit."""
    sha: str | None            # that commit; None: the repo does not exist yet
    rounds: frozenset          # the round names it has
    current: str | None        # its rounds/CURRENT (a round it has), or None
    history: bytes = b""       # its rounds/history.jsonl

    def next_round(self):
        return f"round-{max([0, *(int(n.split('-')[1]) for n in self.rounds)]) + 1:03d}"


def read(api, repo, into, with_round=True):
    """(the repo's Head, the CURRENT round's folder downloaded under `into` or None), all read at
    one commit."""
    try:
        info = api.repo_info(repo, repo_type="model")
    except RepositoryNotFoundError:
        return Head(None, frozenset(), None), None
    paths = {f.rfilename for f in info.siblings or []}
    rounds = frozenset(p.split("/")[1] for p in paths
                       if p.count("/") == 2 and p.startswith("rounds/") and ROUND_NAME.fullmatch(p.split("/")[1]))

    def get(path):
        if path not in paths:
            return None
        try:
            return Path(api.hf_hub_download(repo, path, repo_type="model", revision=info.sha, local_dir=into))
        except EntryNotFoundError:
            return None

    named = get("rounds/CURRENT")
    current = named.read_text().strip() if named else None
    current = current if current in rounds or current == REFERENCE else None  # every replica ships round-000
    history = get("rounds/history.jsonl")
    folder = None
    if current in rounds and with_round:
        for f in ROUND_FILES:
            get(f"rounds/{current}/{f}")
        folder = Path(into) / "rounds" / current
    return Head(info.sha, rounds, current, history.read_bytes() if history else b""), folder


def pull(api, repo, registry, into):
    """Bring the registry in line with the model repo (its CURRENT round, CURRENT and history);
    returns the Head read. A repo with nothing yet leaves the registry as it is."""
    head, folder = read(api, repo, into)
    if head.sha is not None and (head.current or head.history):
        registry.mirror([folder] if folder else [], head.current, head.history)
    return head


def round_ops(round_dir, counts, dataset_repo):
    """The commit operations that put a round folder and its model card on the repo."""
    card = model_card(round_dir, counts, dataset_repo=dataset_repo).encode()
    ops = [CommitOperationAdd(path_or_fileobj=str(round_dir / f), path_in_repo=f"rounds/{round_dir.name}/{f}")
           for f in ROUND_FILES if (round_dir / f).is_file()]
    return ops + [CommitOperationAdd(path_or_fileobj=card, path_in_repo=f"rounds/{round_dir.name}/README.md"),
                  CommitOperationAdd(path_or_fileobj=card, path_in_repo="README.md")]  # the latest round


def history_with(head, entry):
    """The repo's history with one more event (stamped with the time), as Registry.record writes."""
    text = head.history if not head.history or head.history.endswith(b"\n") else head.history + b"\n"
    return text + (json.dumps({"time": files.utc_now(), **entry}, separators=(",", ":")) + "\n").encode()


def state_ops(current, history):
    ops = [CommitOperationAdd(path_or_fileobj=history, path_in_repo="rounds/history.jsonl")]
    if current:
        ops.append(CommitOperationAdd(path_or_fileobj=current.encode(), path_in_repo="rounds/CURRENT"))
    return ops


def commit(api, repo, head, ops, message):
    """One compare-and-swap commit on top of `head`; Moved if the repo is not at head.sha any more
    (also when it did not exist: it is created, then read again)."""
    if head.sha is None:
        api.create_repo(repo, repo_type="model", private=True, exist_ok=True)
        raise Moved(f"{repo} was created")
    try:
        return api.create_commit(repo, repo_type="model", operations=ops, commit_message=message,
                                 parent_commit=head.sha)
    except HfHubHTTPError as e:
        if getattr(e.response, "status_code", None) in (409, 412):  # "A commit has happened since"
            raise Moved(f"{repo} moved since commit {head.sha[:8]}") from None
        raise


def rollback(api, repo, name, why, into):
    """Make `name` the round every replica serves: CURRENT and a rollback event, committed with
    compare-and-swap (read again and retried when the repo moved). Returns the new Head."""
    for _ in range(TRIES):
        head, _ = read(api, repo, into, with_round=False)
        if name not in head.rounds and name != REFERENCE:
            raise ValueError(f"no round named {name!r} on {repo}; rounds: {', '.join(sorted(head.rounds)) or 'none'}")
        history = history_with(head, {"event": "rollback", "from": head.current or REFERENCE, "to": name, "why": why})
        try:
            info = commit(api, repo, head, state_ops(name, history), f"Roll back to {name}")
        except Moved:
            continue
        return Head(info.oid, head.rounds, name, history)
    raise RuntimeError(f"{repo} kept moving: the rollback to {name} was not made after {TRIES} tries; try again")
