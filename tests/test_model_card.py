"""The model card pushed with each promoted round: a valid Hub card (front matter, model-index) with
what the round recorded: clean, PGD, AutoAttack and drawn-digit accuracy, validation numbers and
reference, its row of the matrix, counts and training config."""
import json

from huggingface_hub import ModelCard

from dadc.hub.model_card import model_card

METRICS = {
    "clean_acc": 0.9921, "robust_acc": 0.9512, "val_clean_acc": 0.9954, "val_robust_acc": 0.9633,
    "human_acc": 0.8, "human_n": 15, "autoattack_acc": 0.9, "autoattack_n": 500,
    "drawn": {"all": {"n": 700, "acc": 0.93}, "by_family": {"thick": {"n": 100, "acc": 0.81}}},
    "matrix_row": {"round-000": {"n": 12, "acc": 0.75}, "round-001": {"n": 0, "acc": None}},
    "reference": {"round": "round-000", "val_clean_acc": 0.9961, "val_robust_acc": 0.9702, "settings": {}},
    "gate": {"base": "round-001", "serving": {},
             "notes": ["human hold-out not compared: 3 held-out examples, fewer than 10"]},
    "counts": {"mnist examples": 8000, "human examples": 90, "human held out": 15},
    "eval": {"n": 10000, "robust_n": 1000, "eps": 0.3, "steps": 10, "val_n": 10000},
    "train": {"net": "fast", "epochs": 1.0, "lr": 0.001, "attack": "pgd", "eps": 0.3, "steps": 7},
}


def round_dir(tmp_path, metrics, name="round-002"):
    d = tmp_path / name
    d.mkdir()
    (d / "metrics.json").write_text(json.dumps(metrics))
    (d / "config.json").write_text(json.dumps({"net": "fast", "parent": "round-001"}))
    return d


def test_a_full_card_is_a_valid_hub_card_with_everything_recorded(tmp_path):
    text = model_card(round_dir(tmp_path, METRICS), dataset_repo="someone/dadc-flags")
    card = ModelCard(text)  # parses the front matter as the Hub does
    data = card.data.to_dict()
    assert data["library_name"] == "pytorch" and "adversarial-training" in data["tags"]
    assert data["datasets"] == ["ylecun/mnist", "someone/dadc-flags"]
    results = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert results == {"clean accuracy": 0.9921, "PGD-10 accuracy (Linf eps 0.3, first 1000)": 0.9512,
                       "AutoAttack accuracy": 0.9}
    assert card.data.model_name == "round-002"
    for line in ("| MNIST test, clean | 10000 | 99.21% |", "| MNIST test, AutoAttack accuracy | 500 | 90.00% |",
                 "| drawn digits (dadc.drawings), all | 700 | 93.00% |", "| drawn digits, thick | 100 | 81.00% |",
                 "| validation slice (last 10000 of MNIST train), clean | 10000 | 99.54% |",
                 "| 99.61% / 97.02% |", "| human examples held out of every round | 15 | 80.00% |",
                 "| round-000 | 12 | 75.00% |", "| round-001 | 0 | - |",
                 "- human hold-out not compared: 3 held-out examples, fewer than 10",
                 "| human examples | 90 |", "| lr | 0.001 |", "| attack | pgd |", "fine-tuned from round-001",
                 "Architecture: `fast`"):
        assert line in text, line


def test_a_round_fine_tuned_from_round_000_says_so_and_what_it_replaced(tmp_path):
    text = model_card(round_dir(tmp_path, {**METRICS, "train": {**METRICS["train"], "init": "round-000"}}))
    assert "fine-tuned from round-000 on MNIST" in text and "it replaced round-001." in text
    assert "| init | round-000 |" in text


def test_a_card_with_little_recorded_is_still_valid_and_says_what_is_missing(tmp_path):
    text = model_card(round_dir(tmp_path, {}, "round-000"))
    card = ModelCard(text)
    assert card.data.library_name == "pytorch" and card.data.eval_results is None
    assert "AutoAttack" not in text and "drawn digits" not in text and "_not recorded_" in text
