"""simulate's report: per round the serving round, unseen fool rate, MNIST clean and PGD accuracy,
human hold-out accuracy, the verdict with reasons and notes, seconds; the round-by-round matrix;
drawings from the style-varied generator (N per family or N in all), or MNIST digits on canvases
behind a flag; when the pool runs dry, fresh drawings with a seed of their own per round (the unseen
half never among them), or a clear stop; the matrix also on the dashboard and in the model cards."""
import csv
import hashlib

import numpy as np

from dadc.studio import dashboard
from dadc.synth import drawings
from dadc import examples
from dadc.campaign import simulate
from dadc.config import RoundConfig
from dadc.hub.model_card import model_card
from dadc.rounds.registry import Registry
from test_rounds import TINY, cli, mnist_into, round0  # noqa: F401 (fixtures)


def off_by_one(folder):
    """Every label off by one: whatever a round says, the simulated people flag it."""
    rows = list(csv.DictReader(open(folder / "labels.csv")))
    with open(folder / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "label"])
        w.writerows([[row["file"], (int(row["label"]) + 1) % 10] for row in rows])


def test_rows_and_the_matrix(tmp_path, round0, monkeypatch):
    # half the flags held out (not 1 in 10), so that a short run has a matrix with numbers in it
    monkeypatch.setattr(examples, "held_out", lambda i: int(hashlib.sha256(i.encode()).hexdigest()[:8], 16) % 2 == 0)
    folder = drawings.make(tmp_path / "drawings", 8, seed=5, families=["plain", "mouse", "thick"])
    off_by_one(folder)
    result = simulate.simulate(folder, 2, mnist_into(tmp_path / "home"), 4, round0,
                               cfg=RoundConfig(**TINY, clean_drop=1, robust_drop=1, verified_only=True),
                               log=lambda m: None)
    rows, matrix = result["rounds"], result["matrix"]
    assert [r["serving"] for r in rows] == ["round-000", "round-001", "round-002"]
    assert [r["flagged"] for r in rows] == [0, 4, 8]
    assert set(rows[0]) == {"round", "serving", "unseen_error", "mnist_test_acc", "robust_acc", "human_acc",
                            "human_n", "flagged", "flags_used"}
    assert [r["flags_used"] for r in rows] == [0, 4, 8]  # the flags each serving round learnt from
    # sample efficiency: the fool rate once 10 / 20 / 50 flags were made; this campaign made only 8
    assert result["efficiency"] == {"0": rows[0]["unseen_error"], "10": None, "20": None, "50": None}
    assert result["pool_dry"] is False
    for r in rows[1:]:
        assert r["passed"] is True and r["reasons"] == [] and r["seconds"] > 0
        assert r["notes"] and "human hold-out not compared" in r["notes"][0]  # fewer than 10 held out
    for r in rows:
        assert 0 <= r["robust_acc"] <= r["mnist_test_acc"] <= 1 and 0 <= r["unseen_error"] <= 1
        assert r["human_acc"] is None if r["human_n"] == 0 else 0 <= r["human_acc"] <= 1
    assert rows[0]["human_n"] == 0 and rows[0]["unseen_error"] > 0.8
    # every served round, and in its row every round served before it
    assert matrix == {"round-000": {}, "round-001": {"round-000": matrix["round-001"]["round-000"]},
                      "round-002": matrix["round-002"]}
    assert list(matrix["round-002"]) == ["round-000", "round-001"]
    # a column counts the held-out flags that fooled that round: the same n in every row
    assert matrix["round-001"]["round-000"]["n"] == matrix["round-002"]["round-000"]["n"]
    assert sum(c["n"] for c in matrix["round-002"].values()) == rows[-1]["human_n"]
    for row in matrix.values():
        for cell in row.values():
            assert (cell["acc"] is None) == (cell["n"] == 0) and (cell["acc"] is None or 0 <= cell["acc"] <= 1)
    text = simulate.summary(result)
    assert "round-002" in text and "accuracy on the held-out drawings that fooled each round" in text
    assert result["stopped"] is None and result["fresh_drawn"] == 0  # labels off by one: no family, no fresh
    # the same matrix on the dashboard (from each promoted round's metrics) and in each round's model card
    home = tmp_path / "home"
    plot = dashboard.matrix(Registry(home, round0))
    want = [{"round": r, "fooled": f"fooled {k}", "accuracy": cell["acc"], "n": cell["n"]}
            for r, row in matrix.items() for k, cell in row.items() if cell["acc"] is not None]
    assert plot == want
    for r, row in matrix.items():
        card = model_card(home / "rounds" / r)
        for k, cell in row.items():
            assert f"| {k} | {cell['n']} | {'-' if cell['acc'] is None else format(cell['acc'], '.2%')} |" in card


def test_make_drawings_uses_the_generator_or_mnist_canvases(tmp_path):
    home = mnist_into(tmp_path / "home")
    r = cli("simulate", "--drawings", tmp_path / "a", "--make-drawings", 3, "--families", "thin,large", home=home)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(tmp_path / "a" / "labels.csv")))
    assert [row["family"] for row in rows] == ["thin"] * 3 + ["large"] * 3 and rows[0]["style"]
    r = cli("simulate", "--drawings", tmp_path / "b", "--make-drawings", 3, "--mnist-canvases", home=home)
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "b").glob("*.png"))) == 3
    r = cli("simulate", "--drawings", tmp_path / "c", "--make-drawings", 3, "--families", "crayon", home=home)
    assert r.returncode == 1 and "unknown families" in r.stderr


def test_summary_of_round_0_alone():
    row = {"round": 0, "serving": "round-000", "unseen_error": 0.1, "mnist_test_acc": 0.99, "robust_acc": 0.95,
           "human_acc": None, "human_n": 0, "flagged": 0}
    text = simulate.summary({"rounds": [row], "matrix": {"round-000": {}}})
    assert "round-000" in text and "fooled each round" not in text


def test_fresh_drawings_have_seeds_of_their_own(tmp_path):
    def pixels(xs):
        return {simulate.pixels(x) for x in xs}

    fams = ["plain", "thin"]
    r1 = [d for _, d in zip(range(6), simulate.fresh_drawings(fams, 7, 1))]
    assert [y for _, y, _ in r1] == [0, 0, 1, 1, 2, 2]  # families in turn, digits in turn
    again = [d[0] for _, d in zip(range(6), simulate.fresh_drawings(fams, 7, 1))]
    other = [d[0] for _, d in zip(range(6), simulate.fresh_drawings(fams, 7, 2))]
    campaign = simulate.read_drawings(drawings.make(tmp_path / "c", 6, seed=7, families=fams))
    assert pixels(again) == pixels(x for x, _, _ in r1)
    assert not pixels(again) & pixels(other) and not pixels(again) & pixels(x for x, _, _ in campaign)


def test_when_the_pool_runs_dry_people_draw_fresh_ones_and_never_an_unseen_one(tmp_path, round0, monkeypatch):
    folder = drawings.make(tmp_path / "drawings", 4, seed=11, families=["plain", "thick"])  # pool of 4
    campaign = simulate.read_drawings(folder)
    real = simulate.fresh_drawings

    def fresh(families, seed, round_):  # the generator's first offers: every campaign drawing, mislabelled
        assert families == ["plain", "thick"] and seed == 3
        for x, y, path in campaign:
            yield x, (y + 1) % 10, simulate._copy(path)
        yield from real(families, seed, round_)
    monkeypatch.setattr(simulate, "fresh_drawings", fresh)
    result = simulate.simulate(folder, 2, mnist_into(tmp_path / "home"), 6, round0, seed=3,
                               cfg=RoundConfig(**TINY, clean_drop=1, robust_drop=1), log=lambda m: None)
    rows = result["rounds"]
    assert result["stopped"] is None and [r["flagged"] for r in rows] == [0, 6, 12]
    for r in rows[1:]:
        assert r["fresh_drawn"] > 0 and r["fresh_flagged"] >= 6 - 4 and r["tried"] >= r["fresh_drawn"]
    # the unseen half (4 of the 8 drawings) was offered again as fresh ones, and never flagged
    order = np.random.default_rng(3).permutation(len(campaign))
    unseen = {simulate.pixels(campaign[i][0]) for i in order[4:]}
    pool = {simulate.pixels(campaign[i][0]) for i in order[:4]}
    from dadc.store import FlagStore
    store = FlagStore(tmp_path / "home")
    flagged = {np.asarray(store.image(e), dtype=np.uint8).tobytes() for e in store.examples()}
    assert len(store.examples()) == 12 and not flagged & unseen
    assert flagged & pool  # the offers were taken (pool drawings, mislabelled), all but the unseen ones


def test_a_campaign_that_runs_dry_says_so_and_stops(tmp_path, round0):
    folder = drawings.make(tmp_path / "drawings", 4, seed=11, families=["plain", "thick"])
    result = simulate.simulate(folder, 3, mnist_into(tmp_path / "home"), 6, round0, fresh_max=0,
                               cfg=RoundConfig(**TINY), log=lambda m: None)
    assert [r["round"] for r in result["rounds"]] == [0]
    assert result["stopped"].startswith("round 1: the pool ran dry: only ") and "threshold 6" in result["stopped"]
    assert "(0 of them fresh)" in result["stopped"] and result["fresh_drawn"] == 0
    assert result["stopped"] in simulate.summary(result)
    assert result["pool_dry"] is True  # reported as such, not an error
    assert "the pool ran dry at 0 flags" in simulate.summary(result)


def row(r, flagged, err, passed=True, used=None):
    return {"round": r, "serving": f"round-{r:03d}", "unseen_error": err, "flagged": flagged,
            "flags_used": flagged if used is None else used, "passed": passed, "mnist_test_acc": 0.99,
            "robust_acc": 0.95, "human_acc": None, "human_n": 0}


def test_sample_efficiency_is_the_fool_rate_once_10_20_50_flags_were_made_and_learnt():
    rows = [row(0, 0, 0.04), row(1, 10, 0.03), row(2, 20, 0.025, passed=False, used=10), row(3, 30, 0.02),
            row(4, 40, 0.018), row(5, 50, 0.015), row(6, 60, 0.014)]
    # a rejected round leaves the serving round's rate: what 20 flags bought is what round 2 serves
    assert simulate.efficiency(rows) == {"0": 0.04, "10": 0.03, "20": 0.025, "50": 0.015}
    assert simulate.efficiency(rows[:4]) == {"0": 0.04, "10": 0.03, "20": 0.025, "50": None}
    assert simulate.efficiency(rows, at=(5, 15)) == {"0": 0.04, "5": 0.03, "15": 0.025}
    result = {"rounds": rows[:4], "matrix": {}, "stopped": "round 4: the pool ran dry: ...", "pool_dry": True,
              "efficiency": simulate.efficiency(rows[:4])}
    text = simulate.summary(result)
    assert "unseen fool rate after 0 / 10 / 20 / 50 flags: 4.00% / 3.00% / 2.50% / - " in text
    assert "(- : the pool ran dry at 30 flags)" in text


def test_make_drawings_in_all(tmp_path):
    home = mnist_into(tmp_path / "home")
    r = cli("simulate", "--drawings", tmp_path / "a", "--make-drawings", 10, "--total", "--seed", 4,
            "--families", "plain,thin,thick", home=home)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(tmp_path / "a" / "labels.csv")))
    assert [row["family"] for row in rows] == ["plain"] * 4 + ["thin"] * 3 + ["thick"] * 3
    assert len(list((tmp_path / "a").glob("*.png"))) == 10 and "10 drawings in all" in r.stderr
    drawings.make(tmp_path / "b", 4, seed=4, families=["plain", "thin", "thick"])
    for row in rows:  # drawing i of a family is the one drawings.make writes
        assert (tmp_path / "a" / row["file"]).read_bytes() == (tmp_path / "b" / row["file"]).read_bytes()
    r = cli("simulate", "--drawings", tmp_path / "c", "--make-drawings", 3, "--total", "--families", "crayon",
            home=home)
    assert r.returncode == 1 and "unknown families" in r.stderr
