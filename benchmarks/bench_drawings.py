"""Accuracy of a checkpoint on generated mouse-drawn digits (dadc.synth.drawings), per family and per style,
read through the app's own preprocessing (dadc.preprocess.to_mnist), as /predict reads a canvas.

    python benchmarks/bench_drawings.py [--checkpoint models/round-000] [--n 1000] [--seed 0]
        [--families mouse,thick] [--out DIR] [--styles] [--sheet misread.png]

--n is drawings per family. The drawings are written to --out (a temporary folder if not given);
--sheet writes a contact sheet of up to 100 misread drawings, each marked with what the model said.
"""
import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dadc.model import checkpoint
from dadc.synth import drawings  # noqa: E402
from dadc.model import evaluate  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", default=str(ROOT / "models" / "round-000"))
    p.add_argument("--n", type=int, default=1000, help="drawings per family")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--families", default=",".join(drawings.FAMILIES))
    p.add_argument("--out", help="folder for the drawings (default: a temporary one)")
    p.add_argument("--styles", action="store_true", help="also print accuracy per digit style")
    p.add_argument("--sheet", help="write a contact sheet of misread drawings to this PNG")
    args = p.parse_args()
    torch.set_num_threads(1)
    model, _, _ = checkpoint.load(args.checkpoint)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        t = time.perf_counter()
        drawings.make(out, args.n, seed=args.seed, families=args.families.split(","))
        made = time.perf_counter() - t
        t = time.perf_counter()
        said, read_one = [], evaluate.predictor(model)

        def predict(canvas):  # remember every answer, for the sheet of misread drawings
            said.append(-1)   # -1: the preprocessing refused the canvas
            said[-1] = read_one(canvas)
            return said[-1]
        res = evaluate.accuracy_by_family(predict, out)
        read = time.perf_counter() - t
        if args.sheet:
            rows = list(csv.DictReader(open(out / "labels.csv", newline="")))
            wrong = [(r, s) for r, s in zip(rows, said) if s != int(r["label"])]
            cells = []
            for r, s in wrong[:100]:
                im = Image.open(out / r["file"]).convert("RGB")
                ImageDraw.Draw(im).text((8, 8), f"said {s}: {r.get('family')} {r.get('style')}",
                                        fill=(220, 0, 0), font_size=32)
                cells.append(im)
            if cells:
                drawings.contact_sheet(cells, cols=10, cell=160).save(args.sheet)
            print(f"{len(wrong)} misread drawings, the first {len(cells)} in {args.sheet}")
    print(f"checkpoint {args.checkpoint}, {args.n} drawings per family, seed {args.seed} "
          f"(made in {made:.0f} s, read in {read:.0f} s)")
    print(f"{'family':<18}{'n':>6}{'accuracy':>10}")
    for name, r in res["by_family"].items():
        print(f"{name:<18}{r['n']:>6}{r['acc']:>10.2%}")
    print(f"{'all':<18}{res['all']['n']:>6}{res['all']['acc']:>10.2%}")
    if args.styles:
        print(f"\n{'digit/style':<18}{'n':>6}{'accuracy':>10}")
        for name, r in res["by_style"].items():
            print(f"{name:<18}{r['n']:>6}{r['acc']:>10.2%}")


if __name__ == "__main__":
    main()
