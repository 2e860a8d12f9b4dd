"""The model card (README.md) pushed with each promoted round to the Hub model repo: a valid Hub
card (YAML front matter with a model-index) with what the round's metrics.json recorded: MNIST
clean and PGD accuracy, AutoAttack and drawn-digit accuracy where measured, the gate's validation
numbers and reference, its row of the round-by-round matrix, data counts and training config."""
import json
from pathlib import Path

MNIST = "ylecun/mnist"


def _pct(v):
    return f"{v:.2%}" if isinstance(v, (int, float)) else "-"


def _table(head, rows):
    if not rows:
        return "_not recorded_"
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
                      *("| " + " | ".join(str(c) for c in r) + " |" for r in rows)])


def _plain(d):
    """(key, value) rows of a flat dict (nested values left out)."""
    return [(k, f"{v:g}" if isinstance(v, float) else v) for k, v in (d or {}).items()
            if not isinstance(v, (dict, list))]


def _front_matter(name, metrics, pgd, dataset_repo):
    from huggingface_hub import EvalResult, ModelCardData

    results = [EvalResult(task_type="image-classification", dataset_type=MNIST, dataset_name="MNIST",
                          dataset_split="test", metric_type="accuracy", metric_value=metrics[key], metric_name=what)
               for key, what in (("clean_acc", "clean accuracy"), ("robust_acc", pgd),
                                 ("autoattack_acc", "AutoAttack accuracy"))
               if isinstance(metrics.get(key), (int, float))]
    data = ModelCardData(library_name="pytorch", pipeline_tag="image-classification",
                         tags=["mnist", "adversarial-training", "dadc"],
                         datasets=[MNIST] + ([dataset_repo] if dataset_repo else []),
                         model_name=name if results else None, eval_results=results or None)
    return f"---\n{data.to_yaml()}\n---"


def _read(round_dir):
    """(metrics.json, config.json) of a round, each {} where missing or unreadable."""
    metrics, config = {}, {}
    for name, into in (("metrics.json", metrics), ("config.json", config)):
        try:
            into.update(json.loads((round_dir / name).read_text()))
        except (OSError, ValueError):
            pass
    return metrics, config


def _part(metrics, key):
    """A dict the metrics recorded under `key`, or {}."""
    return metrics.get(key) if isinstance(metrics.get(key), dict) else {}


def _evaluation(metrics, ev, pgd):
    """The rows of the evaluation table: MNIST test, drawn digits, the validation slice and its
    reference, the human hold-out, each where recorded."""
    n, robust_n = ev.get("n", metrics.get("n", "?")), ev.get("robust_n", ev.get("n", "?"))
    rows = [("MNIST test, clean", n, _pct(metrics.get("clean_acc"))),
            (f"MNIST test, {pgd}", robust_n, _pct(metrics.get("robust_acc")))]
    if isinstance(metrics.get("autoattack_acc"), (int, float)):
        rows.append(("MNIST test, AutoAttack accuracy", metrics.get("autoattack_n", "?"),
                     _pct(metrics["autoattack_acc"])))
    drawn = _part(metrics, "drawn")
    if isinstance(drawn.get("all"), dict):  # dadc.drawings.accuracy_by_family's result
        rows.append(("drawn digits (dadc.drawings), all", drawn["all"].get("n"), _pct(drawn["all"].get("acc"))))
        rows += [(f"drawn digits, {fam}", v.get("n"), _pct(v.get("acc")))
                 for fam, v in drawn.get("by_family", {}).items()]
    if "val_clean_acc" in metrics:
        val_n = ev.get("val_n", "?")
        ref = metrics.get("reference") or {}
        rows += [(f"validation slice (last {val_n} of MNIST train), clean", val_n, _pct(metrics["val_clean_acc"])),
                 ("validation slice, PGD", robust_n, _pct(metrics.get("val_robust_acc"))),
                 (f"{ref.get('round', 'round-000')} on the validation slice (the gate's reference), clean / PGD",
                  val_n, f"{_pct(ref.get('val_clean_acc'))} / {_pct(ref.get('val_robust_acc'))}")]
    if "human_acc" in metrics:
        rows.append(("human examples held out of every round", metrics.get("human_n", "?"), _pct(metrics["human_acc"])))
    return rows


def _body(name, rows, metrics, config, counts):
    """The card's lines after the front matter: what the round is, then its tables."""
    matrix, gate = _part(metrics, "matrix_row"), _part(metrics, "gate")
    train = metrics.get("train") or config.get("train") or {}
    parent = config.get("parent") or gate.get("base")  # the round it replaced
    init = train.get("init") or parent                  # the round it was fine-tuned from
    return [
        f"# DADC studio: {name}",
        "",
        "An MNIST digit classifier from a dynamic adversarial data collection loop: people drew digits",
        "the serving round got wrong, and this round was fine-tuned"
        + (f" from {init}" if init else "") + " on MNIST plus those examples with PGD adversarial training"
        + (f"; it replaced {parent}." if parent and parent != init else "."),
        "",
        "## Evaluation", "", _table(("set", "examples", "accuracy"), rows), "",
        "## Examples that fooled earlier rounds", "",
        "This round's accuracy on the human examples held out of training that fooled each earlier round:",
        "",
        _table(("fooled", "held-out examples", "accuracy"),
               [(k, v.get("n"), _pct(v.get("acc"))) for k, v in matrix.items() if isinstance(v, dict)]), "",
        *(["## Gate", "", *(f"- {note}" for note in gate.get("notes", [])), ""] if gate.get("notes") else []),
        "## Data", "", _table(("", ""), _plain(counts)), "",
        "## Training", "", _table(("", ""), _plain(train)), "",
        "## Files", "",
        "`model.safetensors` (weights), `config.json` (architecture, enough to rebuild the net), "
        "`metrics.json`. No pickle.",
        "",
        f"Architecture: `{config.get('net', config.get('arch', config.get('name', 'see config.json')))}`",
        "",
    ]


def model_card(round_dir, counts=None, dataset_repo=None):
    """A model card for one round: its metrics, its row of the matrix, the data it was trained on
    and how."""
    round_dir = Path(round_dir)
    metrics, config = _read(round_dir)
    counts = dict(counts or {})
    for key in ("data", "counts"):  # a trainer may have recorded its data counts in metrics.json
        if not counts and isinstance(metrics.get(key), dict):
            counts = metrics[key]
    ev = _part(metrics, "eval")
    robust_n = ev.get("robust_n", ev.get("n", "?"))
    pgd = f"PGD-{ev.get('steps', '?')} accuracy (Linf eps {ev.get('eps', '?')}, first {robust_n})"
    return "\n".join([_front_matter(round_dir.name, metrics, pgd, dataset_repo),
                      *_body(round_dir.name, _evaluation(metrics, ev, pgd), metrics, config, counts)])
