"""The Hub layout made for `datasets` (issue 13, part 2), against the local fake Hub (tests/fake_hub.py)
with the real huggingface_hub client: one parquet shard per push per replica with the images inside,
`datasets.load_dataset(repo)` gives working Image and ClassLabel columns, what was pushed is recorded
on disk (a restart pushes nothing again), restore from shards and from the earlier layout, bad rows
inside a shard skipped and counted, and `python -m dadc migrate`."""
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fake_hub import Repo
from huggingface_hub import HfApi
from PIL import Image

from dadc import files
from dadc.hub import layout as hub_layout
from dadc.hub import migrate as hub_migrate
from dadc.hub import restore as hub_restore
from dadc.hub.sync import HubSync
from dadc.store import FlagStore

REPO = Path(__file__).resolve().parents[1]
TOKEN = "hf_fake_write_token"  # the one fake_hub accepts
DATASET = "tester/dadc-flags"


def digit(seed, size=(28, 28)):
    rng = np.random.default_rng(seed)
    arr = np.zeros(size[::-1], np.uint8)
    arr[4:24, 10:18] = rng.integers(100, 256, (20, 8))
    return Image.fromarray(arr)


def png(img):
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def flag(store, k, canvas=False):
    return store.append(digit(k), k % 10, canvas=Image.new("RGBA", (40 + k, 30)) if canvas else None,
                        prediction=(k + 1) % 10, confidences=[0.1] * 10, visitor=f"s{k % 3}")


def sync_for(store):
    """A HubSync whose pushes the test runs itself, one at a time (no scheduler thread)."""
    HfApi(token=TOKEN).create_repo(DATASET, repo_type="dataset", private=True, exist_ok=True)
    return HubSync(store, DATASET, TOKEN)


def push(sync):
    return sync._push(sync.api)  # what the scheduler's thread runs, here in the test's own


def shards(hub, under):
    return sorted(p for p in hub.files(DATASET) if p.startswith(under) and p.endswith(".parquet"))


def test_one_shard_per_push_and_load_dataset_decodes_images_and_labels(tmp_path, fake_hub):
    import datasets

    store = FlagStore(tmp_path)
    sync = sync_for(store)
    ids = []
    for p in range(3):  # three pushes of 10 flags (one with a canvas) and a vote
        ids += [flag(store, 10 * p + k, canvas=k == 0) for k in range(10)]
        store.vote(ids[-1], "voter", p != 1)
        assert sync.pending() == 11
        assert push(sync) is not None and sync.pending() == 0
    r = store.replica
    assert shards(fake_hub, "data/") == [f"data/{r}/{n:08d}.parquet" for n in (0, 10, 20)]
    assert shards(fake_hub, "votes/") == [f"votes/{r}/{n:08d}.parquet" for n in (0, 1, 2)]
    assert sorted(fake_hub.files(DATASET)) == ["README.md", *shards(fake_hub, "data/"), *shards(fake_hub, "votes/")]
    assert push(sync) is None and fake_hub.commits(DATASET) == 3  # nothing new: no commit

    ds = datasets.load_dataset(DATASET, split="train", token=TOKEN)
    assert isinstance(ds.features["image"], datasets.Image) and isinstance(ds.features["canvas"], datasets.Image)
    assert ds.features["label"].names == [str(d) for d in range(10)]
    assert sorted(ds["id"]) == sorted(ids) and len(ds) == 30
    local = {e.id: e for e in store.examples()}
    for row in ds:
        e = local[row["id"]]
        assert row["image"].size == (28, 28) and np.array_equal(np.asarray(row["image"]), np.asarray(store.image(e)))
        assert row["canvas"].size == Image.open(e.canvas_path).size
        assert (row["label"], row["prediction"], row["confidences"]) == (e.label, e.prediction, list(e.confidences))
    votes = datasets.load_dataset(DATASET, "votes", split="train", token=TOKEN)
    assert sorted(votes["agree"]) == [False, True, True] and set(votes["session"]) == {"voter"}


def test_a_backlog_over_the_shard_size_is_split_and_restores_whole(tmp_path, fake_hub, monkeypatch):
    store = FlagStore(tmp_path / "a")
    ids = [flag(store, k, canvas=True) for k in range(10)]
    one = sum(len(Path(p).read_bytes()) for e in store.examples()[:1] for p in (e.path, e.canvas_path))
    monkeypatch.setattr(hub_layout, "SHARD_BYTES", 3 * one + 10)  # three flags a shard
    push(sync_for(store))
    names, first = [], 0  # each shard is named by its first row
    for path in shards(fake_hub, "data/"):
        names.append(f"data/{store.replica}/{first:08d}.parquet")
        first += len(pq.read_table(io.BytesIO(fake_hub.files(DATASET)[path])))
    assert shards(fake_hub, "data/") == names and len(names) >= 3 and first == 10
    fresh = FlagStore(tmp_path / "b")
    assert HubSync(fresh, DATASET, TOKEN).restore()["examples"] == 10
    assert [e.id for e in fresh.examples()] == ids  # in their order


def test_a_restart_pushes_only_what_is_new(tmp_path, fake_hub):
    store = FlagStore(tmp_path)
    sync = sync_for(store)
    ids = [flag(store, k) for k in range(5)]
    push(sync)
    before = fake_hub.files(DATASET)
    # the app restarts on the same disk: a new HubSync on the same home knows what was pushed
    store, commits = FlagStore(tmp_path), fake_hub.commits(DATASET)
    sync = sync_for(store)
    assert sync.pending() == 0 and push(sync) is None and fake_hub.commits(DATASET) == commits
    ids.append(flag(store, 9))
    push(sync)
    after = fake_hub.files(DATASET)
    assert set(after) - set(before) == {f"data/{store.replica}/00000005.parquet"}  # one file: the new flag
    assert all(after[p] == data for p, data in before.items())
    assert sorted(r["id"] for r in fake_hub.shard_rows(DATASET)) == sorted(ids)


def test_a_commit_whose_record_was_lost_is_not_pushed_twice(tmp_path, fake_hub, monkeypatch):
    store = FlagStore(tmp_path)
    sync = sync_for(store)
    ids = [flag(store, k) for k in range(3)]
    push(sync)
    ids.append(flag(store, 3))
    with monkeypatch.context() as m:  # the process dies between the commit and its record
        m.setattr(store.hub, "record_pushed", lambda *a: (_ for _ in ()).throw(OSError("killed")))
        with pytest.raises(Exception):
            push(sync)
    ids.append(flag(store, 4))
    push(sync)  # the same shard name again, with a superset of its rows: no duplicate
    assert shards(fake_hub, "data/") == [f"data/{store.replica}/{n:08d}.parquet" for n in (0, 3)]
    assert sorted(r["id"] for r in fake_hub.shard_rows(DATASET)) == sorted(ids)
    # the record itself lost: everything again from row 0, the replica's older shards deleted
    (tmp_path / "flags" / "pushed.json").unlink()
    assert sync.pending() == 5
    push(sync)
    assert shards(fake_hub, "data/") == [f"data/{store.replica}/00000000.parquet"]
    assert sorted(r["id"] for r in fake_hub.shard_rows(DATASET)) == sorted(ids)


def test_many_small_pushes_are_merged_into_few_shards_and_lose_nothing(tmp_path, fake_hub, monkeypatch):
    """A Space pushing every few seconds for months: the shards are merged as they pile up (MERGE of
    one size class into one), so 100 pushes leave a handful, with every row once, in order; a merge
    whose record was lost is redone without a duplicate; a fresh home restores it all."""
    from dadc.hub import push as hub_push

    monkeypatch.setattr(hub_push, "MERGE", 3)
    store = FlagStore(tmp_path / "a")
    sync = sync_for(store)
    ids, votes = [], 0
    for k in range(100):  # 100 pushes of one flag (every 7th with a vote)
        ids.append(flag(store, k))
        if k % 7 == 0:
            store.vote(ids[k // 2], f"voter{k}", True)
            votes += 1
        if k == 60:
            with monkeypatch.context() as m:  # the process dies between a commit and its record
                m.setattr(store.hub, "record_pushed", lambda *a: (_ for _ in ()).throw(OSError("killed")))
                with pytest.raises(Exception):
                    push(sync)
        assert push(sync) is not None
        rows = [r["id"] for r in fake_hub.shard_rows(DATASET)]
        assert rows == ids  # every row exactly once, in order, after every push
    data_shards, vote_shards = shards(fake_hub, "data/"), shards(fake_hub, "votes/")
    assert len(data_shards) <= 2 * 5 and len(vote_shards) <= 2 * 3  # (MERGE - 1) per size class at most
    assert len(fake_hub.shard_rows(DATASET, "votes")) == votes
    firsts = [int(Path(p).stem) for p in data_shards]  # each shard named by its first row
    assert firsts[0] == 0 and firsts == sorted(firsts)
    assert push(sync) is None  # nothing new
    fresh = FlagStore(tmp_path / "b")
    assert HubSync(fresh, DATASET, TOKEN).restore()["examples"] == 100
    assert [e.id for e in fresh.examples()] == ids
    assert sum(e.agree for e in fresh.examples()) == votes


def test_restore_from_shards_into_an_empty_home(tmp_path, fake_hub):
    a, b = FlagStore(tmp_path / "a"), FlagStore(tmp_path / "b")
    ids = [flag(a, k, canvas=k % 2 == 0) for k in range(6)] + [flag(b, 10)]
    for store, id_, agree in ((a, ids[6], False), (b, ids[0], True)):  # a vote in one replica on a flag in
        files.append_line(store.dir / "votes.jsonl",           # another (its home had restored that one)
                          {"id": id_, "session": "v", "agree": agree, "time": "2024-01-01T00:00:00Z"})
    for store in (a, b):
        push(sync_for(store))
    home = tmp_path / "fresh"
    fresh = FlagStore(home)
    sync = HubSync(fresh, DATASET, TOKEN)
    assert sync.restore() == {"examples": 7, "rounds": []} and sync.skipped_rows == 0
    got = {e.id: e for e in fresh.examples()}
    for store in (a, b):
        for e in store.examples():
            assert Path(got[e.id].path).read_bytes() == Path(e.path).read_bytes()
            assert Path(got[e.id].canvas_path).read_bytes() == Path(e.canvas_path).read_bytes()
            assert (got[e.id].label, got[e.id].confidences, got[e.id].visitor, got[e.id].time) == \
                (e.label, e.confidences, e.visitor, e.time)
    assert (got[ids[0]].agree, got[ids[6]].disagree) == (1, 1)
    rows = [json.loads(line) for line in (home / "flags" / "data" / a.replica / "metadata.jsonl").read_text().splitlines()]
    assert [r["canvas_file_name"] == r["file_name"] for r in rows] == [k % 2 == 1 for k in range(6)]
    assert list((home / "flags" / "tmp").iterdir()) == []
    assert sync.restore() == {"examples": 0, "rounds": []}  # nothing is missing now


def test_votes_keep_the_right_digit_and_the_admin_mark_through_the_hub(tmp_path, fake_hub):
    a = FlagStore(tmp_path / "a")
    ids = [flag(a, k) for k in range(3)]
    a.vote(ids[0], "v1", False, digit=7)
    a.vote(ids[0], "v2", False, digit=7)
    a.vote(ids[1], "ada", True, admin=True)
    push(sync_for(a))
    fresh = FlagStore(tmp_path / "fresh", admins={"ada"})  # an admin mark counts while its voter is an admin
    assert HubSync(fresh, DATASET, TOKEN).restore()["examples"] == 3
    got = {e.id: e for e in fresh.examples()}
    assert got[ids[0]].corrected(2) == 7 and got[ids[1]].admin is True and got[ids[1]].verified(2)


def seed(hub, files):
    repo = Repo(DATASET, "dataset", private=True)
    repo.commits.append((hashlib.sha1(repr(sorted(files)).encode()).hexdigest(), files))
    hub.repos[("dataset", DATASET)] = repo


def shard(records, schema=hub_layout.FLAG_SCHEMA):
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(records, schema=schema), buf)
    return buf.getvalue()


def record(key, image=None, canvas=None, **over):
    image = png(digit(len(key))) if image is None else image
    row = {"label": 3, "prediction": 5, "confidences": [0.1] * 10, "round": 0, "time": "2024-01-01T00:00:00Z",
           "session": "alice", "id": hashlib.md5(key.encode()).hexdigest(), **over}
    return hub_layout.flag_record(row, image, image if canvas is None else canvas)


def test_bad_rows_inside_a_shard_are_skipped_and_counted(tmp_path, fake_hub):
    good = [record("g1"), record("g2", canvas=png(Image.new("RGBA", (300, 200)))), record("g3", label=0)]
    bad = [record("label 12", label=12),
           record("canvas 8000", canvas=png(Image.new("1", (8000, 8000)))),  # a few KiB, refused from its header
           record("30x30", image=png(Image.new("L", (30, 30)))),
           record("20x20", image=png(Image.new("L", (20, 20)))),
           record("gif", image=b"GIF89a hello"),
           record("dup", id=good[0]["id"], label=9),
           record("bad id", id="../../etc"),
           record("nan", confidences=[float("nan")] * 10),
           {**record("no image"), "image": {"bytes": None, "path": "/etc/hostname"}}]
    votes = [{"id": good[0]["id"], "session": "bob", "agree": True, "time": "t"},
             {"id": hashlib.md5(b"nobody").hexdigest(), "session": "bob", "agree": True, "time": "t"}]
    # a second shard of another schema: a string label, the image as raw bytes, no canvas
    odd = pa.Table.from_pylist([{"id": hashlib.md5(b"odd").hexdigest(), "label": "7", "image": b"x"}])
    odd_bytes = io.BytesIO()
    pq.write_table(odd, odd_bytes)
    seed(fake_hub, {"data/cccc00000003/00000000.parquet": shard(good + bad),
                    "data/cccc00000003/00000012.parquet": odd_bytes.getvalue(),
                    "data/cccc00000003/00000013.parquet": b"PAR1 not parquet at all",
                    "votes/cccc00000003/00000000.parquet": shard(votes, hub_layout.VOTE_SCHEMA)})
    store = FlagStore(tmp_path)
    filled = hub_restore.restore_flags(HfApi(token=TOKEN), DATASET, store)
    assert (filled.added, filled.votes) == (3, 1)
    assert filled.skipped == {"bad label": 2, "canvas over 4096 px": 1, "image over 28 px": 1, "image not 28x28": 1,
                              "image unreadable": 1, "duplicate id": 1, "bad id": 1, "bad confidences": 1,
                              "image missing": 1, "shard unreadable": 1, "vote: unknown id": 1}
    examples = {e.id: e for e in store.examples()}
    assert set(examples) == {r["id"] for r in good} and examples[good[0]["id"]].agree == 1
    # re-encoded as the store keeps canvases (at most 256 px a side: issue 25, finding 3)
    assert Image.open(examples[good[1]["id"]].canvas_path).size == (150, 100)
    folder = tmp_path / "flags" / "data" / "cccc00000003" / "images"
    assert len(list(folder.iterdir())) == 4  # the three 28x28 and the one canvas kept: nothing of a bad row


def old_layout(store):
    """The files of a store's replica as the earlier layout pushed them."""
    return {p.relative_to(store.root).as_posix(): p.read_bytes() for p in store.dir.rglob("*") if p.is_file()}


def migrate_cli(hub, home):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_TOKEN": TOKEN, "DADC_DATASET_REPO": DATASET,
           "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": hub.url, "DADC_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "dadc", "migrate"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def test_migrate_rewrites_the_earlier_layout_and_both_restore(tmp_path, fake_hub):
    import datasets

    old, upgraded = FlagStore(tmp_path / "old"), FlagStore(tmp_path / "upgraded")
    ids = [flag(old, k, canvas=k == 1) for k in range(4)] + [flag(upgraded, 7)]
    old.vote(ids[1], "w", False)
    on_hub = {**old_layout(old), **old_layout(upgraded)}
    voter = "eeee00000005"  # a replica that only voted
    on_hub[f"data/{voter}/votes.jsonl"] = json.dumps({"id": ids[0], "session": "v", "agree": True, "time": "t"}).encode()
    first = json.loads(on_hub[f"data/{old.replica}/metadata.jsonl"].splitlines()[0])
    bad = "ab" * 16
    on_hub[f"data/{old.replica}/metadata.jsonl"] += json.dumps(
        {**first, "id": bad, "file_name": f"images/{bad}.png", "canvas_file_name": f"images/{bad}.png", "label": 12}
    ).encode() + b"\n"
    seed(fake_hub, on_hub)
    sync_for(upgraded)._push(HfApi(token=TOKEN))  # this replica's app already pushes shards (from row 0)

    # the earlier layout still restores
    before = FlagStore(tmp_path / "before")
    assert HubSync(before, DATASET, TOKEN).restore()["examples"] == 5

    res = migrate_cli(fake_hub, tmp_path / "home")
    assert res.returncode == 0, res.stderr
    assert "3 replica folders, 4 flags and 2 votes into 3 parquet shards" in res.stdout, res.stdout
    assert "1 bad label" in res.stdout
    assert fake_hub.commits(DATASET) == 3  # the seed, the push, then the migration: one commit
    paths = sorted(fake_hub.files(DATASET))
    assert paths == sorted(["README.md", f"data/{old.replica}/00000000.parquet", f"votes/{old.replica}/00000000.parquet",
                            f"votes/{voter}/00000000.parquet", f"data/{upgraded.replica}/00000000.parquet"])
    ds = datasets.load_dataset(DATASET, split="train", token=TOKEN)
    assert sorted(ds["id"]) == sorted(ids) and ds.features["label"].names[7] == "7"
    after = FlagStore(tmp_path / "after")
    assert HubSync(after, DATASET, TOKEN).restore()["examples"] == 5
    assert {e.id: (e.label, e.agree, e.disagree, Path(e.canvas_path).read_bytes()) for e in after.examples()} == \
        {e.id: (e.label, e.agree, e.disagree, Path(e.canvas_path).read_bytes()) for e in before.examples()}
    assert "nothing to migrate" in migrate_cli(fake_hub, tmp_path / "home").stdout


def test_migrate_refuses_to_overwrite_a_push_that_landed_meanwhile(tmp_path, fake_hub):
    from huggingface_hub.errors import HfHubHTTPError

    old = FlagStore(tmp_path / "old")
    flag(old, 1)
    seed(fake_hub, old_layout(old))
    api = HfApi(token=TOKEN)

    class PushMeanwhile:  # the api, but another replica pushes between the listing and the commit
        def __getattr__(self, name):
            return getattr(api, name)

        def snapshot_download(self, *a, **kw):
            api.upload_file(path_or_fileobj=b"x", path_in_repo="data/dddd00000004/00000000.parquet",
                            repo_id=DATASET, repo_type="dataset")
            return api.snapshot_download(*a, **kw)

    (tmp_path / "work").mkdir()
    with pytest.raises(HfHubHTTPError, match="412"):
        hub_migrate.migrate(PushMeanwhile(), DATASET, tmp_path / "work")
    assert f"data/{old.replica}/metadata.jsonl" in fake_hub.files(DATASET)  # nothing was deleted


@pytest.mark.parametrize("before, extra", [(7, 8), (7, 20), (15, 9), (63, 70), (6, 1)])
def test_a_merge_whose_record_was_lost_then_many_flags_leave_every_row_once(tmp_path, fake_hub, monkeypatch,
                                                                            before, extra):
    """Issue 25, finding 10: a push that merged shards (the MERGE-th of one size class) died after
    its commit, before its record (pushed.json); then MERGE or more flags came before the next push:
    a row stayed in two shards forever. Every row must be on the Hub once, whatever came after."""
    store = FlagStore(tmp_path / "a")
    sync = sync_for(store)
    ids = []
    for _ in range(before):
        ids.append(flag(store, len(ids)))
        push(sync)
    ids.append(flag(store, len(ids)))
    real = store.hub.record_pushed
    with monkeypatch.context() as m:  # the commit lands; its record does not (an intent before it may)
        m.setattr(store.hub, "record_pushed",
                  lambda repo, marks: real(repo, marks) if "pending" in marks else (_ for _ in ()).throw(OSError))
        with pytest.raises(Exception):
            push(sync)
    ids += [flag(store, len(ids)) for _ in range(extra)]
    for _ in range(3):
        push(sync)
        assert sorted(r["id"] for r in fake_hub.shard_rows(DATASET)) == sorted(ids)
        ids.append(flag(store, len(ids)))
