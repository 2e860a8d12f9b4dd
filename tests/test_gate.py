"""The gate without a ratchet: MNIST floors fixed by round-000 on a validation slice held out of MNIST
train, human hold-out no worse than the serving round (and said so when there are too few), the
test set only reported; round-000 measured once per home; what the history and metrics.json keep."""
import json

import torch

from dadc.rounds import retrain
from dadc.config import RoundConfig
from dadc.rounds.gate import gate
from dadc.hub.model_card import model_card
from test_rounds import TINY, attempts, flag_some, loop, round0  # noqa: F401 (fixtures)

REF = {"round": "round-000", "val_clean_acc": 0.990, "val_robust_acc": 0.900}
SERVING = {"val_clean_acc": 0.996, "val_robust_acc": 0.960, "human_acc": 0.80}  # a better round than round-000


def cand(clean=0.990, robust=0.900, human=0.80, n=20):
    return {"val_clean_acc": clean, "val_robust_acc": robust, "human_acc": human, "human_n": n}


def test_floors_are_round_000s_not_the_serving_rounds():
    cfg = RoundConfig()  # clean_drop 0.3 pt, robust_drop 1 pt, human_min 10
    # 0.8 pt clean and 6.1 pt PGD below the serving round, but above round-000's floors: passes
    assert gate(REF, SERVING, cand(clean=0.988, robust=0.899), cfg) == (True, [], [])
    ok, why, _ = gate(REF, SERVING, cand(clean=0.9865), cfg)  # 0.35 pt below round-000
    assert not ok and len(why) == 1 and "clean accuracy" in why[0] and "round-000" in why[0] and "98.70%" in why[0]
    ok, why, _ = gate(REF, SERVING, cand(robust=0.889), cfg)
    assert not ok and len(why) == 1 and why[0].startswith("PGD accuracy") and "89.00%" in why[0]
    ok, why, _ = gate(REF, SERVING, cand(clean=0.5, robust=0.5, human=0.7), cfg)
    assert not ok and [w.split()[0] for w in why] == ["clean", "PGD", "human"]
    # the knobs move the floors
    assert gate(REF, SERVING, cand(clean=0.985), RoundConfig(clean_drop=0.01))[0]
    assert not gate(REF, SERVING, cand(), RoundConfig(clean_drop=-1))[0]


def test_human_hold_out_against_the_serving_round_and_too_few_is_said():
    cfg = RoundConfig(human_min=10)
    assert gate(REF, SERVING, cand(human=0.80, n=10), cfg) == (True, [], [])  # as good: passes
    ok, why, notes = gate(REF, SERVING, cand(human=0.75, n=10), cfg)
    assert not ok and "human hold-out accuracy 75.00%" in why[0] and "80.00%" in why[0] and notes == []
    # fewer than human_min: passes, and the note says it was not compared
    ok, why, notes = gate(REF, SERVING, cand(human=0.0, n=9), cfg)
    assert ok and why == [] and notes == ["human hold-out not compared: 9 held-out examples, fewer than 10"]
    ok, _, notes = gate(REF, {"human_acc": None}, cand(human=None, n=0), cfg)
    assert ok and "0 held-out examples" in notes[0]


def test_a_round_records_val_test_human_and_the_reference_measured_once(loop, monkeypatch):
    registry, predictor, store, make_job, arrays = loop
    parts, seen = [], []
    real_measure, real_fine_tune = retrain.measure, retrain.fine_tune

    def measure(model, sets, cfg, parts_=("val", "test", "holdout")):
        parts.append(tuple(parts_))
        return real_measure(model, sets, cfg, parts_)

    def fine_tune(state, net, x, *args, **kwargs):
        seen.append(x)
        starts.append({k: v.clone() for k, v in state.items()})
        return real_fine_tune(state, net, x, *args, **kwargs)
    starts = []
    monkeypatch.setattr(retrain, "measure", measure)
    monkeypatch.setattr(retrain, "fine_tune", fine_tune)

    job = make_job(threshold=3, clean_drop=1.0, robust_drop=1.0)
    flag_some(store, job, arrays, 3)
    assert job.wait(120)
    flag_some(store, job, arrays, 3, start=3)
    assert job.wait(120)
    first, second = attempts(registry)
    assert first["passed"] and second["passed"]
    assert parts.count(("val",)) == 1  # round-000 measured once per home, then read from the history
    assert first["reference"] == second["reference"]
    ref = first["reference"]
    assert ref["round"] == "round-000" and ref["settings"]["val_n"] == TINY["val_n"]
    for a in (first, second):
        c = a["candidate"]
        for key in ("val_clean_acc", "val_robust_acc", "clean_acc", "robust_acc"):
            assert 0 <= c[key] <= 1
        assert c["human_n"] == a["counts"]["human held out"]
        assert (a["notes"] == [] if c["human_n"] >= 10 else "human hold-out not compared" in a["notes"][0])
    m = registry.metrics("round-002")
    assert m["reference"] == ref and m["val_clean_acc"] == second["candidate"]["val_clean_acc"]
    assert m["gate"]["notes"] == second["notes"] and m["eval"]["val_n"] == TINY["val_n"]
    assert set(m["matrix_row"]) == {"round-000", "round-001"}  # every earlier round, n 0 where none held out
    # each round fine-tunes round-000 (not the serving round: no drift compounding from round to round)
    r0 = registry.load("round-000")[0].state_dict()
    assert len(starts) == 2 and all(torch.equal(st[k], r0[k]) for st in starts for k in r0)
    assert not all(torch.equal(registry.load("round-001")[0].state_dict()[k], r0[k]) for k in r0)
    assert m["train"]["init"] == "round-000" and registry.metrics("round-001")["train"]["init"] == "round-000"
    # the validation slice (the last val_n of MNIST train) never trains a round
    from dadc.model import mnist as data
    x, _ = data.tensors(arrays, "train")
    val = {bytes(v.numpy()) for v in x[-TINY["val_n"]:]}
    assert len(seen) == 2 and all(bytes(v.numpy()) not in val for xs in seen for v in xs)
    # and the promoted round's card says it all
    card = model_card(registry.path("round-002"))
    assert "validation slice" in card and "the gate's reference" in card and "| round-001 |" in card


def test_a_candidate_below_round_000s_floor_is_rejected_and_says_so(loop):
    registry, predictor, store, make_job, arrays = loop
    job = make_job(threshold=2, robust_drop=-1.0)  # would need 100 pt more PGD accuracy than round-000
    flag_some(store, job, arrays, 2)
    assert job.wait(120)
    [a] = attempts(registry)
    assert not a["passed"] and len(a["reasons"]) == 1 and a["reasons"][0].startswith("PGD accuracy")
    assert "below the floor" in a["reasons"][0] and "round-000's" in a["reasons"][0]
    assert registry.names() == ["round-000"] and "reference" in a and "candidate" in a
    json.dumps(a)  # plain values only
