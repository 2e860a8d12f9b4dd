"""One settings object, read from the environment (see DESIGN.md's contract)."""
import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    home: Path                      # DADC_HOME: all mutable state lives here
    hf_token: str | None = field(default=None, repr=False)  # never printed
    dataset_repo: str | None = None  # DADC_DATASET_REPO: flags are pushed here
    model_repo: str | None = None    # DADC_MODEL_REPO: promoted rounds are pushed here
    push_every: float = 5.0          # DADC_PUSH_EVERY, minutes
    threshold: int = 10              # DADC_THRESHOLD: new examples that start a retraining round

    @property
    def hub_enabled(self) -> bool:
        return bool(self.hf_token and self.dataset_repo)


def _number(name, default, kind):
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise SystemExit(f"error: {name}={raw!r} is not a number") from None
    if value <= 0:
        raise SystemExit(f"error: {name} must be > 0, got {raw!r}")
    return value


def keep_state_in_home(settings: Settings) -> None:
    """Point the Hugging Face caches (datasets downloads, huggingface_hub's own files) into DADC_HOME,
    unless HF_HOME is set, so that nothing is written outside it. Call before huggingface_hub or
    datasets is imported: they read HF_HOME once, at import."""
    os.environ.setdefault("HF_HOME", str((settings.home / "hf").resolve()))


def from_env() -> Settings:
    return Settings(
        home=Path(os.environ.get("DADC_HOME") or ".dadc").expanduser(),
        hf_token=os.environ.get("HF_TOKEN") or None,
        dataset_repo=os.environ.get("DADC_DATASET_REPO") or None,
        model_repo=os.environ.get("DADC_MODEL_REPO") or None,
        push_every=_number("DADC_PUSH_EVERY", 5.0, float),
        threshold=_number("DADC_THRESHOLD", 10, int),
    )
