"""FlagStore: durable, append-only, concurrent; loads with `datasets`; export; tensors for training.
Real files, real threads, real processes (two writers, SIGKILL, a read-only user, a file size limit)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dadc.campaign.export import export_dataset
from dadc.store import FlagStore, human_tensors

REPO = Path(__file__).resolve().parents[1]


def digit(seed=0):
    """A 28x28 white-on-black image with a distinct pattern per seed."""
    rng = np.random.default_rng(seed)
    arr = np.zeros((28, 28), np.uint8)
    arr[4:24, 10:18] = rng.integers(100, 256, (20, 8))
    return Image.fromarray(arr)


def run_py(code, *args, env=None, **kw):
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=120, **kw)


def test_append_and_read_back(tmp_path):
    store = FlagStore(tmp_path)
    canvas = Image.new("RGBA", (300, 300), (255, 255, 255, 255))
    i = store.append(digit(1), 7, canvas=canvas, prediction=1, confidences={"1": 0.8, "7": 0.2},
                     round=2, visitor="s1")
    j = store.append(digit(2), 3)  # no canvas, prediction or confidences
    assert store.count() == 2
    a, b = store.examples()[0], store.examples()[1]
    if a.id != i:
        a, b = b, a
    assert (a.id, a.label, a.prediction, a.round, a.visitor) == (i, 7, 1, 2, "s1")
    assert a.confidences[1] == 0.8 and a.confidences[7] == 0.2 and len(a.confidences) == 10
    assert np.array_equal(np.asarray(store.image(a)), np.asarray(digit(1)))
    assert Image.open(a.canvas_path).size == (300, 300)
    assert (b.id, b.label, b.prediction) == (j, 3, -1)
    assert b.canvas_path == b.path  # no canvas given: the 28x28 is the original
    # everything lives under DADC_HOME/flags and nothing is left in tmp/
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flags"]
    assert list((tmp_path / "flags" / "tmp").iterdir()) == []


def _durability_log(monkeypatch):
    """Record, in order, every fsync (by the path its descriptor names) and every write of bytes
    (by path), whichever thread makes it."""
    from dadc import files

    events, real_fsync, real_write = [], os.fsync, files.write_all

    def fsync(fd):
        real_fsync(fd)
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))

    def write_all(fd, data):
        events.append(("write", os.readlink(f"/proc/self/fd/{fd}")))
        real_write(fd, data)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(files, "write_all", write_all)
    return events


def test_images_and_their_folder_are_durable_before_the_row_is_written(tmp_path, monkeypatch):
    """What a crash at any moment relies on: both images' data and the folder that names them are
    fsynced before a byte of the row is written, and the row is fsynced before append returns."""
    store = FlagStore(tmp_path)
    events = _durability_log(monkeypatch)
    i = store.append(digit(1), 7, canvas=Image.new("RGB", (64, 64), "white"))
    meta, images = str(store.dir / "metadata.jsonl"), store.dir / "images"
    row = events.index(("write", meta))
    for path in (images / f"{i}.png", images / f"{i}-canvas.png", images):
        assert events.index(("fsync", str(path))) < row, (path, events)
    assert events[-1] == ("fsync", meta)
    assert store.count() == 1 and store.find(i).label == 7


def test_an_image_that_cannot_be_made_durable_leaves_no_row_and_no_image(tmp_path, monkeypatch):
    import errno

    from dadc.store import StoreError

    store = FlagStore(tmp_path)
    store.append(digit(0), 0)
    before = sorted((store.dir / "images").iterdir())
    real_fsync = os.fsync

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("-canvas.png"):
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(StoreError, match="cannot save the flag"):
        store.append(digit(1), 1, canvas=Image.new("RGB", (64, 64), "white"))
    assert store.count() == 1 and sorted((store.dir / "images").iterdir()) == before
    assert list((tmp_path / "flags" / "tmp").iterdir()) == []


@pytest.mark.parametrize("bad", [
    dict(label=10), dict(label="7"), dict(label=True), dict(label=-1),
    dict(image=Image.new("L", (27, 28))), dict(prediction=11), dict(confidences=[0.5, 0.5]), dict(round=-1),
])
def test_bad_input_is_refused_and_not_counted(tmp_path, bad):
    store = FlagStore(tmp_path)
    args = {"image": digit(), "label": 4, **bad}
    with pytest.raises(ValueError):
        store.append(args.pop("image"), args.pop("label"), **args)
    assert store.count() == 0


def test_validations_are_appended_never_rewritten(tmp_path):
    store = FlagStore(tmp_path)
    i = store.append(digit(), 5)
    meta = (store.dir / "metadata.jsonl").read_bytes()
    store.vote(i, "alice", True)
    store.vote(i, "bob", True)
    store.vote(i, "bob", False)  # bob changes his mind: a new row, the old one stays
    assert (store.dir / "metadata.jsonl").read_bytes() == meta
    votes = [json.loads(line) for line in (store.dir / "votes.jsonl").read_text().splitlines()]
    assert [(v["session"], v["agree"]) for v in votes] == [("alice", True), ("bob", True), ("bob", False)]
    assert len(store.votes()) == 3
    (ex,) = store.examples()
    assert (ex.agree, ex.disagree) == (1, 1)  # one vote per session, its latest
    with pytest.raises(ValueError):
        store.vote("no-such-id", "alice", True)


def test_64_threads_x_20_flags_give_exactly_1280_records(tmp_path):
    store = FlagStore(tmp_path)
    ids, errors = [], []

    def writer(t):
        try:
            for k in range(20):
                ids.append(store.append(digit(t), (t + k) % 10, visitor=f"t{t}"))
        except Exception as e:  # pragma: no cover - the assertion below shows it
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    rows = store.examples()
    assert len(rows) == 1280 and len(ids) == 1280
    assert len({r.id for r in rows}) == 1280 and {r.id for r in rows} == set(ids)
    assert all(Path(r.path).is_file() for r in rows)
    lines = (store.dir / "metadata.jsonl").read_bytes().split(b"\n")
    assert lines[-1] == b"" and all(json.loads(line) for line in lines[:-1])  # whole lines only


WRITER = """
import sys, time, numpy as np
from PIL import Image
from dadc.store import FlagStore
store = FlagStore(sys.argv[1])
img = Image.fromarray(np.full((28, 28), 200, np.uint8))
if len(sys.argv) > 4:  # start together with the other writer, so they really overlap
    time.sleep(max(0.0, float(sys.argv[4]) - time.time()))
for k in range(int(sys.argv[2])):
    print(store.append(img, k % 10, visitor=sys.argv[3]), flush=True)  # printed = acknowledged
"""


def test_two_processes_on_one_home(tmp_path):
    go = str(time.time() + 2.0)
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), "200", f"p{n}", go],
                              env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True)
             for n in range(2)]
    acked = [set(p.communicate(timeout=120)[0].split()) for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    rows = FlagStore(tmp_path).examples()
    assert len(rows) == 400 and {r.id for r in rows} == acked[0] | acked[1]
    sessions = [r.visitor for r in rows]  # file order: the two writers' rows interleave
    assert sum(a != b for a, b in zip(sessions, sessions[1:])) > 2
    assert len({r.visitor for r in rows}) == 2
    assert len(FlagStore(tmp_path).replica_dirs()) == 1  # one home, one replica folder


def test_sigkill_mid_stream_keeps_every_acknowledged_flag(tmp_path):
    import datasets

    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), "100000", "k"],
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True)
    acked = []
    for line in proc.stdout:
        acked.append(line.strip())
        if len(acked) == 150:
            break
    proc.send_signal(signal.SIGKILL)  # mid-stream: it was writing the next ones
    proc.wait(timeout=30)
    acked += [line.strip() for line in proc.stdout if line.strip()]
    store = FlagStore(tmp_path)  # reopening repairs anything torn
    ids = {r.id for r in store.examples()}
    assert set(acked) <= ids and len(ids) >= 150
    ds = datasets.load_dataset("imagefolder", data_dir=str(tmp_path / "flags" / "data"), split="train")
    assert len(ds) == len(ids) and set(ds["id"]) == ids
    assert store.append(digit(), 1) in {r.id for r in store.examples()}  # and it goes on


def test_torn_last_line_is_tolerated_and_repaired(tmp_path):
    import datasets

    store = FlagStore(tmp_path)
    for k in range(3):
        store.append(digit(k), k)
    meta = store.dir / "metadata.jsonl"
    with open(meta, "ab") as f:  # what a crash or a full disk mid-write leaves
        f.write(b'{"file_name":"images/abc.png","label":')
    assert store.count() == 3  # readers skip it
    FlagStore(tmp_path)  # a writer opening the store cuts it
    assert meta.read_bytes().endswith(b"}\n")
    with open(meta, "ab") as f:
        f.write(b'{"file_name":"images/abc.png","label":')
    store.append(digit(9), 9)  # an append also cuts it first, so rows never glue together
    assert store.count() == 4
    ds = datasets.load_dataset("imagefolder", data_dir=str(tmp_path / "flags" / "data"), split="train")
    assert sorted(ds["label"]) == [0, 1, 2, 9]


@pytest.fixture
def shared_home():
    """A home another user can reach (pytest's tmp_path is private to its owner)."""
    d = tempfile.mkdtemp(prefix="dadc-ro-")
    os.chmod(d, 0o755)
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


READ_ONLY = """
import os, sys, numpy as np
from PIL import Image, PngImagePlugin  # imported now: the user below cannot read root's site-packages
from dadc.store import FlagStore, StoreError
home = sys.argv[1]
store = FlagStore(home)  # opened while the home was writable
if os.geteuid() == 0:  # root ignores permissions: become an unprivileged user for the rest
    os.setgid(65534); os.setuid(65534)
else:
    for root, dirs, files in os.walk(home):
        for name in dirs + files:
            os.chmod(os.path.join(root, name), 0o555 if name in dirs else 0o444)
    os.chmod(home, 0o555)
try:
    store.append(Image.fromarray(np.zeros((28, 28), np.uint8)), 3)
    print("APPEND ok")
except StoreError as e:
    print("APPEND", e)
try:
    FlagStore(home)
    print("OPEN ok")
except StoreError as e:
    print("OPEN", e)
print("COUNT", FlagStore(home, readonly=True).count())  # a read-only home can still be read (export)
"""


def test_read_only_home_is_a_clear_error_and_counts_nothing(shared_home):
    FlagStore(shared_home).append(digit(), 2)
    res = run_py(READ_ONLY, shared_home, cwd="/")
    assert res.returncode == 0, res.stderr
    assert "APPEND DADC_HOME is read-only: cannot save the flag" in res.stdout, res.stdout
    assert "OPEN cannot write the flag store" in res.stdout and "Permission denied" in res.stdout
    assert "COUNT 1" in res.stdout
    assert FlagStore(shared_home, readonly=True).count() == 1
    assert [p.name for p in (shared_home / "flags" / "tmp").iterdir()] == []


FULL = """
import os, resource, signal, sys, numpy as np
from PIL import Image
from dadc.store import FlagStore, StoreError
store = FlagStore(sys.argv[1])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, like a full disk
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
try:
    store.append(Image.fromarray(np.zeros((28, 28), np.uint8)), 3)
    print("APPEND ok")
except StoreError as e:
    print("APPEND", e)
"""


@pytest.mark.parametrize("where", ["metadata row", "image"])
def test_full_disk_is_a_clear_error_and_leaves_no_half_record(tmp_path, where):
    import datasets

    store = FlagStore(tmp_path)
    for k in range(4):
        store.append(digit(k), k)
    meta = store.dir / "metadata.jsonl"
    before = meta.read_bytes()
    images = sorted((store.dir / "images").iterdir())
    # room for the image (a blank PNG is ~70 bytes) but not for the whole row, or not even the image
    limit = len(before) + 40 if where == "metadata row" else 20
    res = run_py(FULL, tmp_path, limit)
    assert "APPEND DADC_HOME is full" in res.stdout, res.stdout + res.stderr
    assert meta.read_bytes() == before  # the partial row was cut back
    assert sorted((store.dir / "images").iterdir()) == images  # its image was removed
    assert list((tmp_path / "flags" / "tmp").iterdir()) == []
    assert store.count() == 4
    ds = datasets.load_dataset("imagefolder", data_dir=str(tmp_path / "flags" / "data"), split="train")
    assert len(ds) == 4


def test_local_store_loads_with_datasets(tmp_path):
    import datasets

    store = FlagStore(tmp_path)
    canvas = Image.new("RGBA", (64, 64), (255, 255, 255, 255))
    ids = [store.append(digit(k), k % 10, canvas=canvas if k % 2 else None, prediction=(k + 1) % 10,
                        confidences=[0.1] * 10, visitor="s") for k in range(12)]
    store.vote(ids[0], "v", True)  # votes.jsonl must not confuse the loader
    for ds in (datasets.load_dataset("imagefolder", data_dir=str(tmp_path / "flags" / "data"), split="train"),
               datasets.load_dataset(str(tmp_path / "flags"), split="train")):  # via the dataset card
        assert len(ds) == 12
        by_id = {r["id"]: r for r in ds}
        assert set(by_id) == set(ids)
        assert [by_id[i]["label"] for i in ids] == [k % 10 for k in range(12)]
        row = by_id[ids[1]]
        assert row["image"].size == (28, 28) and row["canvas"].size == (64, 64)
        assert np.array_equal(np.asarray(by_id[ids[0]]["image"]), np.asarray(digit(0)))


def test_export_writes_parquet_train_validation(tmp_path):
    import datasets

    home, out = tmp_path / "home", tmp_path / "out"
    store = FlagStore(home)
    ids = [store.append(digit(k), k % 10, visitor="s") for k in range(40)]
    store.vote(ids[0], "v", False)
    counts = export_dataset(home, out)
    assert counts["train"] + counts["validation"] == 40 and counts["validation"] >= 1
    assert sorted(p.name for p in (out / "data").iterdir()) == [
        "train-00000-of-00001.parquet", "validation-00000-of-00001.parquet"]
    with pytest.raises(ValueError, match="not an empty folder"):
        export_dataset(home, out)
    shutil.rmtree(home)  # the export holds the images themselves, not paths into DADC_HOME
    dd = datasets.load_dataset(str(out))
    assert {s: len(d) for s, d in dd.items()} == counts
    assert dd["train"].features["label"].names == [str(i) for i in range(10)]
    rows = {r["id"]: r for s in dd for r in dd[s]}
    assert set(rows) == set(ids)
    assert np.array_equal(np.asarray(rows[ids[3]]["image"]), np.asarray(digit(3)))
    assert rows[ids[3]]["label"] == 3 and rows[ids[0]]["disagree"] == 1
    with pytest.raises(ValueError, match="nothing to export"):
        export_dataset(tmp_path / "empty", tmp_path / "out3")


def test_human_tensors(tmp_path):
    store = FlagStore(tmp_path)
    ids = [store.append(digit(k), k, visitor="s") for k in range(5)]
    store.vote(ids[4], "v1", False)  # rejected by validators: left out of training
    x, y = human_tensors(tmp_path)
    assert tuple(x.shape) == (4, 1, 28, 28) and str(x.dtype) == "torch.float32" and str(y.dtype) == "torch.int64"
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    order = sorted(range(4), key=lambda k: int(y[k]))
    assert [int(y[k]) for k in order] == [0, 1, 2, 3]
    k2 = order[2]
    assert np.allclose(x[k2, 0].numpy(), np.asarray(digit(2)) / 255.0)
    assert len(human_tensors(tmp_path, drop_disputed=False)[1]) == 5
    x0, y0 = human_tensors(tmp_path / "nothing")
    assert tuple(x0.shape) == (0, 1, 28, 28) and len(y0) == 0


def test_cli_export(tmp_path, monkeypatch, capsys):
    from dadc.__main__ import main

    home = tmp_path / "home"
    store = FlagStore(home)
    for k in range(12):
        store.append(digit(k), k % 10)
    res = run_py("import runpy; runpy.run_module('dadc', run_name='__main__')", "export", tmp_path / "out",
                 env={"DADC_HOME": str(home)})  # python -m dadc export OUT
    assert res.returncode == 0, res.stderr
    assert f"exported 12 flagged examples to {tmp_path / 'out'}" in res.stdout
    assert len(list((tmp_path / "out" / "data").glob("*.parquet"))) == 2
    # bad input: one clear line and a non-zero exit
    monkeypatch.setenv("DADC_HOME", str(home))
    with pytest.raises(SystemExit) as exit_:
        main(["export", str(tmp_path / "out")])
    assert exit_.value.code == 1
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {tmp_path / 'out'} exists and is not an empty folder"]
    monkeypatch.setenv("DADC_HOME", str(tmp_path / "none"))
    with pytest.raises(SystemExit) as exit_:
        main(["export", str(tmp_path / "o2")])
    assert exit_.value.code == 1 and "nothing to export" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()
