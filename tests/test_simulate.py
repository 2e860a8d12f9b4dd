"""simulate's report: per round the serving round, unseen fool rate, MNIST clean and PGD accuracy,
human hold-out accuracy, the verdict with reasons and notes, seconds; the round-by-round matrix;
drawings from the style-varied generator, or MNIST digits on canvases behind a flag."""
import csv
import hashlib

from dadc import drawings, examples, simulate
from dadc.config import RoundConfig
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
                            "human_n", "flagged"}
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
