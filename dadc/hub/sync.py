"""HubSync: copy the local flag store to a Hub dataset repo, and promoted rounds to a Hub model repo.

Local disk is the source of truth (the store); the Hub is a backup and a way to share. So:
- pushing runs in the background (huggingface_hub's CommitScheduler: every DADC_PUSH_EVERY minutes
  and once more at exit); a Hub that is down, slow or rejects the token never blocks flagging and
  never loses a flag: what did not get pushed is still on disk and goes with the next push;
- each DADC_HOME pushes only its own replica's shards (plus the dataset card), so replicas never
  overwrite each other; a push sends one parquet shard of the flags and one of the votes new since
  the last push (layout.py), and what was pushed is recorded on disk (flags/pushed.json), so a
  restart pushes only what is new;
- on a fresh DADC_HOME (a Space restarts with an empty disk) restore() brings back the flags and
  the rounds (hub_restore.py); a Hub that is down at start is retried in the background;
- the token is never logged, returned or shown: every error text is scrubbed (HubStatus).
The model card pushed with each round is model_card.py's.
"""
import threading
from pathlib import Path

from huggingface_hub import CommitOperationAdd, CommitScheduler, HfApi
from huggingface_hub.utils import HFValidationError, validate_repo_id

from .. import files
from . import push as hub_push
from . import restore as hub_restore
from .push import ROW_FILES, mark_of
from ..examples import ROUND_NAME
from .model_card import model_card
from . import model_repo
from .follow import Follower
from .model_repo import round_ops
from ..rounds.registry import ROUND_FILES

__all__ = ["HubSync", "HubSyncError", "HubStatus", "check_repo_id", "model_card"]


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


class HubStatus:
    """The outcome of the last Hub operation, for the dashboard: when the last push worked, and the
    last failure as a short sentence. Every text is scrubbed of the token *before* it is cut short,
    so no part of a token survives a cut."""

    def __init__(self, token):
        self._token = token
        self._lock = threading.Lock()
        self.last_push = None   # time of the last successful push (flags or rounds)
        self.last_error = None  # the last failure, cleared by a success; never has the token
        self.last_problem = None  # the same in general words (no repo id, no server text): for everyone

    def scrub(self, text):
        return str(text).replace(self._token, "hf_***") if self._token else str(text)

    def _first_line(self, e):
        lines = [line for line in self.scrub(e).splitlines() if line.strip()]
        return lines[0][:300] if lines else type(e).__name__

    def explain(self, e, doing, then):
        """(a short, token-free sentence: what failed, why, and what happens now; the same without
        the server's or the exception's own words, for the public dashboard)."""
        status, inner = None, e  # huggingface_hub may wrap the HTTP error: look down the chain
        while inner is not None and status is None:
            status = getattr(getattr(inner, "response", None), "status_code", None)
            inner = inner.__cause__ or inner.__context__
        kind = type(e).__name__.lower()
        if status == 401:
            why = public = "the Hub rejected HF_TOKEN (401 Unauthorized): check the token and its write access"
        elif status == 403:
            why = public = "HF_TOKEN may not write to this repo (403 Forbidden)"
        elif status is not None:
            why, public = f"the Hub answered {status}: {self._first_line(e)}", f"the Hub answered {status}"
        elif isinstance(e, (OSError, ConnectionError)) or any(w in kind for w in ("connect", "timeout", "network")):
            why, public = f"cannot reach the Hub ({type(e).__name__}: {self._first_line(e)})", "cannot reach the Hub"
        else:
            why, public = f"{type(e).__name__}: {self._first_line(e)}", type(e).__name__
        return self.scrub(f"{doing} failed: {why}. {then}"), f"{doing} failed: {public}"

    def fail(self, e, doing, then="Flags are kept locally and retried."):
        """Record a failure; returns the HubSyncError to raise."""
        msg, public = self.explain(e, doing, then)
        with self._lock:
            self.last_error, self.last_problem = msg, public
        return HubSyncError(msg)

    def pushed(self):
        with self._lock:
            self.last_push, self.last_error, self.last_problem = files.utc_now(), None, None


class _Scheduler(CommitScheduler):
    """CommitScheduler with its documented extension point, push_to_hub, replaced by `push(api)`."""

    def __init__(self, push, **kwargs):
        self._push = push  # set before super().__init__, whose thread pushes at once
        super().__init__(**kwargs)

    def push_to_hub(self):
        with self.lock:
            return self._push(self.api)


class _RoundPush:
    """Promoted rounds waiting for the model repo, pushed from HubSync's push (the scheduler's
    thread) until they get there, then the registry's state (CURRENT, history) when it changed."""

    def __init__(self, model_repo, dataset_repo, registry, private, log):
        self.model_repo, self.dataset_repo, self.registry, self.private = model_repo, dataset_repo, registry, private
        self.log = log             # the HubSync's HubStatus
        self._lock = threading.Lock()
        self._queue = []           # (round dir, counts) waiting for the model repo, retried until pushed
        self._ready = False        # the model repo exists (created once)
        self._state_pushed = None  # the registry state (CURRENT, history) in the last push
        self.pushed = []           # names of the rounds pushed

    def waiting(self):
        with self._lock:
            return [d.name for d, _ in self._queue]

    def add(self, round_dir, counts):
        with self._lock:
            self._queue.append((round_dir, counts))

    def push(self, api, restored):
        """Queued rounds, then the registry's state (CURRENT, history) when it changed. A round name
        the model repo already has is never overwritten (a late restore can leave this home with
        its own round-00N): that round stays local, and the status says so."""
        if not self.model_repo or not (self._queue or self.registry is not None):
            return
        if not self._ready:
            api.create_repo(self.model_repo, repo_type="model", private=self.private, exist_ok=True)
            self._ready = True
        on_hub = None
        while self._queue:
            round_dir, counts = self._queue[0]
            if on_hub is None:
                on_hub = {f.rfilename.split("/")[1] for f in api.repo_info(self.model_repo, repo_type="model").siblings
                          or [] if f.rfilename.startswith("rounds/") and f.rfilename.count("/") == 2}
            if round_dir.name in on_hub:
                self.log.fail(RuntimeError(f"{round_dir.name} is already on the Hub"), "pushing a round",
                              "It is kept locally, not overwritten.")
            else:
                self._push_round(api, round_dir, counts)
            with self._lock:
                self._queue.pop(0)
        self._push_state(api, restored)

    def _push_round(self, api, round_dir, counts):
        ops = round_ops(round_dir, counts, self.dataset_repo)
        api.create_commit(repo_id=self.model_repo, repo_type="model", operations=ops,
                          commit_message=f"Promote {round_dir.name}")
        with self._lock:
            self.pushed.append(round_dir.name)

    def _push_state(self, api, restored):
        """CURRENT and the history, so a fresh disk serves the same round and retrains nothing at
        boot; only once restore() has worked (an empty disk must not overwrite the Hub's history)."""
        if self.registry is None or not restored:
            return
        state = self.registry.state()
        if not state or state == self._state_pushed:
            return
        ops = [CommitOperationAdd(path_or_fileobj=data, path_in_repo=path) for path, data in state.items()]
        api.create_commit(repo_id=self.model_repo, repo_type="model", operations=ops,
                          commit_message="Rounds: CURRENT and history")
        self._state_pushed = state


class HubSync:
    """Background pushes of DADC_HOME/flags/data/<replica>/ to a Hub dataset repo, and of promoted
    rounds to a model repo. Construct (validates names, no network), restore(), then start()."""

    def __init__(self, store, repo_id, token, *, every=5.0, delay=30.0, private=True, model_repo=None,
                 registry=None, max_flags=None, follow_every=None):
        """registry: where restore() brings rounds back to (with model_repo); None restores no rounds.
        max_flags: the store's cap (DADC_MAX_FLAGS), which a restore does not fill past.
        follow_every: seconds; the rounds are the model repo's (DADC_TRAINER=remote): this replica
        follows them (follow.Follower) and pushes none."""
        self.store, self.registry, self.max_flags = store, registry, max_flags
        self.repo_id = check_repo_id(repo_id)
        self.model_repo = check_repo_id(model_repo, "DADC_MODEL_REPO") if model_repo else None
        if not token:
            raise ValueError("HF_TOKEN is required to push to the Hub")
        if not every > 0:
            raise ValueError(f"DADC_PUSH_EVERY must be > 0 minutes, got {every}")
        self._token = token
        self.every = float(every)
        self.delay = float(delay)  # seconds from a change (a flag, a vote, a round) to the push carrying it
        self._soon = None          # the pending delayed push (a Timer), if any
        self.private = private
        self.api = HfApi(token=token)
        self.log = HubStatus(token)
        self.scheduler = None
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self.follower = None
        if follow_every and self.model_repo and registry is not None:
            self.follower = Follower(self.api, self.model_repo, registry, store.hub.scratch, self.log, follow_every)
        self._rounds = _RoundPush(self.model_repo, self.repo_id, None if self.follower else registry, private,
                                  self.log)
        self._restored = False   # restore() has worked once (else the connect loop retries it)
        self.skipped_rows = 0    # restored Hub rows left out as bad (logged by "dadc.restore"), for admins
        self.rounds_pushed = self._rounds.pushed  # names of the rounds pushed by this process

    def __repr__(self):
        return f"HubSync(repo_id={self.repo_id!r}, model_repo={self.model_repo!r}, every={self.every})"

    @classmethod
    def from_settings(cls, settings, store, registry=None):
        """A HubSync for the app's settings, or None when the Hub is not configured (local only)."""
        if not settings.hub_enabled:
            return None
        return cls(store, settings.dataset_repo, settings.hf_token, every=settings.push_every,
                   delay=settings.push_delay, model_repo=settings.model_repo, registry=registry,
                   max_flags=settings.max_flags,
                   follow_every=settings.follow_every if settings.trainer == "remote" else None)

    def pending(self):
        """Rows (flags and votes) on local disk not yet in a successful push."""
        marks = self.store.hub.pushed(self.repo_id)
        return sum(self.store.hub.row_counts({name: mark_of(marks, name)["bytes"] for name in ROW_FILES}).values())

    def status(self):
        """For the dashboard. Safe to show: no token."""
        return {"repo": self.repo_id, "model_repo": self.model_repo, "connected": self.scheduler is not None,
                "last_push": self.log.last_push, "pending": self.pending(), "rounds_pending": self._rounds.waiting(),
                "last_error": self.log.last_error, "problem": self.log.last_problem,
                "follow": self.follower.status() if self.follower else None}

    # --- restore -------------------------------------------------------------------------------

    def restore(self):
        """Bring back the flags of every replica folder this store lacks, and the rounds, from the
        Hub. Failures are recorded in status() and do not raise: the app goes on locally, and
        start() retries until it works. Returns {"examples": n, "rounds": [names]}; bad Hub rows
        skipped on the way add up in self.skipped_rows."""
        out, ok = {"examples": 0, "rounds": []}, True
        try:
            filled = hub_restore.restore_flags(self.api, self.repo_id, self.store, self.max_flags)
            out["examples"] = filled.added
            self.skipped_rows += filled.skipped_rows
        except Exception as e:
            ok = False
            self.log.fail(e, "restoring flags from the Hub", "The app goes on with the local store.")
        if self.model_repo and self.registry is not None and self.follower is None:  # a follower reads them itself
            try:
                out["rounds"] = hub_restore.restore_rounds(self.api, self.model_repo, self.registry, self.store)
            except Exception as e:
                ok = False
                self.log.fail(e, "restoring rounds from the Hub", "The app goes on with the local rounds.")
        self._restored = self._restored or ok
        return out

    # --- pushing -------------------------------------------------------------------------------

    def start(self):
        """Connect in the background (the Hub may be down at start: keep trying) and push every
        `every` minutes from then on. Returns at once."""
        self._stopped.clear()
        threading.Thread(target=self._connect, name="hubsync-connect", daemon=True).start()
        if self.follower is not None:
            self.follower.start()
        return self

    def _connect(self):
        while not self._stopped.is_set():
            if not self._restored:  # the Hub was down at start: the earlier flags come back now
                self.restore()
            if self.scheduler is None:
                try:
                    # creates the repo (private by default) and pushes at once, then every `every` minutes
                    sched = _Scheduler(self._push, repo_id=self.repo_id, repo_type="dataset",
                                       folder_path=self.store.root, every=self.every, private=self.private,
                                       token=self._token)
                    with self._lock:
                        self.scheduler = sched
                except Exception as e:
                    self.log.fail(e, "connecting to the Hub")
            if self.scheduler is not None and self._restored:
                return
            self._stopped.wait(self.every * 60)

    def push_now(self):
        """Push now (in the background). Returns a Future, or None if not connected yet."""
        sched = self.scheduler
        return sched.trigger() if sched is not None else None

    def changed(self):
        """Something to push was written (a flag, a vote, a round): push within `delay` seconds.
        Changes that come meanwhile ride along (debounced), so a crash loses at most that window
        of Hub copies; the local store keeps everything anyway."""
        with self._lock:
            if self._soon is not None or self._stopped.is_set():
                return
            self._soon = threading.Timer(self.delay, self._push_soon)
            self._soon.daemon = True
            self._soon.start()

    def _push_soon(self):
        with self._lock:
            self._soon = None
        self.push_now()  # not connected yet: the connection's first push carries it

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
        self._rounds.add(round_dir, dict(counts or {}))
        return self.push_now()

    def rollback(self, name, why):
        """Serve `name` on every replica: the model repo's CURRENT (compare-and-swap), then followed
        here at once. ValueError if the repo has no such round; HubSyncError if the Hub failed."""
        try:
            with self.store.hub.scratch() as tmp:
                model_repo.rollback(self.api, self.model_repo, name, why, tmp)
        except ValueError:
            raise
        except Exception as e:
            raise self.log.fail(e, "rolling back on the model repo", "Nothing changed.") from None
        if self.follower is not None:
            try:
                self.follower.check()
            except Exception as e:  # done on the repo: the next check follows it
                self.log.fail(e, "following the rollback", "The next check of the model repo follows it.")

    def stop(self, timeout=60):
        """Final push (waiting at most `timeout` seconds), then stop. Safe to call twice."""
        self._stopped.set()
        if self.follower is not None:
            self.follower.stop()
        with self._lock:
            if self._soon is not None:
                self._soon.cancel()
                self._soon = None
        sched = self.scheduler
        if sched is None:
            return
        try:
            sched.trigger().result(timeout=timeout)
        except Exception:
            pass  # recorded in status; the data is still on disk for the next start
        sched.stop()

    def _push(self, api):
        """One push (the scheduler's thread): this replica's new flags and votes, then queued rounds.
        The store's push lock, held from snapshot to commit, orders the commits of two processes on
        one home like their snapshots, so the Hub never goes back."""
        with self.store.hub.push_lock():
            try:
                info = hub_push.push_flags(api, self.repo_id, self.store)
            except Exception as e:
                raise self.log.fail(e, "pushing flags to the Hub") from None
            try:
                self._rounds.push(api, self._restored)
            except Exception as e:
                raise self.log.fail(e, "pushing a round to the Hub", "The round is kept locally and retried.") from None
        self.log.pushed()
        return info
