"""HubSync against a local fake Hub (tests/fake_hub.py) with the real huggingface_hub client:
flags land in a private repo, the Hub going down loses nothing, replicas do not collide, a fresh
DADC_HOME is restored, rounds go to the model repo, a bad token or repo name is handled, the
token never leaks."""
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dadc.hub.sync import HubSync, model_card
from dadc.rounds.registry import Registry
from dadc.store import FlagStore

REPO = Path(__file__).resolve().parents[1]
TOKEN = "hf_fake_write_token"  # the one fake_hub accepts
DATASET = "tester/dadc-flags"
MODELS = "tester/dadc-rounds"
EVERY = 0.02  # minutes: 1.2 s between scheduled pushes, so a test sees several


def digit(seed):
    rng = np.random.default_rng(seed)
    arr = np.zeros((28, 28), np.uint8)
    arr[4:24, 10:18] = rng.integers(100, 256, (20, 8))
    return Image.fromarray(arr)


def wait_for(cond, timeout=20.0):
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return True
        time.sleep(0.05)
    return False


def hub_rows(hub, repo=DATASET):
    return hub.shard_rows(repo)  # the flags' parquet shards (dadc/hub_layout.py)


def make_round(home, n=1, acc=0.987):
    from safetensors.numpy import save_file

    d = Path(home) / "rounds" / f"round-{n:03d}"
    d.mkdir(parents=True)
    save_file({"fc.weight": np.arange(6, dtype=np.float32).reshape(2, 3)}, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps({"arch": "wong_small"}))
    (d / "metrics.json").write_text(json.dumps({"clean_acc": acc, "robust_acc": 0.812, "n": 1000}))
    return d


@pytest.fixture
def syncs():
    """HubSyncs made in a test, stopped at its end (so no pusher thread outlives it)."""
    made = []
    yield made
    for s in made:
        s.stop(timeout=5)
        if s.scheduler is not None:
            import atexit

            atexit.unregister(s.scheduler._push_to_hub)


def start(syncs, store, token=TOKEN, every=EVERY, **kw):
    sync = HubSync(store, DATASET, token, every=every, **kw)
    syncs.append(sync)
    return sync.start()


@pytest.mark.parametrize("repo", ["not a repo", "a/b/c", "bad--name/x", "tester/x..y", "-lead/x", ""])
def test_invalid_repo_name_is_a_clear_error_at_start(tmp_path, repo):
    store = FlagStore(tmp_path)
    with pytest.raises(ValueError, match="DADC_DATASET_REPO=.* is not a valid Hub repo id"):
        HubSync(store, repo, TOKEN)
    with pytest.raises(ValueError, match="DADC_MODEL_REPO=.* is not a valid Hub repo id"):
        HubSync(store, DATASET, TOKEN, model_repo=repo or "x/y/z")
    with pytest.raises(ValueError, match="HF_TOKEN"):
        HubSync(store, DATASET, None)


def test_flags_land_in_a_private_repo_and_load_with_datasets(tmp_path, fake_hub, syncs):
    import datasets

    store = FlagStore(tmp_path)
    ids = [store.append(digit(k), k % 10, prediction=(k + 3) % 10, visitor="s") for k in range(6)]
    store.vote(ids[0], "other", True)
    sync = start(syncs, store)
    assert wait_for(lambda: len(hub_rows(fake_hub)) == 6), sync.status()
    assert fake_hub.repos[("dataset", DATASET)].private
    files = fake_hub.files(DATASET)
    prefixes = (f"data/{store.replica}/", f"votes/{store.replica}/")
    assert "README.md" in files and all(p == "README.md" or p.startswith(prefixes) for p in files)
    assert len(fake_hub.shard_rows(DATASET, "votes")) == 1
    for r in hub_rows(fake_hub):  # every pushed row carries its image, byte for byte
        assert r["image"]["bytes"] == (store.dir / f"images/{r['id']}.png").read_bytes()
    assert wait_for(lambda: sync.status()["pending"] == 0)
    st = sync.status()
    assert st["last_push"] and st["last_error"] is None and st["connected"]
    # more flags go with the next scheduled push, without anyone asking
    more = [store.append(digit(10 + k), 1, visitor="s") for k in range(3)]
    assert wait_for(lambda: len(hub_rows(fake_hub)) == 9)
    ds = datasets.load_dataset(DATASET, split="train", token=TOKEN)  # the Hub copy loads too
    assert sorted(ds["id"]) == sorted(ids + more)
    assert {r["id"]: r["label"] for r in ds} == {r.id: r.label for r in store.examples()}
    assert all(TOKEN.encode() not in data for data in fake_hub.files(DATASET).values())


def test_hub_down_then_up_loses_nothing_and_never_blocks(tmp_path, fake_hub, syncs):
    store = FlagStore(tmp_path)
    fake_hub.stop()  # down before the app even starts
    sync = start(syncs, store)
    assert wait_for(lambda: sync.status()["last_error"] is not None)
    assert "cannot reach the Hub" in sync.status()["last_error"] and not sync.status()["connected"]
    t0 = time.time()
    ids = [store.append(digit(k), k % 10) for k in range(5)]
    assert time.time() - t0 < 2  # flagging goes on at disk speed
    assert sync.status()["pending"] == 5
    fake_hub.start()  # back: the next connection attempt creates the repo and pushes
    assert wait_for(lambda: len(hub_rows(fake_hub)) == 5)
    assert wait_for(lambda: sync.status()["last_error"] is None and sync.status()["pending"] == 0)
    # down again while connected: the push in flight retries; flags keep coming
    fake_hub.stop()
    t0 = time.time()
    ids += [store.append(digit(10 + k), 3) for k in range(5)]
    assert time.time() - t0 < 2
    time.sleep(1.5)  # a scheduled push is now failing and retrying against the dead port
    assert sync.status()["pending"] == 5 and len(store.examples()) == 10
    fake_hub.start()
    assert wait_for(lambda: len(hub_rows(fake_hub)) == 10, timeout=40)  # the retry goes through
    assert sorted(r["id"] for r in hub_rows(fake_hub)) == sorted(ids)
    assert wait_for(lambda: sync.status()["pending"] == 0)


def test_replicas_push_to_distinct_paths(tmp_path, fake_hub, syncs):
    import datasets

    a, b = FlagStore(tmp_path / "a"), FlagStore(tmp_path / "b")
    assert a.replica != b.replica
    ids = [a.append(digit(k), 1) for k in range(4)] + [b.append(digit(10 + k), 2) for k in range(3)]
    sa, sb = start(syncs, a), start(syncs, b)
    assert wait_for(lambda: len(hub_rows(fake_hub)) == 7), (sa.status(), sb.status())
    ids += [a.append(digit(20), 5), b.append(digit(21), 6)]
    assert wait_for(lambda: len(hub_rows(fake_hub)) == 9)
    assert len(fake_hub.shard_rows(DATASET, f"data/{a.replica}")) == 5
    assert len(fake_hub.shard_rows(DATASET, f"data/{b.replica}")) == 4
    ds = datasets.load_dataset(DATASET, split="train", token=TOKEN)
    assert sorted(ds["id"]) == sorted(ids)


def test_restore_into_an_empty_home_and_rounds_to_the_hub(tmp_path, fake_hub, syncs):
    old = FlagStore(tmp_path / "old")
    ids = [old.append(digit(k), k % 10, canvas=Image.new("RGBA", (50, 50)) if k == 0 else None, visitor="s")
           for k in range(5)]
    old.vote(ids[1], "v", False)
    sync = start(syncs, old, model_repo=MODELS)
    round_dir = make_round(tmp_path / "old", 1)
    sync.push_round(round_dir, counts={"human examples": 5, "mnist examples": 60000})
    assert wait_for(lambda: sync.status()["rounds_pending"] == [] and sync.status()["pending"] == 0), sync.status()
    # the model repo: the round's files, byte for byte, and a card with its metrics and data counts
    assert fake_hub.repos[("model", MODELS)].private
    mfiles = fake_hub.files(MODELS, "model")
    for f in ("model.safetensors", "config.json", "metrics.json"):
        assert mfiles[f"rounds/round-001/{f}"] == (round_dir / f).read_bytes()
    card = mfiles["rounds/round-001/README.md"].decode()
    assert "98.70%" in card and "81.20%" in card and "| human examples | 5 |" in card and "60000" in card
    assert mfiles["README.md"].decode() == card
    sync.stop()

    # the Space restarts with an empty disk
    new_home = tmp_path / "new"
    new = FlagStore(new_home)
    sync2 = HubSync(new, DATASET, TOKEN, every=EVERY, model_repo=MODELS, registry=Registry(new_home))
    syncs.append(sync2)
    got = sync2.restore()
    assert got == {"examples": 5, "rounds": ["round-001"]}
    by_id = {r.id: r for r in new.examples()}
    assert set(by_id) == set(ids)
    for r in old.examples():
        assert Path(by_id[r.id].path).read_bytes() == Path(r.path).read_bytes()
        assert Path(by_id[r.id].canvas_path).read_bytes() == Path(r.canvas_path).read_bytes()
        assert (by_id[r.id].label, by_id[r.id].disagree) == (r.label, r.disagree)
    for f in ("model.safetensors", "config.json", "metrics.json"):
        assert (new_home / "rounds" / "round-001" / f).read_bytes() == (round_dir / f).read_bytes()
    assert [p.name for p in (new_home / "flags" / "tmp").iterdir()] == []  # downloads cleaned up
    assert sorted(p.name for p in new_home.iterdir()) == ["flags", "rounds"]  # nothing else written
    # restoring again (store no longer empty) changes nothing; new flags go to the new replica only
    assert sync2.restore() == {"examples": 0, "rounds": []}
    before = fake_hub.files(DATASET)
    new_id = new.append(digit(99), 4)
    sync2.start()
    assert wait_for(lambda: new_id in {r["id"] for r in hub_rows(fake_hub)})
    after = fake_hub.files(DATASET)
    assert all(after[p] == data for p, data in before.items() if p.startswith(f"data/{old.replica}/"))
    assert len(hub_rows(fake_hub)) == 6


def test_restore_with_no_repo_yet_is_a_no_op(tmp_path, fake_hub):
    sync = HubSync(FlagStore(tmp_path), DATASET, TOKEN, model_repo=MODELS)
    assert sync.restore() == {"examples": 0, "rounds": []} and sync.status()["last_error"] is None


def test_rejected_token_keeps_the_app_local_and_never_leaks(tmp_path, fake_hub, syncs, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    fake_hub.echo_auth_in_errors = True  # worst case: the server repeats the token in its error
    bad = "hf_this_token_is_secret_and_wrong"
    store = FlagStore(tmp_path)
    sync = HubSync(store, DATASET, bad, every=EVERY, model_repo=MODELS)
    syncs.append(sync)
    assert bad not in repr(sync)
    assert sync.restore() == {"examples": 0, "rounds": []}  # recorded, not raised
    assert "401" in sync.status()["last_error"]
    sync.start()
    assert wait_for(lambda: "connecting" in (sync.status()["last_error"] or ""))
    msg = sync.status()["last_error"]
    assert "rejected HF_TOKEN (401" in msg and "kept locally" in msg
    ids = [store.append(digit(k), 7) for k in range(3)]  # the app keeps working locally
    assert store.count() == 3 and sync.status()["pending"] == 3
    assert fake_hub.repos == {}
    # the token is nowhere: not in status, logs, stdout/stderr
    out, err = capfd.readouterr()
    assert any(status == 401 for _, _, status in fake_hub.requests)  # it did talk to the Hub
    assert bad not in json.dumps(sync.status()) + caplog.text + out + err
    assert len(ids) == 3


def test_push_at_shutdown_from_a_process_that_just_exits(tmp_path, fake_hub):
    # every=60 min: nothing is scheduled during the run; the exit push must carry the flags
    code = f"""
import numpy as np, time
from PIL import Image
from dadc.store import FlagStore
from dadc.hub.sync import HubSync
store = FlagStore({str(tmp_path)!r})
sync = HubSync(store, {DATASET!r}, {TOKEN!r}, every=60).start()
assert sync.status()["pending"] == 0
while sync.scheduler is None or sync.status()["last_push"] is None:  # the first push (empty store)
    time.sleep(0.05)
for k in range(4):
    store.append(Image.fromarray(np.full((28, 28), 50 * k, np.uint8)), k)
print("pending", sync.status()["pending"], flush=True)
"""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "0"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "pending 4" in res.stdout
    assert sorted(r["label"] for r in hub_rows(fake_hub)) == [0, 1, 2, 3]


def test_model_card_without_counts_says_so(tmp_path):
    d = make_round(tmp_path, 2, acc=0.5)
    card = model_card(d)
    assert "# DADC studio: round-002" in card and "50.00%" in card and "_not recorded_" in card


def test_error_texts_are_scrubbed_of_the_token(tmp_path, caplog):
    secret = "hf_scrub_me_please"
    sync = HubSync(FlagStore(tmp_path), DATASET, secret)
    err = sync.log.fail(RuntimeError(f"proxy said: Authorization: Bearer {secret}"), "pushing flags to the Hub")
    for text in (str(err), sync.status()["last_error"]):
        assert secret not in text and "Bearer hf_***" in text
