"""A round's cost does not grow with the store: it trains on the examples flagged since the last
round plus a bounded, seeded replay sample of older ones (RoundConfig.human_max), and measures
on a bounded sample of the held-out ones."""
from pathlib import Path

from dadc.examples import Example, for_round, sample
from test_rounds import attempts, flag_some, loop, round0  # noqa: F401 (fixtures)


def ex(i, time):
    return Example(id=f"{i:032x}", label=i % 10, prediction=-1, confidences=(0.0,) * 10, round=0, time=time,
                   visitor="s", path=Path("x.png"), canvas_path=Path("x.png"))


def test_new_examples_first_then_a_seeded_replay_sample_of_older_ones():
    old = [ex(i, f"2026-01-01T00:00:{i % 60:02d}Z") for i in range(100)]
    new = [ex(1000 + i, f"2026-02-01T00:00:{i:02d}Z") for i in range(5)]
    got = for_round(old + new, since="2026-01-15T00:00:00Z", cap=20, seed=1)
    assert len(got) == 20 and got[:5] == sorted(new, key=lambda e: e.time, reverse=True)
    assert set(got[5:]) <= set(old) and got == for_round(old + new, "2026-01-15T00:00:00Z", 20, 1)
    assert got[5:] != for_round(old + new, "2026-01-15T00:00:00Z", 20, 2)[5:]  # another round, another sample
    many_new = [ex(2000 + i, f"2026-03-01T00:{i // 60:02d}:{i % 60:02d}Z") for i in range(50)]
    got = for_round(old + many_new, since="2026-01-15T00:00:00Z", cap=20, seed=1)
    assert got == sorted(many_new, key=lambda e: e.time, reverse=True)[:20]  # the newest, when they overflow
    assert set(for_round(old[:3], since="", cap=20, seed=1)) == set(old[:3])  # a first round: all there are
    assert len(sample(old, 10, 0)) == 10 and sample(old[:4], 10, 0) == old[:4]


def test_a_round_on_a_big_store_trains_on_at_most_human_max(loop):  # noqa: F811
    registry, predictor, store, make_job, arrays = loop
    job = make_job(threshold=60, clean_drop=1.0, robust_drop=1.0, human_max=12)
    flag_some(store, job, arrays, 60)
    assert job.wait(180)
    [a] = attempts(registry)
    assert a["counts"]["human examples"] == 12 and a["counts"]["human held out"] <= 12
    assert a["counts"]["human eligible"] == 60
