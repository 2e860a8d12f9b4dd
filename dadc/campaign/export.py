"""`python -m dadc export OUT`: the flagged examples as a `datasets` parquet dataset."""
from pathlib import Path

from ..store import FlagStore


def export_dataset(home, out_dir):
    """Write the collected examples as a `datasets` parquet dataset with train/validation splits:
    OUT/data/train-00000-of-00001.parquet and OUT/data/validation-00000-of-00001.parquet (images
    embedded). The validation split is the held-out set (examples.held_out). Loads with
    datasets.load_dataset(OUT). Returns {split: count}."""
    import datasets

    store = FlagStore(home, readonly=True)
    rows = store.examples()
    if not rows:
        raise ValueError(f"no flagged examples under {store.root}: nothing to export")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} exists and is not an empty folder")
    splits = {"train": [e for e in rows if not e.held_out], "validation": [e for e in rows if e.held_out]}
    if not splits["validation"] and len(rows) > 1:  # too few to hash-split: hold out one
        splits["validation"].append(splits["train"].pop())
    features = datasets.Features({
        "image": datasets.Image(), "canvas": datasets.Image(),
        "label": datasets.ClassLabel(names=[str(i) for i in range(10)]),
        "prediction": datasets.Value("int64"), "confidences": datasets.Sequence(datasets.Value("float32")),
        "round": datasets.Value("int64"), "time": datasets.Value("string"),
        "session": datasets.Value("string"), "id": datasets.Value("string"),
        "agree": datasets.Value("int64"), "disagree": datasets.Value("int64"),
    })
    (out / "data").mkdir(parents=True, exist_ok=True)
    counts = {}
    was_quiet = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()  # a CLI answers in one line, without progress bars
    try:
        for split, rs in splits.items():
            # bytes, not paths: the parquet holds the images themselves
            cols = {"image": [{"bytes": store.png(e), "path": None} for e in rs],
                    "canvas": [{"bytes": store.png(e, canvas=True), "path": None} for e in rs]}
            cols.update({k: [column(e, k) for e in rs] for k in features if k not in cols})
            datasets.Dataset.from_dict(cols, features=features).to_parquet(
                str(out / "data" / f"{split}-00000-of-00001.parquet"))
            counts[split] = len(rs)
    finally:
        if not was_quiet:
            datasets.enable_progress_bars()
    return counts


def column(example, name):
    """An example's value in the export's column `name` (the store's row names: `session` holds the visitor)."""
    value = getattr(example, "visitor" if name == "session" else name)
    return list(value) if name == "confidences" else value
