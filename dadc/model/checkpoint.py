"""A checkpoint is a directory: model.safetensors, config.json (enough to rebuild the net), metrics.json.

No pickle is ever loaded: weights come only from safetensors, and a directory that offers only a
pickle file (pytorch_model.bin, *.pt, *.pth, *.ckpt) is refused with a clear error.
"""
import json
import os
import shutil
import tempfile
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .. import files
from .nets import build

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class CheckpointError(Exception):
    pass


def save(model, directory, config: dict, metrics: dict) -> Path:
    """Write the checkpoint atomically: into a temporary sibling directory, then renamed in place."""
    if "net" not in config:
        raise ValueError("config must name the net")
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
            f.chmod(0o644)
        tmp.chmod(0o755)  # mkdtemp makes it private; a checkpoint is meant to be read by others
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
        files.fsync_dir(directory.parent)  # the rename survives a power cut
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def load(directory):
    """(model in eval mode, config, metrics) from a checkpoint directory."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint {directory} is not a directory")
    weights = directory / "model.safetensors"
    if not weights.exists():
        pickles = [p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if pickles:
            raise CheckpointError(f"{directory} has only {pickles[0]}: refusing to load pickle (use model.safetensors)")
        raise CheckpointError(f"{directory} has no model.safetensors")
    try:
        config = json.loads((directory / "config.json").read_text())
        net = config["net"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{directory}/config.json is missing or does not name a net ({e})") from None
    try:
        metrics = json.loads((directory / "metrics.json").read_text())
    except FileNotFoundError:
        metrics = {}
    except ValueError as e:
        raise CheckpointError(f"{directory}/metrics.json is corrupt ({e})") from None
    try:
        model = build(net)
    except ValueError as e:
        raise CheckpointError(f"{directory}: {e}") from None
    try:
        model.load_state_dict(load_file(str(weights)))
    except (SafetensorError, OSError, RuntimeError) as e:
        raise CheckpointError(f"{weights} is corrupt or does not fit net {net!r}: {str(e).splitlines()[0]}") from None
    return model.eval(), config, metrics
