"""The model card (README.md) pushed with each promoted round to the Hub model repo."""
import json
from pathlib import Path


def model_card(round_dir, counts=None, dataset_repo=None):
    """A model card for one round: its metrics and the data it was trained on."""
    round_dir = Path(round_dir)
    metrics, config = {}, {}
    for name, into in (("metrics.json", metrics), ("config.json", config)):
        try:
            into.update(json.loads((round_dir / name).read_text()))
        except (OSError, ValueError):
            pass
    counts = dict(counts or {})
    for key in ("data", "counts"):  # a trainer may have recorded its data counts in metrics.json
        if not counts and isinstance(metrics.get(key), dict):
            counts = metrics[key]

    def table(d):
        rows = [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
                for k, v in d.items() if not isinstance(v, (dict, list))]
        return "\n".join(["| | |", "|---|---|", *rows]) if rows else "_not recorded_"

    meta = ["---", "library_name: pytorch", "tags:", "- mnist", "- adversarial-training", "- dadc"]
    if dataset_repo:
        meta += ["datasets:", f"- {dataset_repo}"]
    meta.append("---")
    return "\n".join(meta + [
        f"# DADC studio: {round_dir.name}",
        "",
        "An MNIST digit classifier from a dynamic adversarial data collection loop: people drew digits",
        "the previous round got wrong, and this round was trained on MNIST plus those examples.",
        "",
        "## Metrics", "", table(metrics), "",
        "## Data", "", table(counts), "",
        "## Files", "",
        "`model.safetensors` (weights), `config.json` (architecture, enough to rebuild the net), "
        "`metrics.json`. No pickle.",
        "",
        f"Architecture: `{config.get('arch', config.get('name', 'see config.json'))}`",
        "",
    ])
