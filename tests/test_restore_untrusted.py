"""Rows of the Hub dataset are untrusted input (issue 11, part 4): a restore from a local fake Hub
(tests/fake_hub.py, the real huggingface_hub client) whose replica folders hold good rows among
traversal and absolute paths, missing and oversized images, bad labels, predictions, confidences,
sessions, duplicate ids and stray votes. Exactly the good rows come back, nothing outside DADC_HOME
is read, each bad row is logged and counted, and `python -m dadc export` works after it."""
import hashlib
import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fake_hub import Repo
from PIL import Image

from dadc.hub import restore as hub_restore
from dadc.hub.sync import HubSync
from dadc.store import FIELDS, FlagStore

REPO = Path(__file__).resolve().parents[1]
TOKEN = "hf_fake_write_token"  # the one fake_hub accepts
DATASET = "tester/dadc-flags"
VOTER, FLAGS = "aaaa00000001", "bbbb00000002"  # replica folders; the voter's is filled first


def png(img):
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def digit(seed):
    rng = np.random.default_rng(seed)
    arr = np.zeros((28, 28), np.uint8)
    arr[4:24, 10:18] = rng.integers(100, 256, (20, 8))
    return png(Image.fromarray(arr))


def hex_id(name):
    return hashlib.md5(name.encode()).hexdigest()


class Replica:
    """One replica folder of the seeded dataset repo: its metadata and vote lines and its images."""

    def __init__(self, name):
        self.name, self.rows, self.votes, self.files = name, [], [], {}

    def flag(self, key, canvas=None, image=None, put_images=True, **over):
        """A row as append() writes it, with its images, then `over` on top (None: key removed)."""
        id_ = over.get("id", hex_id(key))
        row = {"file_name": f"images/{id_}.png", "label": 3, "prediction": 5, "confidences": [0.1] * 10,
               "round": 0, "time": "2024-01-01T00:00:00Z", "session": "alice", "id": id_,
               "canvas_file_name": f"images/{id_}-canvas.png" if canvas is not None else f"images/{id_}.png"}
        if put_images:
            self.put(f"images/{id_}.png", digit(len(self.rows)) if image is None else image)
        if canvas is not None:
            self.put(f"images/{id_}-canvas.png", canvas)
        row.update(over)
        self.rows.append(json.dumps({k: v for k, v in row.items() if v is not None}).encode())
        return id_

    def vote(self, id_, session="bob", agree=True, **over):
        self.votes.append(json.dumps({"id": id_, "session": session, "agree": agree,
                                      "time": "2024-01-02T00:00:00Z", **over}).encode())

    def put(self, rel, data):
        self.files[f"data/{self.name}/{rel}"] = data

    def repo_files(self):
        return {**self.files, f"data/{self.name}/metadata.jsonl": b"\n".join(self.rows) + b"\n",
                f"data/{self.name}/votes.jsonl": b"\n".join(self.votes) + b"\n"}


def seed(hub, *replicas):
    """Put the replicas' files straight into a private dataset repo of the fake Hub, as one commit."""
    repo = Repo(DATASET, "dataset", private=True)
    files = {k: v for r in replicas for k, v in r.repo_files().items()}
    repo.commits.append((hashlib.sha1(b"seeded").hexdigest(), files))
    hub.repos[("dataset", DATASET)] = repo


def hostile_repo():
    """(replicas, good ids, bad rows and votes). Each bad row has exactly one fault."""
    flags, voter = Replica(FLAGS), Replica(VOTER)
    good = [flags.flag("g1", canvas=png(Image.new("RGBA", (50, 50), (255, 255, 255, 255))), label=7),
            flags.flag("g2", label=0, prediction=-1, confidences=[0] * 9 + [1], agree=99),  # extra key dropped
            flags.flag("g3", canvas=png(Image.new("1", (4096, 3))), label=9),  # 4096 a side is allowed
            voter.flag("a1", label=1)]
    bad = 0
    for key, kw in {
        "traversal": {"file_name": "../../etc/hostname"},
        "absolute": {"file_name": "/etc/hostname"},
        "canvas traversal": {"canvas_file_name": "../../../etc/hostname"},
        "bad id": {"id": "../../etc", "put_images": False},
        "label 12": {"label": 12},
        "label str": {"label": "7"},
        "label bool": {"label": True},
        "no label": {"label": None},
        "prediction 42": {"prediction": 42},
        "9 confidences": {"confidences": [0.1] * 9},
        "nan confidence": {"confidences": [float("nan")] * 10},
        "long session": {"session": "s" * 10_000},
        "round -1": {"round": -1},
        "time list": {"time": ["2024"]},
        "duplicate id": {"id": good[0], "label": 2, "put_images": False},
    }.items():
        flags.flag(key, **kw)
        bad += 1
    flags.flag("canvas 8000x8000", canvas=png(Image.new("1", (8000, 8000))))  # a few KiB on the wire
    flags.flag("30x30", image=png(Image.new("L", (30, 30))))
    flags.flag("20x20", image=png(Image.new("L", (20, 20))))
    flags.flag("not a png", image=b"GIF89a hello")
    missing = flags.flag("missing image")
    del flags.files[f"data/{FLAGS}/images/{missing}.png"]
    flags.rows += [b"{not json", b"[1, 2, 3]"]
    bad += 7
    flags.vote(good[0], "bob", True)
    voter.vote(good[0], "carol", False)  # a vote in the voter's replica on a flag in another
    flags.vote(hex_id("nobody"))          # a vote naming an unknown id
    flags.vote(hex_id("traversal"))       # ... or a row that was skipped
    flags.vote(good[1], agree="yes")
    flags.vote(good[1], session="s" * 10_000)
    bad += 4
    return (flags, voter), good, bad


def export(home, out):
    env = dict(os.environ, DADC_HOME=str(home), PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    env.pop("DADC_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "dadc", "export", str(out)], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=300)


def test_a_hostile_hub_restores_exactly_its_good_rows(tmp_path, fake_hub, caplog):
    import datasets

    replicas, good, bad = hostile_repo()
    seed(fake_hub, *replicas)
    home = tmp_path / "home"
    store = FlagStore(home)
    sync = HubSync(store, DATASET, TOKEN)
    caplog.set_level(logging.WARNING, logger="dadc.restore")

    assert sync.restore() == {"examples": len(good), "rounds": []}
    assert sync.status()["last_error"] is None
    assert sync.skipped_rows == bad
    assert len([r for r in caplog.records if r.name == "dadc.restore"]) == bad  # one line per skipped row

    examples = {e.id: e for e in store.examples()}
    assert set(examples) == set(good)
    assert [examples[i].label for i in good] == [7, 0, 9, 1]
    assert (examples[good[0]].agree, examples[good[0]].disagree) == (1, 1)  # the cross-replica vote is kept
    assert {v.id for v in store.votes()} == {good[0]}
    # nothing outside DADC_HOME is named or read; no link anywhere in the store
    inside = home.resolve()
    for e in examples.values():
        assert Path(e.path).resolve().is_relative_to(inside) and Path(e.canvas_path).resolve().is_relative_to(inside)
    assert not [p for p in (home / "flags").rglob("*") if p.is_symlink()]
    # only the images of kept rows came in, and the rows are ours: canonical, no extra key
    for name in (FLAGS, VOTER):
        folder = home / "flags" / "data" / name
        rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
        assert all(tuple(r) == FIELDS for r in rows)
        names = {r[k].removeprefix("images/") for r in rows for k in ("file_name", "canvas_file_name")}
        assert {p.name for p in (folder / "images").iterdir()} == names
    assert list((home / "flags" / "tmp").iterdir()) == []
    # a round can use them (28x28 each)
    x, y = store.tensors(list(examples.values()))
    assert tuple(x.shape) == (len(good), 1, 28, 28) and sorted(y.tolist()) == [0, 1, 7, 9]

    res = export(home, tmp_path / "out")
    assert res.returncode == 0, res.stdout + res.stderr
    ds = datasets.load_dataset(str(tmp_path / "out"))
    got = {r["id"]: r for split in ds.values() for r in split}
    assert set(got) == set(good)
    assert all(r["image"].size == (28, 28) for r in got.values())

    # restoring again: nothing is missing, nothing is added or counted twice
    assert sync.restore() == {"examples": 0, "rounds": []} and sync.skipped_rows == bad


def test_skipped_rows_are_counted_by_reason(tmp_path, fake_hub):
    from huggingface_hub import HfApi

    replicas, good, bad = hostile_repo()
    seed(fake_hub, *replicas)
    filled = hub_restore.restore_flags(HfApi(token=TOKEN), DATASET, FlagStore(tmp_path))
    assert (filled.added, filled.votes) == (len(good), 2)
    assert filled.skipped == {
        "bad file_name": 2, "bad canvas_file_name": 1, "bad id": 1, "bad label": 4, "bad prediction": 1,
        "bad confidences": 2, "bad session": 1, "bad round": 1, "bad time": 1, "duplicate id": 1,
        "canvas over 4096 px": 1, "image over 28 px": 1, "image not 28x28": 1, "image unreadable": 1,
        "image missing": 1, "not JSON": 1, "not a JSON object": 1,
        "vote: unknown id": 2, "vote: bad agree": 1, "vote: bad session": 1}
    assert filled.skipped_rows == bad


def test_a_row_with_an_id_the_home_already_has_is_skipped(tmp_path, fake_hub):
    store = FlagStore(tmp_path / "home")
    mine = store.append(Image.open(io.BytesIO(digit(1))), 4, visitor="me")
    hub = Replica(FLAGS)
    hub.flag("dup", id=mine, label=8, session="mallory")  # its image too: only the row is refused
    other = hub.flag("fresh")
    seed(fake_hub, hub)
    sync = HubSync(store, DATASET, TOKEN)
    assert sync.restore()["examples"] == 1 and sync.skipped_rows == 1
    by_id = {e.id: e for e in store.examples()}
    assert set(by_id) == {mine, other}
    assert (by_id[mine].label, by_id[mine].visitor) == (4, "me")  # the local row stands


@pytest.mark.parametrize("all_bad", [True, False])
def test_a_folder_of_only_bad_rows_adds_nothing_and_never_raises(tmp_path, fake_hub, all_bad):
    hub = Replica(FLAGS)
    hub.flag("b", label=12)
    if not all_bad:
        hub.flag("g")
    seed(fake_hub, hub)
    store = FlagStore(tmp_path / "home")
    sync = HubSync(store, DATASET, TOKEN)
    assert sync.restore() == {"examples": 0 if all_bad else 1, "rounds": []}
    assert sync.skipped_rows == 1 and sync.status()["last_error"] is None
    assert store.count() == (0 if all_bad else 1)


# --- issue 26, finding 4: votes from the Hub believed only as far as their replica and voter allow ---

def seed_shards(hub, files):
    """Put parquet shards (and nothing else) straight into the fake Hub's dataset repo, as one commit."""
    repo = hub.repos.get(("dataset", DATASET)) or Repo(DATASET, "dataset", private=True)
    head = dict(repo.head[1])
    repo.commits.append((hashlib.sha1(repr(sorted(files)).encode()).hexdigest(), {**head, **files}))
    hub.repos[("dataset", DATASET)] = repo


def vote_shard(*votes):
    """One votes/<replica>/*.parquet shard as a push writes it (hub/layout.py's schema)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dadc.hub import layout as hub_layout

    rows = [{"time": "2024-01-02T00:00:00Z", "digit": None, "admin": False, **v} for v in votes]
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=hub_layout.VOTE_SCHEMA), buf)
    return buf.getvalue()


def flag_shard(*rows):
    """One data/<replica>/*.parquet shard: flags with their images inside."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dadc.hub import layout as hub_layout

    records = [hub_layout.flag_record({"label": 3, "prediction": 5, "confidences": [0.1] * 10, "round": 0,
                                       "time": "2024-01-01T00:00:00Z", **r}, digit(i), digit(i))
               for i, r in enumerate(rows)]
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(records, schema=hub_layout.FLAG_SCHEMA), buf)
    return buf.getvalue()


def verdicts(store, votes=2):
    """(verified, decided, disputed, the admin's verdict, retracted) of each example, in order."""
    return [(e.verified(votes), e.decided(votes), e.disputed, e.admin, e.retracted) for e in store.examples()]


def test_forged_admin_votes_and_retractions_from_the_hub_change_nothing(tmp_path, fake_hub, monkeypatch):
    """Finding 4: shards in new replica folders held votes on this home's own flags: an admin mark
    from a session no admin has (DADC_ADMINS: ada) made a verified flag admin-rejected and an open one
    admin-verified, and a 'no' under an anonymous flagger's id (ids derived by this home, meaningless
    in another replica) retracted a third. The votes are well-formed, so the restore writes them
    (the on-disk format is unchanged), but the store believes none of them."""
    monkeypatch.setenv("DADC_ADMINS", "ada")
    store = FlagStore(tmp_path / "home")
    image = Image.open(io.BytesIO(digit(1)))
    verified, open_, own = (store.append(image, 4, visitor=v) for v in ("anon-0a0a0a0a0a0a", "anon-0b0b0b0b0b0b",
                                                                        "anon-0c0c0c0c0c0c"))
    for voter in ("anon-1a1a1a1a1a1a", "anon-1b1b1b1b1b1b"):
        store.vote(verified, voter, True)
    before = store.examples()
    assert verdicts(store) == [(True, True, False, None, False), (False, False, False, None, False),
                               (False, False, False, None, False)]
    seed_shards(fake_hub, {
        "votes/eeee00000001/00000000.parquet": vote_shard(
            {"id": verified, "session": "mallory", "agree": False, "admin": True}),
        "votes/eeee00000002/00000000.parquet": vote_shard(
            {"id": open_, "session": "anon-2a2a2a2a2a2a", "agree": True, "admin": True}),
        "votes/eeee00000003/00000000.parquet": vote_shard(
            {"id": own, "session": "anon-0c0c0c0c0c0c", "agree": False})})
    sync = HubSync(store, DATASET, TOKEN)
    assert sync.restore() == {"examples": 0, "rounds": []} and sync.skipped_rows == 0
    assert len(store.votes()) == 2 + 3  # all three came in, as written
    assert verdicts(store) == [(True, True, False, None, False), (False, False, False, None, False),
                               (False, False, False, None, False)]
    assert store.examples() == before  # and changed nothing: no verdict, no count, no retraction
    assert store.next_to_vote("anon-3a3a3a3a3a3a", 2).id in (open_, own)  # still asked of others


def test_votes_from_the_hub_that_are_believed(tmp_path, fake_hub, monkeypatch):
    """What a restored vote still may do: an admin's mark, while its voter is an admin now; the
    flagger's 'no' cast in the flag's own replica (as the app writes it), and a logged-in flagger's
    (a username is the same person in every replica)."""
    monkeypatch.setenv("DADC_ADMINS", "ada")
    store = FlagStore(tmp_path / "home")
    image = Image.open(io.BytesIO(digit(2)))
    by_ada, by_alice = store.append(image, 4, visitor="anon-0d0d0d0d0d0d"), store.append(image, 5, visitor="alice")
    anon_flag = hex_id("anon flag")
    seed_shards(fake_hub, {
        "data/ffff00000001/00000000.parquet": flag_shard({"id": anon_flag, "session": "anon-0e0e0e0e0e0e"}),
        "votes/ffff00000001/00000000.parquet": vote_shard(
            {"id": anon_flag, "session": "anon-0e0e0e0e0e0e", "agree": False},  # its own replica: believed
            {"id": by_ada, "session": "ada", "agree": True, "admin": True},
            {"id": by_alice, "session": "alice", "agree": False})})
    assert HubSync(store, DATASET, TOKEN).restore()["examples"] == 1
    got = {e.id: e for e in store.examples()}
    assert got[by_ada].admin is True and got[by_ada].verified(2)
    assert got[by_alice].retracted and got[anon_flag].retracted


def test_an_admin_mark_counts_only_while_its_voter_is_an_admin(tmp_path):
    """DADC_ADMINS is read now, not when the vote was cast: a former admin's marked vote decides
    nothing (nor counts as a plain vote: a mark nobody may make voids it)."""
    home = tmp_path / "home"
    store = FlagStore(home, admins={"ada"})
    id_ = store.append(Image.open(io.BytesIO(digit(3))), 4, visitor="anon-0f0f0f0f0f0f")
    store.vote(id_, "ada", False, admin=True)
    assert store.find(id_).admin is False and store.find(id_).disputed
    own = store.append(Image.open(io.BytesIO(digit(4))), 5, visitor="ada")
    store.vote(own, "ada", False, admin=True)  # an admin retracting their own flag (the app marks it)
    later = FlagStore(home, admins={"bea"})
    assert (later.find(id_).admin, later.find(id_).disagree, later.find(id_).disputed) == (None, 0, False)
    assert later.find(own).retracted  # a retraction is no verdict: it stands


# --- issue 25, finding 3: what a restore may bring in is bounded ---------------------------------------------

def _home_bytes(path):
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def test_a_few_kb_shard_cannot_fill_the_home(tmp_path, fake_hub):
    """A 5 KB shard whose 28x28 PNGs carried MiBs after their end wrote 419 MB; a 169 KB shard
    (dictionary encoding: one image stored once) gave 60,000 rows. Now every image is re-encoded as
    our own PNG, an image over its byte limit is skipped, and a replica brings rows and bytes in
    proportion to what was downloaded of it (rows.Budget); all replicas no more than the cap allows."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from huggingface_hub import HfApi

    from dadc.hub import restore as hub_restore
    from dadc.hub import rows as hub_rows
    from test_hub_layout import DATASET, TOKEN, digit, png, record, seed

    from dadc.hub.layout import FLAG_SCHEMA

    def packed(records):  # as small as a hostile writer makes it: dictionary encoding, zstd
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(records, schema=FLAG_SCHEMA), buf, use_dictionary=True,
                       compression="zstd")
        return buf.getvalue()

    junk = png(digit(1)) + b"\0" * (4 * 2**20)  # zeros after IEND: a few KB once compressed in the shard
    small_junk = png(digit(2)) + b"\0" * 8000
    sizes = {"junk": packed([record("junk", image=junk), record("small", image=small_junk)]),
             "repeated": packed([record(f"r{i}", image=png(digit(3))) for i in range(20_000)])}  # one image
    seed(fake_hub, {"data/aaaa00000001/00000000.parquet": sizes["junk"],
                    "data/aaaa00000002/00000000.parquet": sizes["repeated"]})
    sizes = {k: len(v) for k, v in sizes.items()}
    assert sizes["junk"] < 50_000 and sizes["repeated"] < 400_000  # small downloads
    store = FlagStore(tmp_path)
    before = _home_bytes(tmp_path)
    filled = hub_restore.restore_flags(HfApi(token=TOKEN), DATASET, store)
    assert filled.skipped.get(f"image over {hub_rows.MAX_IMAGE_BYTES} bytes") == 1  # the 4 MiB one
    by_id = {e.id: e for e in store.examples()}
    small = by_id[hashlib.md5(b"small").hexdigest()]
    assert small.path.stat().st_size < 1000  # re-encoded: the 8,000 bytes after its end stayed behind
    most_rows = 2 * hub_rows.ROWS_BASE + (sizes["repeated"] + sizes["junk"]) // hub_rows.BYTES_PER_ROW
    assert filled.added <= most_rows < 20_000
    assert filled.skipped.get("over the replica's share (rows, bytes or time for its download's size)", 0) > 0
    assert _home_bytes(tmp_path) - before < 64 * 2**20  # megabytes, not hundreds of them


def test_a_restore_never_fills_the_store_past_its_cap(tmp_path, fake_hub):
    from huggingface_hub import HfApi

    from dadc.hub import restore as hub_restore
    from test_hub_layout import DATASET, TOKEN, record, seed, shard

    seed(fake_hub, {"data/bbbb00000001/00000000.parquet": shard([record(f"a{i}") for i in range(30)]),
                    "data/bbbb00000002/00000000.parquet": shard([record(f"b{i}") for i in range(30)])})
    store = FlagStore(tmp_path)
    filled = hub_restore.restore_flags(HfApi(token=TOKEN), DATASET, store, max_flags=40)
    assert filled.added == 40 == store.count()
    assert filled.skipped == {"over the store's cap (DADC_MAX_FLAGS)": 20}
