"""Studio: everything the app does, as plain Python (no Gradio): predict, flag, vote, roll back,
and the numbers the dashboard shows. Errors meant for the visitor are StudioError, whose message
is safe to show; web/ui.py turns them into Gradio errors in one place.

Lifecycle: Studio(settings) opens the store and the rounds (no network, no threads); start()
restores from the Hub when one is configured, starts the Hub sync and any round already due;
stop() makes the final push.
"""
import threading
from dataclasses import dataclass


from . import dashboard
from ..model import mnist as data
from .. import config
from .. import files
from .. import preprocess
from ..model.checkpoint import CheckpointError
from ..config import RoundConfig
from ..examples import account_id, as_digit, eligible, round_number
from .limits import FlagLimits
from .visitors import Attempts, Nicknames
from ..rounds.registry import ROUND0, Predictor, Registry
from ..rounds.retrain import RetrainJob
from ..store import FlagStore, StoreError, keepable

REMOTE_RETRAIN = "Rounds are trained by the trainer (DADC_TRAINER=remote): run `python -m dadc trainer --once` there."
SHUTDOWN_S = (3.0, 5.0)  # at shutdown: wait for a round to stop, then for the final push (8 s < a Space's 10 s)


def stored_counts(store):
    """(examples stored, of them flagged by anonymous visitors): what the flag limits count from."""
    rows = store.examples()
    return len(rows), sum(e.visitor.startswith("anon-") for e in rows)


class StudioError(Exception):
    """A request that cannot be done, with a message for the person who asked."""


@dataclass(frozen=True)
class Visitor:
    """Who asks. `id` keys the limits, the votes and the store's `session` column: when logged in,
    the login's id (examples.account_id: the HF username, or "hf:<username>" for one that could
    pass for an id the server derives: the two kinds never meet), else the id the server derived
    from the client's address (never one the client chose). `address_id` is that derived id also
    when logged in: one browser, one person for self-votes. A plain string stands for an anonymous
    visitor with that id."""
    id: str
    username: str | None = None    # set only by a Hugging Face OAuth login (web/ui.identify)
    address_id: str | None = None  # the id derived from the client's address (anonymous: = id)

    def __post_init__(self):
        if self.username is not None and self.id != account_id(self.username):
            raise ValueError(f"a login's id is account_id(username), not {self.id!r}")
        if self.username is None and self.address_id is None:
            object.__setattr__(self, "address_id", self.id)

    @classmethod
    def logged_in(cls, username, address_id=None):
        return cls(account_id(username), username=username, address_id=address_id)

    @property
    def anonymous(self):
        return self.username is None

    @property
    def ids(self):
        """Every id this visitor goes by now (the login's and the address's): none may vote on a
        flag of any of them."""
        return frozenset(i for i in (self.id, self.address_id) if i)


def visitor(who):
    return who if isinstance(who, Visitor) else Visitor(str(who))


def check_digit(digit):
    """The true digit: an int 0-9 (not a bool, float or string), else a clear error."""
    if digit is None:
        raise StudioError("Pick the true digit first.")
    try:
        return as_digit(digit)
    except ValueError:
        raise StudioError(f"Nothing stored: the true digit must be an integer 0-9, got {digit!r}.") from None


def check_vote(agree, digit):
    """A vote's agree (a bool) and its optional right digit (0-9, with a 'no' only), else a clear error."""
    if not isinstance(agree, bool):
        raise StudioError(f"agree must be true or false, got {agree!r}.")
    if digit is not None and (agree or isinstance(digit, bool) or digit not in range(10)):
        raise StudioError("The right digit (0-9) goes only with a 'no' vote.")


def example_of(store, id_):
    """The stored example with this id, else a clear error."""
    example = store.find(id_) if isinstance(id_, str) else None
    if example is None:
        raise StudioError(f"No flagged example with id {str(id_)[:80]!r}.")
    return example


def usable(example, cfg):
    """Whether a round may learn from this example (examples.eligible)."""
    return bool(eligible([example], cfg))


def votes_on(example, votes):
    """Where the votes on an example stand, as Studio.vote answers."""
    return {"id": example.id, "agree": example.agree, "disagree": example.disagree,
            "verified": example.verified(votes), "corrected": example.corrected(votes), "decided": example.decided(votes)}


def require_admin(admin, what):
    """Checked in the handler's path, so it holds however the event is called (API name, queue
    index, a hidden button): hiding a control is not a permission check."""
    if not admin:
        raise StudioError(f"Only an admin may {what} (log in with a Hugging Face account named in DADC_ADMINS).")


def receipt(job, cfg, name, digit, prediction, confidence):
    """The flag's receipt text: what round `name` said, and when the next round comes. A flag the
    model got right is kept too (a visitor may flag a drawing it was unsure of, and a round learns
    from it as from any other): the receipt says so, and the page offers to take it back."""
    _, more = job.pending()
    verified = "verified " if cfg.verified_only else ""
    after = "A new round is training now." if job.running else f"{more} more {verified}until the next round."
    if not job.enabled:
        after = f"The trainer takes it into a coming round{' once verified' * cfg.verified_only}."
    r = round_number(name)
    if prediction != digit:
        return f"You fooled round {r}: it said {prediction}. {after}"
    return (f"Saved: round {r} said {prediction} ({confidence:.0%} sure), as you did. It is kept as a drawing the "
            f"model reads right and counts toward the next round{' once verified' * cfg.verified_only}. {after}")


def hold_home(home):
    """The home's app lock (files.hold_app): one app per DADC_HOME, else a clear files.Busy."""
    home.mkdir(parents=True, exist_ok=True)
    try:
        return files.hold_app(home)
    except files.Busy as e:
        raise files.Busy(f"another app is already running on DADC_HOME {home}: {e}. "
                         "Stop it, or give this one its own DADC_HOME.") from None


def remote(settings, sync):
    """DADC_TRAINER=remote: this app trains nothing and follows the model repo (sync.follower)."""
    if settings.trainer == "remote" and getattr(sync, "follower", None) is None:
        raise ValueError("DADC_TRAINER=remote needs the Hub: HF_TOKEN, DADC_DATASET_REPO and DADC_MODEL_REPO")
    return settings.trainer == "remote"


def rollback_everywhere(sync, name, predictor):
    """An admin's rollback on a replica that follows the model repo: made there (every replica
    follows it), then followed here at once."""
    try:
        sync.rollback(name, why="asked on the dashboard or API of a replica")
    except (ValueError, RuntimeError) as e:
        raise StudioError(str(e)) from None
    return {"serving": predictor.round}


class Studio:
    def __init__(self, settings, round0=ROUND0, round_cfg=None, sync=None, mnist=None):
        """sync: a function (store, registry) -> HubSync or None (None: local only). One Studio per
        home: a second one (another app process on the same DADC_HOME) raises files.Busy."""
        self.settings = settings
        self._home_lock = hold_home(settings.home)  # held until the process ends
        self.store = FlagStore(settings.home, admins=settings.admins)  # an admin's mark counts only from them
        self.registry = Registry(settings.home, round0)
        self.sync = sync(self.store, self.registry) if sync is not None else None
        self.remote = remote(settings, self.sync)  # rounds are trained by `python -m dadc trainer`, elsewhere
        self.predictor = Predictor(self.registry)
        self.cfg = round_cfg or RoundConfig.from_env()
        self.job = RetrainJob(self.registry, self.predictor, self.store, settings.threshold, self.cfg,
                              mnist=mnist or (lambda: data.fetch(settings.home, log=lambda m: None)),
                              on_promote=self.sync.push_round if self.sync and self.sync.model_repo else None,
                              enabled=not self.remote)
        self.job.isolated = settings.isolate_rounds and not config.zero_gpu()  # visitors keep the cores (isolate.py)
        if self.remote:  # the model repo's rounds come in and are swapped in (hub/follow.py)
            self.sync.follower.on_change = self.predictor.swap
        self.attempts = Attempts(settings.home / "rounds" / "attempts.json")
        self.nicknames = Nicknames(settings.home / "nicknames.json")
        self.limits = FlagLimits(settings, *stored_counts(self.store))
        self.restoring = False  # the Hub restore is running (start())
        self._board = dashboard.Parts(dashboard.Counts(self.store, self.cfg), self.cfg, self.registry, self.predictor,
                                      self.job, self.sync, self.attempts, self.nicknames)  # counts shared by all

    @property
    def serving(self):
        """The name of the round that answers now (e.g. "round-003")."""
        return self.predictor.round

    def examples(self):
        """Every stored flagged example (store.examples())."""
        return self.store.examples()

    def start(self, background=True):
        """Restore from the Hub (when one is configured) and start the Hub sync and any round due.
        The restore runs in the background: the app serves at once (the local round, else
        round-000) and swaps to the restored round when it is in; no round starts before it is
        done, so the restored history says what earlier rounds used."""
        if self.sync is None:
            self.job.start()  # flags stored before a restart may already be due
            return self
        self.job.hold()
        self.restoring = True
        if background:
            threading.Thread(target=self._restore, name="restore", daemon=True).start()
        else:
            self._restore()
        return self

    def _restore(self):
        try:
            got = self.sync.restore()  # a Space restarts with an empty disk: flags and rounds come back
            if got["rounds"] or self.registry.current() != self.predictor.round:
                self.predictor.swap(self.registry.current())
            self.limits.recount(*stored_counts(self.store))
        finally:
            self.restoring = False
            self.job.release()
            self.sync.start()

    def stop(self):
        """Shut down within sum(SHUTDOWN_S) seconds: a running round stops at its next step, then the
        final push. Safe to call twice (a signal, then atexit)."""
        if getattr(self, "_stopped", False):
            return
        self._stopped = True
        self.job.stop(timeout=SHUTDOWN_S[0])
        if self.sync is not None:
            self.sync.stop(timeout=SHUTDOWN_S[1])

    def _changed(self):
        if self.sync is not None:
            self.sync.changed()

    # --- draw and predict ---

    def predict(self, canvas, visitor_id):
        """(10 probabilities by digit, the 28x28 the model saw), or (the reason, None) when the
        canvas holds no digit. Counts one attempt per drawing, not one per stroke."""
        try:
            x = preprocess.to_mnist(canvas)
        except preprocess.CanvasError as e:
            self.attempts.close(visitor_id)
            return str(e), None
        name, p = self.predictor.probs(x)
        self.attempts.open(visitor_id, round_number(name), drawing=hash(preprocess.to_uint8(x).tobytes()))
        return {str(d): float(p[d]) for d in range(10)}, x

    # --- flag ---

    def flag(self, canvas, digit, who):
        """Store one flagged example; the receipt says whether it fooled the model."""
        who = visitor(who)
        digit = check_digit(digit)
        try:
            x = preprocess.to_mnist(canvas)
        except preprocess.CanvasError as e:
            raise StudioError(f"Nothing stored: {e}.") from None
        refusal = self.limits.refusal(who)
        if refusal:
            raise StudioError(refusal)
        name, p = self.predictor.probs(x)
        prediction = int(p.argmax())
        try:
            id_ = self.store.append(x, digit, canvas=keepable(preprocess.pick(canvas)), prediction=prediction,
                                    confidences=[float(v) for v in p], round=round_number(name), visitor=who.id)
        except StoreError as e:
            self.limits.unreserve(who)
            raise StudioError(str(e)) from None
        self.attempts.close(who.id)
        self._changed()
        if not self.cfg.verified_only:
            self.job.notify()
        return {"id": id_, "saved": True, "label": digit, "prediction": prediction, "fooled": prediction != digit,
                "round": name, "message": receipt(self.job, self.cfg, name, digit, prediction, p[prediction])}

    # --- vote ---

    def next_to_vote(self, who):
        """Someone else's example this visitor has not voted on yet and nobody has decided, fewest
        votes first; None if none."""
        e = self.store.next_to_vote(visitor(who).id, self.cfg.votes, also=visitor(who).ids)  # not one's own flags
        return None if e is None else {"id": e.id, "label": e.label, "canvas": str(e.canvas_path)}

    def vote(self, id_, agree, who, digit=None):
        """One vote per visitor and example (a later one replaces theirs), never on one's own; a
        disagreeing voter may say which digit it is, and `votes` such corrections relabel it. An
        admin's vote decides alone (Dynabench's validation)."""
        who = visitor(who)
        if self.settings.vote_login and who.anonymous:
            raise StudioError("Log in with Hugging Face to vote.")
        example = example_of(self.store, id_)
        if example.visitor in who.ids:  # flagged anonymously from this browser counts too
            raise StudioError("You cannot verify your own example (you may retract it).")
        check_vote(agree, digit)
        self._cast(example, who, agree, digit)
        return votes_on(self.store.find(id_), self.cfg.votes)

    def retract(self, id_, who):
        """The flagger takes their own example back: it trains nothing and is asked of nobody."""
        who = visitor(who)
        example = example_of(self.store, id_)
        if example.visitor != who.id:
            raise StudioError("Only the person who flagged an example may retract it.")
        self._cast(example, who, False, None)
        if not self.store.find(id_).retracted:  # an anonymous id of another replica's flag is nobody's here
            raise StudioError("This example came from another copy of the app: it cannot be retracted here.")
        return {"id": id_, "retracted": True}

    def _cast(self, example, who, agree, digit):
        try:
            self.store.vote(example.id, who.id, agree, digit=digit, admin=self.is_admin(who))
        except (StoreError, ValueError) as e:
            raise StudioError(str(e)) from None
        self._changed()
        if self.cfg.verified_only and not usable(example, self.cfg) and usable(self.store.find(example.id), self.cfg):
            self.job.notify()  # it just became something a round may learn from

    # --- rounds ---

    def is_admin(self, who):
        who = visitor(who)
        return who.username is not None and who.username in self.settings.admins

    def rollback(self, name, who=None):
        require_admin(self.is_admin(who), "roll back the served round")
        if self.remote:  # every replica follows the model repo: roll back there
            return rollback_everywhere(self.sync, name, self.predictor)
        if self.job.running:
            raise StudioError("A round is training: roll back when it has finished.")
        try:
            self.registry.rollback(name, why="asked on the dashboard or API")  # checks that it loads
            self.predictor.swap(name)
            self._changed()  # CURRENT and the history go to the Hub
        except (ValueError, CheckpointError) as e:
            raise StudioError(str(e)) from None
        return {"serving": name}

    def set_nickname(self, name, who):
        """Opt in to the leaderboard under `name` (empty: opt out)."""
        shown = [w for w in self._board.counts.get()["fooled_by"] if not w.startswith(("anon-", "import:"))]
        try:  # no nickname may pass for a username on the board or an admin
            return {"nickname": self.nicknames.set(visitor(who).id, name, reserved=[*shown, *self.settings.admins])}
        except ValueError as e:
            raise StudioError(str(e)) from None
        except OSError as e:  # a full or read-only DADC_HOME: say so, as a flag does
            raise StudioError(f"Nothing saved: the nickname could not be written ({e.strerror or e}).") from None

    def retrain_now(self, who=None):
        require_admin(self.is_admin(who), "start a retraining round")
        return (REMOTE_RETRAIN if self.remote else
                "Retraining started." if self.job.run_now() else "A round is already training.")

    # --- dashboard ---

    def dashboard(self, who=None):
        """The dashboard's numbers (dashboard.py); repo ids and error texts only for admins."""
        return dashboard.numbers(self._board, self.is_admin(who), self.restoring)
