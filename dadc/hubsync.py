"""HubSync: copy the local flag store to a Hub dataset repo, and promoted rounds to a Hub model repo.

Local disk is the source of truth (store.py); the Hub is a backup and a way to share. So:
- pushing runs in the background (huggingface_hub.CommitScheduler: every DADC_PUSH_EVERY minutes
  and once more at exit); a Hub that is down, slow or rejects the token never blocks flagging and
  never loses a flag: what did not get pushed is still on disk and goes with the next push;
- each DADC_HOME pushes only its own folder data/<replica>/ (plus the dataset card), so replicas
  never overwrite each other;
- on a fresh DADC_HOME (a Space restarts with an empty disk) restore() brings back the flags from
  the dataset repo (every replica folder this home lacks) and the rounds from the model repo; a Hub
  that is down at start is retried in the background until the restore has worked;
- the token is never logged, returned or shown: every error text is scrubbed before it leaves.
"""
import json
import os
import re
import shutil
import threading
import time
import uuid
from pathlib import Path

from huggingface_hub import CommitOperationAdd, CommitScheduler, HfApi
from huggingface_hub._commit_scheduler import PartialFileIO
from huggingface_hub.utils import HFValidationError, validate_repo_id

from .store import _repair_tail

ROUND_FILES = ("model.safetensors", "config.json", "metrics.json")  # never a pickle
ROUND_NAME = re.compile(r"round-\d{3,}")
SAFE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
IMAGE_NAME = re.compile(r"[0-9a-f]{1,64}(-canvas)?\.png")


class HubSyncError(RuntimeError):
    """A Hub operation failed; the message is safe to show (no token in it)."""


def check_repo_id(repo_id, what="DADC_DATASET_REPO"):
    """Fail at start, with a clear message, on a repo name the Hub would never accept."""
    try:
        validate_repo_id(repo_id)
        if not repo_id:
            raise HFValidationError("it is empty")
    except HFValidationError as e:
        raise ValueError(f"{what}={repo_id!r} is not a valid Hub repo id (want 'namespace/name'): {e}") from None
    return repo_id


def _first_line(e):
    lines = [line for line in str(e).splitlines() if line.strip()]
    return lines[0][:300] if lines else type(e).__name__


def _now():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class HubSync:
    """Background pushes of DADC_HOME/flags/data/<replica>/ to a Hub dataset repo, and of promoted
    rounds to a model repo. Construct (validates names, no network), restore(), then start()."""

    def __init__(self, store, repo_id, token, *, every=5.0, private=True, model_repo=None):
        self.store = store
        self.repo_id = check_repo_id(repo_id)
        self.model_repo = check_repo_id(model_repo, "DADC_MODEL_REPO") if model_repo else None
        if not token:
            raise ValueError("HF_TOKEN is required to push to the Hub")
        if not every > 0:
            raise ValueError(f"DADC_PUSH_EVERY must be > 0 minutes, got {every}")
        self._token = token
        self.every = float(every)
        self.private = private
        self.api = HfApi(token=token)
        self.scheduler = None
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = None
        self._pushed_lines = {}  # jsonl file -> lines included in the last successful push
        self._rounds = []  # round dirs waiting to be pushed (retried on every tick until done)
        self._model_repo_ready = False
        self._restored = False  # restore() has worked once (else _connect retries it)
        self.last_push = None  # time of the last successful push (flags or rounds)
        self.last_error = None  # text of the last failure, cleared by a success; never has the token
        self.rounds_pushed = []

    def __repr__(self):
        return f"HubSync(repo_id={self.repo_id!r}, model_repo={self.model_repo!r}, every={self.every})"

    @classmethod
    def from_settings(cls, settings, store):
        """A HubSync for the app's settings, or None when the Hub is not configured (local only)."""
        if not settings.hub_enabled:
            return None
        return cls(store, settings.dataset_repo, settings.hf_token, every=settings.push_every,
                   model_repo=settings.model_repo)

    # --- errors and status ---------------------------------------------------------------------

    def _scrub(self, text):
        return str(text).replace(self._token, "hf_***") if self._token else str(text)

    def _explain(self, e, doing, then):
        """A short, token-free sentence for the dashboard."""
        # huggingface_hub may wrap the HTTP error (snapshot_download does): look down the chain
        status, inner = None, e
        while inner is not None and status is None:
            status = getattr(getattr(inner, "response", None), "status_code", None)
            inner = inner.__cause__ or inner.__context__
        if status == 401:
            why = "the Hub rejected HF_TOKEN (401 Unauthorized): check the token and its write access"
        elif status == 403:
            why = "HF_TOKEN may not write to this repo (403 Forbidden)"
        elif status is not None:
            why = f"the Hub answered {status}: {_first_line(e)}"
        elif isinstance(e, (OSError, ConnectionError)) or "connect" in type(e).__name__.lower() \
                or "timeout" in type(e).__name__.lower() or "network" in type(e).__name__.lower():
            why = f"cannot reach the Hub ({type(e).__name__}: {_first_line(e)})"
        else:
            why = f"{type(e).__name__}: {_first_line(e)}"
        return self._scrub(f"{doing} failed: {why}. {then}")

    def _fail(self, e, doing, then="Flags are kept locally and retried."):
        msg = self._explain(e, doing, then)
        with self._lock:
            self.last_error = msg
        return HubSyncError(msg)

    def pending(self):
        """Rows (flags and validations) on local disk not yet in a successful push."""
        n = 0
        for name in ("metadata.jsonl", "votes.jsonl"):
            path = self.store.dir / name
            try:
                lines = path.read_bytes().count(b"\n")
            except FileNotFoundError:
                continue
            n += max(0, lines - self._pushed_lines.get(path, 0))
        return n

    def status(self):
        """For the dashboard. Safe to show: no token."""
        with self._lock:
            return {
                "repo": self.repo_id,
                "model_repo": self.model_repo,
                "connected": self.scheduler is not None,
                "last_push": self.last_push,
                "pending": self.pending(),
                "rounds_pending": [d.name for d, _ in self._rounds],
                "last_error": self.last_error,
            }

    # --- restore -------------------------------------------------------------------------------

    def restore(self):
        """Bring back the flags of every replica folder this store lacks, and the missing rounds,
        from the Hub. Hub failures are recorded in status() and do not raise: the app goes on
        locally, and start() retries until it works. Returns {"examples": n, "rounds": [names]}."""
        out, ok = {"examples": 0, "rounds": []}, True
        try:
            out["examples"] = self._restore_flags()
        except Exception as e:
            ok = False
            self._fail(e, "restoring flags from the Hub", "The app goes on with the local store.")
        if self.model_repo:
            try:
                out["rounds"] = self._restore_rounds()
            except Exception as e:
                ok = False
                self._fail(e, "restoring rounds from the Hub", "The app goes on with the local rounds.")
        self._restored = self._restored or ok
        return out

    def _download(self, repo_id, repo_type, allow_patterns):
        """Download into a fresh folder under DADC_HOME (nothing is written outside it). None if no repo."""
        from huggingface_hub.errors import RepositoryNotFoundError

        tmp = self.store.root / "tmp" / f"restore-{uuid.uuid4().hex}"
        try:
            self.api.snapshot_download(repo_id, repo_type=repo_type, local_dir=tmp, allow_patterns=allow_patterns)
        except RepositoryNotFoundError:
            shutil.rmtree(tmp, ignore_errors=True)
            return None  # first start: nothing pushed yet
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return tmp

    def _replicas_to_restore(self):
        """Replica folders in the dataset repo whose flags this store does not have (one listing)."""
        from huggingface_hub.errors import RepositoryNotFoundError

        try:
            info = self.api.repo_info(self.repo_id, repo_type="dataset")
        except RepositoryNotFoundError:
            return []  # first start: nothing pushed yet
        remote = {f.rfilename.split("/")[1] for f in info.siblings or []
                  if f.rfilename.startswith("data/") and f.rfilename.endswith("/metadata.jsonl")}
        missing = []
        for r in sorted(remote):
            rows = self.store.root / "data" / r / "metadata.jsonl"
            # a name from outside is used as a path only when it is a plain name
            if SAFE_NAME.fullmatch(r) and (not rows.is_file() or rows.stat().st_size == 0):
                missing.append(r)
        return missing

    def _restore_flags(self):
        # local is the source of truth: only replica folders missing here are filled, never merged
        missing = self._replicas_to_restore()
        if not missing:
            return 0
        before = self.store.count()
        tmp = self._download(self.repo_id, "dataset", [f"data/{r}/{f}" for r in missing
                                                       for f in ("metadata.jsonl", "votes.jsonl", "images/*.png")])
        if tmp is None:
            return 0
        try:
            for src in sorted((tmp / "data").iterdir()) if (tmp / "data").is_dir() else []:
                if not (src.is_dir() and SAFE_NAME.fullmatch(src.name)):
                    continue  # never trust a path from outside
                dest = self.store.root / "data" / src.name
                (dest / "images").mkdir(parents=True, exist_ok=True)
                for img in (src / "images").glob("*.png"):
                    if IMAGE_NAME.fullmatch(img.name) and not (dest / "images" / img.name).exists():
                        os.replace(img, dest / "images" / img.name)
                # images first, then the rows that name them; under the lock the appenders use
                for name in ("metadata.jsonl", "votes.jsonl"):
                    if (src / name).is_file():
                        self._fill_if_empty(dest / name, (src / name).read_bytes())
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self.store._repair()
        return self.store.count() - before

    def _fill_if_empty(self, path, data):
        import fcntl

        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_size == 0:
                os.write(fd, data)
                _repair_tail(fd)  # a pushed file ends on a whole line, but do not trust it
                os.fsync(fd)
        finally:
            os.close(fd)

    def _restore_rounds(self):
        rounds = self.store.home / "rounds"
        if any(ROUND_NAME.fullmatch(p.name) and p.name != "round-000" for p in rounds.glob("round-*")):
            # rounds were trained here (a late restore, after a Hub outage): the Hub's could share
            # their names with other weights, so this home's lineage stays as it is
            return []
        tmp = self._download(self.model_repo, "model", [f"rounds/round-*/{f}" for f in ROUND_FILES])
        if tmp is None:
            return []
        restored = []
        try:
            rounds.mkdir(parents=True, exist_ok=True)
            for src in sorted((tmp / "rounds").iterdir()) if (tmp / "rounds").is_dir() else []:
                ok = ROUND_NAME.fullmatch(src.name) and all((src / f).is_file() for f in ROUND_FILES[:2])
                if ok and not (rounds / src.name).exists():
                    shutil.rmtree(src / ".cache", ignore_errors=True)
                    os.replace(src, rounds / src.name)  # whole directory at once: never half a round
                    restored.append(src.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return restored

    # --- pushing -------------------------------------------------------------------------------

    def start(self):
        """Connect in the background (the Hub may be down at start: keep trying) and push every
        `every` minutes from then on. Returns at once."""
        self._stopped.clear()
        self._thread = threading.Thread(target=self._connect, name="hubsync-connect", daemon=True)
        self._thread.start()
        return self

    def _connect(self):
        while not self._stopped.is_set():
            if not self._restored:  # the Hub was down at start: the earlier flags come back now
                self.restore()
            if self.scheduler is None:
                try:
                    # creates the repo (private by default) and pushes at once, then every `every` minutes
                    sched = _Scheduler(self, repo_id=self.repo_id, repo_type="dataset", folder_path=self.store.root,
                                       every=self.every, private=self.private, token=self._token,
                                       allow_patterns=[f"data/{self.store.replica}/**", "README.md"])
                    with self._lock:
                        self.scheduler = sched
                except Exception as e:
                    self._fail(e, "connecting to the Hub")
            if self.scheduler is not None and self._restored:
                return
            self._stopped.wait(self.every * 60)

    def push_now(self):
        """Push now (in the background). Returns a Future, or None if not connected yet."""
        sched = self.scheduler
        return sched.trigger() if sched is not None else None

    def push_round(self, round_dir, counts=None):
        """Queue a promoted round for DADC_MODEL_REPO and push it now if connected. `counts` (e.g.
        {"human examples": 120, "mnist examples": 60000}) go into the model card. No-op without a model repo."""
        if not self.model_repo:
            return None
        round_dir = Path(round_dir)
        if not ROUND_NAME.fullmatch(round_dir.name):
            raise ValueError(f"{round_dir} is not a round directory (round-NNN)")
        missing = [f for f in ROUND_FILES[:2] if not (round_dir / f).is_file()]
        if missing:
            raise ValueError(f"{round_dir} lacks {', '.join(missing)}")
        with self._lock:
            self._rounds.append((round_dir, dict(counts or {})))
        return self.push_now()

    def stop(self, timeout=60):
        """Final push, then stop. Safe to call twice."""
        self._stopped.set()
        sched = self.scheduler
        if sched is None:
            return
        try:
            sched.trigger().result(timeout=timeout)
        except Exception:
            pass  # recorded in status; the data is still on disk for the next start
        sched.stop()

    def _snapshot(self, sched):
        """Files to push, each capped at its size now. The jsonl files are measured first, under the
        appenders' lock, so every row pushed names an image that is already in place (images are
        renamed before their row is appended) and no half line is ever pushed."""
        import fcntl

        root, replica_dir = self.store.root, self.store.dir
        sizes = {}
        for name in ("metadata.jsonl", "votes.jsonl"):
            path = replica_dir / name
            if path.exists():
                fd = os.open(path, os.O_RDONLY)
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH)
                    sizes[path] = os.fstat(fd).st_size
                finally:
                    os.close(fd)
        files = []
        candidates = [root / "README.md"] + sorted((replica_dir / "images").glob("*.png")) + list(sizes)
        for path in candidates:
            if not path.is_file():
                continue
            st = path.stat()
            size = sizes.get(path, st.st_size)
            key = (st.st_mtime, size)
            if sched.last_uploaded.get(path) != key:
                files.append((path, path.relative_to(root).as_posix(), size, key))
        return files

    def _push_flags(self, sched):
        files = self._snapshot(sched)
        if not files:
            return None
        ops = [CommitOperationAdd(path_or_fileobj=PartialFileIO(p, size_limit=size), path_in_repo=rel)
               for p, rel, size, _ in files]
        n = len([f for f in files if f[1].endswith("metadata.jsonl")])
        info = sched.api.create_commit(repo_id=sched.repo_id, repo_type="dataset", operations=ops,
                                       commit_message=f"Flags from replica {self.store.replica} ({n} files)")
        for path, _, size, key in files:
            sched.last_uploaded[path] = key
            if path.suffix == ".jsonl":
                with open(path, "rb") as f:
                    self._pushed_lines[path] = f.read(size).count(b"\n")
        return info

    def _push_rounds(self, api):
        while self._rounds:
            round_dir, counts = self._rounds[0]
            if not self._model_repo_ready:
                api.create_repo(self.model_repo, repo_type="model", private=self.private, exist_ok=True)
                self._model_repo_ready = True
            card = model_card(round_dir, counts, dataset_repo=self.repo_id)
            ops = [CommitOperationAdd(path_or_fileobj=str(round_dir / f), path_in_repo=f"rounds/{round_dir.name}/{f}")
                   for f in ROUND_FILES if (round_dir / f).is_file()]
            ops.append(CommitOperationAdd(path_or_fileobj=card.encode(), path_in_repo=f"rounds/{round_dir.name}/README.md"))
            ops.append(CommitOperationAdd(path_or_fileobj=card.encode(), path_in_repo="README.md"))  # latest round
            api.create_commit(repo_id=self.model_repo, repo_type="model", operations=ops,
                              commit_message=f"Promote {round_dir.name}")
            with self._lock:
                self._rounds.pop(0)
                self.rounds_pushed.append(round_dir.name)


class _Scheduler(CommitScheduler):
    """CommitScheduler whose push is ours: only this replica's files, a consistent snapshot,
    then any queued rounds; every outcome recorded in HubSync's status, errors scrubbed."""

    def __init__(self, sync, **kwargs):
        self.sync = sync  # set before super().__init__, whose thread pushes at once
        super().__init__(**kwargs)

    def push_to_hub(self):
        sync = self.sync
        # Two app processes on one DADC_HOME push the same replica folder: holding a file lock from
        # snapshot to commit orders their commits like their snapshots, so the Hub never goes back.
        with self.lock, sync.store._locked(sync.store.root / ".push.lock"):
            try:
                info = sync._push_flags(self)
            except Exception as e:
                raise sync._fail(e, "pushing flags to the Hub") from None
            if sync._rounds:
                try:
                    sync._push_rounds(self.api)
                except Exception as e:
                    raise sync._fail(e, "pushing a round to the Hub", "The round is kept locally and retried.") from None
            with sync._lock:
                sync.last_push = _now()
                sync.last_error = None
            return info


def model_card(round_dir, counts=None, dataset_repo=None):
    """A model card (README.md) for one round: its metrics and the data it was trained on."""
    round_dir = Path(round_dir)
    metrics, config = {}, {}
    for name, into in (("metrics.json", metrics), ("config.json", config)):
        try:
            into.update(json.loads((round_dir / name).read_text()))
        except (OSError, ValueError):
            pass
    counts = dict(counts or {})
    for key in ("data", "counts"):  # a trainer may have recorded its data counts in metrics.json
        if not counts and isinstance(metrics.get(key), dict):
            counts = metrics[key]

    def table(d):
        rows = [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
                for k, v in d.items() if not isinstance(v, (dict, list))]
        return "\n".join(["| | |", "|---|---|", *rows]) if rows else "_not recorded_"

    meta = ["---", "library_name: pytorch", "tags:", "- mnist", "- adversarial-training", "- dadc"]
    if dataset_repo:
        meta += ["datasets:", f"- {dataset_repo}"]
    meta.append("---")
    return "\n".join(meta + [
        f"# DADC studio: {round_dir.name}",
        "",
        "An MNIST digit classifier from a dynamic adversarial data collection loop: people drew digits",
        "the previous round got wrong, and this round was trained on MNIST plus those examples.",
        "",
        "## Metrics", "", table(metrics), "",
        "## Data", "", table(counts), "",
        "## Files", "",
        "`model.safetensors` (weights), `config.json` (architecture, enough to rebuild the net), "
        "`metrics.json`. No pickle.",
        "",
        f"Architecture: `{config.get('arch', config.get('name', 'see config.json'))}`",
        "",
    ])
