"""The trainer apart from serving, against a local fake Hub with the real huggingface_hub client:
it pulls every replica's flags incrementally, trains real (tiny) rounds, promotes them on the
model repo with compare-and-swap (two racing trainers promote one round), and replicas that
follow the model repo hot-swap what it promoted; a remote replica trains nothing and rolls back
on the model repo."""
import json
import threading

import pytest
from huggingface_hub import HfApi

from dadc.config import RoundConfig, Settings
from dadc.hub import model_repo
from dadc.hub.follow import Follower
from dadc.hub.mirror import pull_flags
from dadc.hub.push import push_flags
from dadc.hub.sync import HubStatus, HubSync
from dadc.hub.trainer import Trainer
from dadc.rounds.registry import Predictor, Registry
from dadc.store import FlagStore
from dadc.studio.service import Studio, StudioError, Visitor
from test_rounds import TINY, mnist_into, round0  # noqa: F401 (a fixture)

TOKEN = "hf_fake_write_token"
DATASET, MODELS = "tester/dadc-flags", "tester/dadc-rounds"
# a tiny round whose gate always passes: these tests are about who promotes, not about the gate
PASS = RoundConfig(**{**TINY, "clean_drop": 1.0, "robust_drop": 1.0, "human_min": 10**6})


def settings(home, **kw):
    return Settings(home=home, hf_token=TOKEN, dataset_repo=DATASET, model_repo=MODELS, threshold=3, **kw)


def replica(tmp_path, name, round0, n, start=0):
    """A replica's home with n flags (MNIST test digits), pushed to the dataset repo."""
    from dadc.model import mnist as data

    home = mnist_into(tmp_path / name)
    store = FlagStore(home)
    x, y = data.tensors(data.fetch(home, log=lambda m: None), "test")
    ids = [store.append(x[i, 0].numpy(), int(y[i]), visitor=f"anon-{name}{i}") for i in range(start, start + n)]
    return home, store, ids


def push(store):
    HfApi(token=TOKEN).create_repo(DATASET, repo_type="dataset", private=True, exist_ok=True)
    push_flags(HfApi(token=TOKEN), DATASET, store)


def trainer(tmp_path, name, round0, cfg=PASS):
    return Trainer(settings(mnist_into(tmp_path / name)), cfg, round0=round0)


def history(hub):
    return [json.loads(line) for line in hub.files(MODELS, "model")["rounds/history.jsonl"].splitlines()]


def test_one_pass_learns_from_both_replicas_and_both_follow_within_one_check(tmp_path, fake_hub, round0):
    _, a, ids_a = replica(tmp_path, "a", round0, 2)
    _, b, ids_b = replica(tmp_path, "b", round0, 2, start=10)
    push(a)
    push(b)
    t = trainer(tmp_path, "t", round0)
    out = t.once()
    assert out["trained"] and out["passed"] and out["round"] == "round-001", out
    assert out["pulled"]["examples"] == 4 and out["examples"] == 4
    assert {e.id for e in t.store.examples()} == set(ids_a + ids_b)  # both replicas' flags, once each
    files = fake_hub.files(MODELS, "model")
    assert files["rounds/CURRENT"] == b"round-001"
    assert {"rounds/round-001/model.safetensors", "rounds/round-001/README.md", "README.md"} <= files.keys()
    [attempt] = history(fake_hub)
    assert attempt["round"] == "round-001" and attempt["counts"]["human eligible"] == 4
    assert list(fake_hub.tags(MODELS)) == ["round-001"]
    for home in (tmp_path / "a", tmp_path / "b"):  # each replica follows: one HEAD, then the round
        registry = Registry(home, round0)
        predictor = Predictor(registry)
        f = Follower(HfApi(token=TOKEN), MODELS, registry, FlagStore(home).hub.scratch, HubStatus(TOKEN))
        f.on_change = predictor.swap
        assert f.check() and predictor.round == "round-001" and (home / "rounds" / "CURRENT").read_text() == "round-001"
        assert registry.load("round-001")[0] is not None and registry.history()[-1]["round"] == "round-001"
        heads = [r for r in fake_hub.requests if r[0] == "HEAD"]
        assert not f.check(), "nothing changed: no second pull"
        assert len([r for r in fake_hub.requests if r[0] == "HEAD"]) == len(heads) + 1
    again = t.once()  # nothing new on the Hub: no round
    assert not again["trained"] and again["new"] == 0 and again["pulled"]["examples"] == 0


def test_two_trainers_racing_promote_one_round_and_keep_both_attempts(tmp_path, fake_hub, round0):
    _, a, _ = replica(tmp_path, "a", round0, 3)
    push(a)
    racers = [trainer(tmp_path, f"t{i}", round0) for i in range(2)]
    both_trained = threading.Barrier(2, timeout=120)
    for t in racers:  # both read the same head and trained; then both commit
        t.finish = (lambda f: lambda *a: (both_trained.wait(), f(*a))[1])(t.finish)
    outs = [None, None]
    threads = [threading.Thread(target=lambda i=i: outs.__setitem__(i, racers[i].once())) for i in range(2)]
    [th.start() for th in threads]
    [th.join(300) for th in threads]
    assert sorted(o["round"] or "" for o in outs) == ["", "round-001"], outs
    loser = next(o for o in outs if not o["round"])
    assert not loser["passed"] and "not promoted: the model repo changed" in loser["reasons"][0]
    files = fake_hub.files(MODELS, "model")
    assert files["rounds/CURRENT"] == b"round-001" and not any(p.startswith("rounds/round-002") for p in files)
    attempts = history(fake_hub)
    assert [h["passed"] for h in attempts] == [True, False]  # the loser's attempt is on record too
    assert list(fake_hub.tags(MODELS)) == ["round-001"]
    assert all(t.registry.current() == "round-001" for t in racers)


def test_pulls_are_incremental_through_merges(tmp_path, fake_hub, round0):
    from dadc.hub.push import MERGE

    _, a, ids = replica(tmp_path, "a", round0, 1)
    t_home = mnist_into(tmp_path / "t")
    store = FlagStore(t_home)
    api = HfApi(token=TOKEN)
    from dadc.model import mnist as data

    x, y = data.tensors(data.fetch(t_home, log=lambda m: None), "test")
    for i in range(MERGE + 2):  # one flag and a vote per push: shards merge along the way
        push(a)
        before = len([r for r in fake_hub.requests if "/resolve/" in r[1]])
        filled = pull_flags(api, DATASET, store)
        downloads = len([r for r in fake_hub.requests if "/resolve/" in r[1]]) - before
        assert filled.added == 1 and downloads <= 4, (i, filled, downloads)  # what is new, not everything
        ids.append(a.append(x[i + 1, 0].numpy(), int(y[i + 1]), visitor="anon-a"))
        a.vote(ids[-2], "anon-voter", True)
    assert [e.id for e in store.examples()] == ids[:-1]
    assert sum(len(v) for v in [store.votes()]) == MERGE + 1
    assert pull_flags(api, DATASET, store).added == 0


def test_a_remote_replica_trains_nothing_and_rolls_back_on_the_model_repo(tmp_path, fake_hub, round0):
    _, a, _ = replica(tmp_path, "a", round0, 3)
    push(a)
    t = trainer(tmp_path, "t", round0)
    assert t.once()["round"] == "round-001"
    home = mnist_into(tmp_path / "r")
    s = settings(home, trainer="remote", follow_every=3600.0, admins=frozenset({"boss"}))
    studio = Studio(s, round0, PASS, sync=lambda store, registry: HubSync.from_settings(s, store, registry))
    try:
        studio.start(background=False)
        studio.sync.follower.check()  # its thread may have followed first: either way it is served now
        assert studio.serving == "round-001"
        for i in range(5):
            studio.flag(_canvas(i), 3, f"anon-v{i}")
        assert studio.job.started == 0 and not studio.job.running  # over the threshold: still no round here
        assert "trainer" in studio.retrain_now(Visitor.logged_in("boss"))
        with pytest.raises(StudioError):
            studio.rollback("round-000", Visitor("anon-x"))
        assert studio.rollback("round-000", Visitor.logged_in("boss")) == {"serving": "round-000"}
        assert fake_hub.files(MODELS, "model")["rounds/CURRENT"] == b"round-000"
        assert history(fake_hub)[-1]["event"] == "rollback"
        assert "trained by the trainer" in studio.dashboard()["status"]
    finally:
        studio.stop()


def _canvas(seed):
    import numpy as np
    from PIL import Image

    arr = np.full((280, 280), 255, np.uint8)
    arr[60:220, 120 + seed:150 + seed] = 0
    return {"background": Image.fromarray(arr), "layers": [], "composite": None}


def test_rollback_to_an_unknown_round_is_a_clear_error(tmp_path, fake_hub):
    HfApi(token=TOKEN).create_repo(MODELS, repo_type="model", private=True)
    with pytest.raises(ValueError, match="no round named 'round-009'"):
        model_repo.rollback(HfApi(token=TOKEN), MODELS, "round-009", "test", tmp_path)


def test_a_follower_keeps_serving_when_the_model_repo_names_a_broken_round(tmp_path, fake_hub, round0):
    from huggingface_hub import CommitOperationAdd

    api = HfApi(token=TOKEN)
    api.create_repo(MODELS, repo_type="model", private=True)
    api.create_commit(MODELS, repo_type="model", commit_message="broken", operations=[
        CommitOperationAdd(path_or_fileobj=b"not safetensors", path_in_repo="rounds/round-001/model.safetensors"),
        CommitOperationAdd(path_or_fileobj=b'{"net": "fast"}', path_in_repo="rounds/round-001/config.json"),
        CommitOperationAdd(path_or_fileobj=b"round-001", path_in_repo="rounds/CURRENT")])
    home = mnist_into(tmp_path / "r")
    registry = Registry(home, round0)
    predictor = Predictor(registry)
    log = HubStatus(TOKEN)
    f = Follower(api, MODELS, registry, FlagStore(home).hub.scratch, log, every=0.05)
    f.on_change = predictor.swap
    f.start()
    try:
        import time
        deadline = time.time() + 20
        while log.last_error is None and time.time() < deadline:
            time.sleep(0.05)
    finally:
        f.stop()
    assert "following the model repo failed" in log.last_error and TOKEN not in log.last_error
    assert predictor.round == "round-000" and registry.current() == "round-000"
    assert Predictor(registry).round == "round-000"  # a restart serves the last round that loads


def test_a_hostile_shard_in_the_dataset_repo_is_skipped_within_bounds(tmp_path, fake_hub, round0):
    """Anyone with write access to the dataset repo can put anything there: the trainer's pull
    checks every row as a restore does (hub/rows.py), skips what is bad, brings in rows only in
    proportion to what it downloaded, and stays within CPU and memory bounds."""
    import io
    import time
    import tracemalloc

    import pyarrow as pa
    import pyarrow.parquet as pq
    from huggingface_hub import CommitOperationAdd

    from dadc.hub import rows as hub_rows
    from dadc.hub.layout import FLAG_SCHEMA
    from test_hub_layout import digit, png, record

    _, a, ids = replica(tmp_path, "a", round0, 2)
    push(a)
    packed = io.BytesIO()  # one image in 20,000 rows, stored once (dictionary encoding): a small download
    pq.write_table(pa.Table.from_pylist([record(f"r{i}", image=png(digit(3))) for i in range(20_000)],
                                        schema=FLAG_SCHEMA), packed, use_dictionary=True, compression="zstd")
    HfApi(token=TOKEN).create_commit(DATASET, repo_type="dataset", commit_message="evil", operations=[
        CommitOperationAdd(path_or_fileobj=packed.getvalue(), path_in_repo="data/eeee00000001/00000000.parquet"),
        CommitOperationAdd(path_or_fileobj=b"not parquet", path_in_repo="votes/eeee00000001/00000000.parquet"),
        CommitOperationAdd(path_or_fileobj=b"not parquet", path_in_repo="data/eeee00000002/99999999.parquet")])
    store = FlagStore(mnist_into(tmp_path / "t"))
    tracemalloc.start()
    cpu = time.process_time()
    filled = pull_flags(HfApi(token=TOKEN), DATASET, store)
    cpu = time.process_time() - cpu
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert set(ids) <= {e.id for e in store.examples()}
    assert filled.added - 2 <= hub_rows.ROWS_BASE + len(packed.getvalue()) // hub_rows.BYTES_PER_ROW < 20_000
    assert filled.skipped.get("shard unreadable") == 2  # the flags one and the votes one
    assert cpu < 60 and peak < 256 * 2**20, (cpu, peak)
    assert pull_flags(HfApi(token=TOKEN), DATASET, store).added == 0  # taken once, never again
