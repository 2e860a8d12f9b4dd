"""A replica that trains nothing (DADC_TRAINER=remote) follows the model repo: every
DADC_FOLLOW_EVERY seconds (each wait drawn between 75 % and 95 % of it: N replicas do not knock
at once, and a round promoted is served within DADC_FOLLOW_EVERY), one HEAD on rounds/CURRENT.
The Hub answers it with the repo's head commit (X-Repo-Commit) and counts it against the resolver
quota (5x the API quota). Only when that commit changed does the replica read the repo
(model_repo.pull: CURRENT, the history, the CURRENT round if new), check the round (it must load)
and hot-swap it."""
import random
import threading

from huggingface_hub import hf_hub_url
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

from .. import files
from . import model_repo

WAIT = (0.75, 0.95)  # each wait, as fractions of `every`: the rest of it is for the check and the swap


class Follower:
    """Keeps `registry` (and, through on_change(round name), the predictor) on the model repo's CURRENT."""

    def __init__(self, api, repo, registry, scratch, log, every=30.0):
        self.api, self.repo, self.registry = api, repo, registry
        self.scratch = scratch      # () -> a context manager giving a fresh folder (store.hub.scratch)
        self.log = log              # the HubSync's HubStatus: failures are recorded there, token-free
        self.every = float(every)
        self.on_change = None       # (round name) -> None, set by the Studio: Predictor.swap
        self.seen = None            # the head commit last followed
        self.last_check = None      # when the last check answered (UTC), for the dashboard
        self.changes = 0            # changes followed since start
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one check at a time (the loop, a rollback)

    def check(self):
        """One cheap check; on a change, follow it. True if the served round may have changed."""
        with self._lock:
            url = hf_hub_url(self.repo, "rounds/CURRENT", endpoint=self.api.endpoint)
            try:
                commit = self.api.get_hf_file_metadata(url=url).commit_hash
            except (EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError):
                commit = None  # no round promoted yet: serve what we have
            self.last_check = files.utc_now()
            if commit is None or commit == self.seen:
                return False
            with self.scratch() as tmp:
                head = model_repo.pull(self.api, self.repo, self.registry, tmp)
            self.seen, self.changes = head.sha, self.changes + 1
            if self.on_change is not None:  # under the lock: a check that finds nothing new finds it served
                self.on_change(self.registry.current())
        return True

    def start(self):
        threading.Thread(target=self._loop, name="follow-model-repo", daemon=True).start()
        return self

    def _loop(self):
        while True:
            try:
                self.check()
            except Exception as e:  # the Hub down or a bad round: keep serving, say so, try again
                self.log.fail(e, "following the model repo", "Serving goes on with the current round.")
            if self._stop.wait(self.every * random.uniform(*WAIT)):
                return

    def stop(self):
        self._stop.set()

    def status(self):
        return {"last_check": self.last_check, "changes": self.changes, "every": self.every}
