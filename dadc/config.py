"""Settings read from the environment: the app's (Settings), a retraining round's (RoundConfig),
and the few facts of where we run (on a Space, on ZeroGPU, offline, debugging). This module is the
only one in dadc that reads environment variables; the variables are listed in docs/GUIDE.md and in
docs/ARCHITECTURE.md."""
import os
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    home: Path                      # DADC_HOME: all mutable state lives here
    hf_token: str | None = field(default=None, repr=False)  # never printed
    dataset_repo: str | None = None  # DADC_DATASET_REPO: flags are pushed here
    model_repo: str | None = None    # DADC_MODEL_REPO: promoted rounds are pushed here
    push_every: float = 5.0          # DADC_PUSH_EVERY, minutes between scheduled pushes
    push_delay: float = 30.0         # DADC_PUSH_DELAY, seconds: a flag reaches the Hub this soon (batched)
    threshold: int = 10              # DADC_THRESHOLD: new examples that start a retraining round
    flag_limit: int = 30             # DADC_FLAG_LIMIT: flags a minute from one identity (a flood is refused)
    flag_budget: int = 600           # DADC_FLAG_BUDGET: flags an hour from all anonymous visitors together
    max_flags: int = 200_000         # DADC_MAX_FLAGS: the store's hard cap; past it flags are refused
    admins: frozenset = frozenset()  # DADC_ADMINS: HF usernames (OAuth) allowed to roll back and retrain
    vote_login: bool = False         # DADC_VOTE_LOGIN=1: voting needs a login
    proxy_hops: int = 0              # DADC_TRUSTED_PROXY_HOPS: proxies whose X-Forwarded-For entry is trusted
    session_capacity: int = 1000     # DADC_SESSION_CAPACITY: browser sessions whose page state is kept in memory
    trainer: str = "local"           # DADC_TRAINER: "local" (this app trains) or "remote" (`python -m dadc trainer`)
    follow_every: float = 30.0       # DADC_FOLLOW_EVERY, seconds between checks of the model repo (remote)
    identity_key: str | None = field(default=None, repr=False)  # DADC_IDENTITY_KEY: one key for every replica
    isolate_rounds: bool = True      # DADC_ISOLATE_ROUNDS=0: the app's rounds in its own process, not a lowered child

    @property
    def hub_enabled(self) -> bool:
        return bool(self.hf_token and self.dataset_repo)


def _number(name, default, kind, zero=False):
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise SystemExit(f"error: {name}={raw!r} is not a number") from None
    if value < 0 or (value == 0 and not zero):
        raise SystemExit(f"error: {name} must be > {'= ' if zero else ''}0, got {raw!r}")
    return value


def keep_state_in_home(settings: Settings) -> None:
    """Point the Hugging Face caches (datasets downloads, huggingface_hub's own files) into DADC_HOME,
    unless HF_HOME is set, so that nothing is written outside it. Call before huggingface_hub or
    datasets is imported: they read HF_HOME once, at import."""
    os.environ.setdefault("HF_HOME", str((settings.home / "hf").resolve()))


def gradio_cache() -> Path:
    """The folder Gradio copies returned files into: GRADIO_TEMP_DIR (app.py keeps it in DADC_HOME),
    else Gradio's default, <tmp>/gradio."""
    return Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio")


def _flag(name):
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


def zero_gpu() -> bool:
    """Running on a ZeroGPU Space: a spaces.GPU call runs in a forked process (read at each call)."""
    return _flag("SPACES_ZERO_GPU")


def in_space() -> bool:
    """Running inside a Hugging Face Space, as Spaces mark it: SYSTEM=spaces with SPACE_ID. It is
    what Gradio itself reads (gradio.utils.get_space) to serve its real OAuth login rather than a
    mocked one; SPACE_ID alone (a Space's settings copied to a laptop) is not a Space."""
    return os.environ.get("SYSTEM") == "spaces" and bool(os.environ.get("SPACE_ID"))


def on_space() -> bool:
    """In a Hugging Face Space (in_space) with OAuth (hf_oauth: true sets OAUTH_CLIENT_ID), so
    visitors can log in, for real: anywhere else Gradio would mock the login."""
    return in_space() and bool(os.environ.get("OAUTH_CLIENT_ID"))


def admins() -> frozenset:
    """DADC_ADMINS: the Hugging Face usernames who are admins (comma-separated), read now."""
    return frozenset(a.strip() for a in os.environ.get("DADC_ADMINS", "").split(",") if a.strip())


def hub_offline() -> bool:
    """HF_HUB_OFFLINE, as huggingface_hub reads it: never try the network."""
    return _flag("HF_HUB_OFFLINE")


def torchrun():
    """(world size, local rank) that torchrun gave this process; (1, 0) without torchrun."""
    return int(os.environ.get("WORLD_SIZE") or 1), int(os.environ.get("LOCAL_RANK") or 0)


def hide_gpus():
    """Make torch see no GPU (`--device cpu`): call before torch first looks for one."""
    os.environ["CUDA_VISIBLE_DEVICES"] = ""


def debug() -> bool:
    """DADC_DEBUG=1: the CLI shows tracebacks instead of one error line."""
    return bool(os.environ.get("DADC_DEBUG"))


def _trainer(hf_token, dataset_repo, model_repo):
    trainer = os.environ.get("DADC_TRAINER") or "local"
    if trainer not in ("local", "remote"):
        raise SystemExit(f"error: DADC_TRAINER must be 'local' or 'remote', got {trainer!r}")
    if trainer == "remote" and not (hf_token and dataset_repo and model_repo):
        raise SystemExit("error: DADC_TRAINER=remote needs HF_TOKEN, DADC_DATASET_REPO (where the trainer reads "
                         "the flags) and DADC_MODEL_REPO (where it promotes rounds)")
    return trainer


def _identity_key():
    key = os.environ.get("DADC_IDENTITY_KEY") or None
    if key is not None and len(key) < 32:
        raise SystemExit("error: DADC_IDENTITY_KEY must be at least 32 characters (a secret: e.g. "
                         "`python -c 'import secrets; print(secrets.token_hex(32))'`)")
    return key


def from_env() -> Settings:
    hf_token = os.environ.get("HF_TOKEN") or None
    dataset_repo = os.environ.get("DADC_DATASET_REPO") or None
    model_repo = os.environ.get("DADC_MODEL_REPO") or None
    return Settings(
        home=Path(os.environ.get("DADC_HOME") or ".dadc").expanduser(),
        hf_token=hf_token,
        dataset_repo=dataset_repo,
        model_repo=model_repo,
        push_every=_number("DADC_PUSH_EVERY", 5.0, float),
        push_delay=_number("DADC_PUSH_DELAY", 30.0, float),
        threshold=_number("DADC_THRESHOLD", 10, int),
        flag_limit=_number("DADC_FLAG_LIMIT", 30, int),
        flag_budget=_number("DADC_FLAG_BUDGET", 600, int),
        max_flags=_number("DADC_MAX_FLAGS", 200_000, int),
        admins=admins(),
        vote_login=_flag("DADC_VOTE_LOGIN"),
        # a Space's proxy appends the visitor's address to X-Forwarded-For: trust that one entry there
        # (only in a real Space: elsewhere the entry is the client's own, a new identity per request)
        proxy_hops=_number("DADC_TRUSTED_PROXY_HOPS", 1 if in_space() else 0, int, zero=True),
        session_capacity=_number("DADC_SESSION_CAPACITY", 1000, int),
        trainer=_trainer(hf_token, dataset_repo, model_repo),
        follow_every=_number("DADC_FOLLOW_EVERY", 30.0, float),
        identity_key=_identity_key(),
        isolate_rounds=os.environ.get("DADC_ISOLATE_ROUNDS", "1").lower() not in ("0", "false", "no"),
    )


@dataclass
class RoundConfig:
    """One retraining round. The defaults fit a round in about a minute on 2 CPU cores."""
    mnist_n: int = 8000         # MNIST training examples drawn afresh each round (plus every human one)
    epochs: float = 1.0
    steps: int = 7              # PGD steps during training (eps 0.3, step 2.5 * eps / steps)
    eps: float = 0.3
    lr: float = 1e-4            # peak of the one-cycle schedule: a gentle fine-tune of round-000 (1e-3 lost
                                # 0.1-0.2 pt of clean accuracy a round in `simulate`)
    human_share: float = 0.05   # the human examples' families make this fraction of a round's training examples
                                # (share / (1 - share) * mnist_n of them, spread over the examples). Measured on
                                # drawings.py campaigns (docs/SIMULATE.md): 0.1 learns more but cost 0.2-0.24 pt
                                # of MNIST test clean accuracy at 30-60 flags; 0.05 cost 0.1-0.16 pt
    family_max: int = 32        # at most this many members in one example's family (the drawing + jittered ones)
    jitter: float = 1.0         # strength of a family's jitter (synth/jitter.py: 1 = up to 15 deg, shear 0.3, ...)
    human_repeat: int = 1       # each family member is seen this many times per round (families replace repeats)
    human_weight: float = 1.0   # loss weight of a human example's family member relative to an MNIST one
    val_n: int = 10000          # gate: the last this many MNIST train examples, never in a round's sample
    eval_n: int = 10000         # reported, never gated on: clean accuracy on this many MNIST test examples
    robust_n: int = 1000        # PGD accuracy on the first this many (validation slice and test set)
    robust_steps: int = 10
    clean_drop: float = 0.003   # gate: validation clean accuracy at least round-000's minus 0.3 pt (a fixed floor)
    robust_drop: float = 0.01   # gate: validation PGD accuracy at least round-000's minus 1 pt
    human_min: int = 10         # gate: human hold-out compared with the serving round from this many examples
    human_max: int = 400        # human examples a round trains on (the new ones first, then a replay sample of
                                # older ones) and measures on: a round's cost does not grow with the store
    verified_only: bool = False  # train only on examples others have verified (default on a Space)
    votes: int = 2              # agreeing validations that make an example verified
    seed: int = 0

    @classmethod
    def from_env(cls, **overrides):
        """Defaults, overridden by DADC_ROUND_<FIELD> variables (e.g. DADC_ROUND_MNIST_N=2000),
        DADC_VERIFIED_ONLY=1 and DADC_VOTES=3, then by keyword arguments."""
        values = {}
        for f in fields(cls):
            name = {"verified_only": "DADC_VERIFIED_ONLY", "votes": "DADC_VOTES"}.get(f.name)
            if not (name and os.environ.get(name)):
                name = f"DADC_ROUND_{f.name.upper()}"
            raw = os.environ.get(name)
            if raw not in (None, ""):
                kind = type(f.default)
                try:
                    values[f.name] = raw.lower() in ("1", "true", "yes") if kind is bool else kind(raw)
                except ValueError:
                    raise ValueError(f"{name}={raw!r}: expected a {kind.__name__} value") from None
        if "verified_only" not in values and on_space():
            values["verified_only"] = True  # a public Space trains only on what others confirmed
        values.update(overrides)
        return cls(**values)
