"""Headless DADC rounds for researchers: `python -m dadc simulate --drawings DIR --rounds R`.

DIR holds PNG canvases and labels.csv (columns file,label[,family,style]): the campaign. Its drawings
are split in two halves (seeded): the first is the pool the simulated people draw from, the second
is never flagged, never trained on and never redrawn: it measures how often each round is fooled by
drawings it has not seen. Each round the simulated people try drawings on the serving round and flag
every one it gets wrong, until `threshold` flags start the same RetrainJob (fine-tune, gate,
promote) the app uses. Every flagged drawing counts as verified.

People in a DADC campaign do not stop when their first drawings no longer fool the model: they
keep drawing new ones. So when the pool holds fewer than `threshold` drawings that fool the serving
round, and the campaign was made by dadc.drawings (labels.csv names the families), the simulated
people draw fresh digits from the same generator and families, with a seed of their own for every
round (never a campaign drawing's seed; one that came out pixel-identical to an unseen drawing would
be skipped), each tried on that round only, at most `fresh_max` a round. If those do not fool it
`threshold` times either (or the campaign is not the generator's, or fresh_max is 0), the run says
the pool ran dry and stops.

Reported per round (one JSON row each): the serving round, the fool rate on the unseen half,
MNIST test clean accuracy (all 10,000) and PGD accuracy (`robust_acc`: the first robust_n, the
gate's seed and steps), accuracy on the human examples held out of every round, the drawings tried
for the round's flags (`tried`, of them `fresh_drawn` fresh, which gave `fresh_flagged` flags), and
the attempt's verdict, reasons, notes and seconds. At the end, the matrix: for every served round r
and every earlier one k, r's accuracy on the held-out flagged drawings that fooled k.

`--make-drawings N` first writes N style-varied mouse-like drawings per family (dadc.drawings), or N
in all with `--total`; with `--mnist-canvases`, N MNIST test digits pasted on canvases instead.
"""
import itertools
import json
import sys
import time
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from .. import preprocess
from ..synth import drawings, labels
from ..synth.canvas import random_canvas


def make_drawings(out, n, home, seed=0):
    """Write n MNIST test digits drawn on canvases, and labels.csv, into the folder `out`."""
    from ..model import mnist

    arrays = mnist.fetch(home, log=lambda m: print(m, file=sys.stderr))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i, k in enumerate(rng.choice(len(arrays["test_y"]), size=n, replace=False)):
        random_canvas(arrays["test_x"][k], rng).save(out / f"{i:05d}.png")
        rows.append([f"{i:05d}.png", int(arrays["test_y"][k])])
    labels.write(out, ["file", "label"], rows)
    return out


# --- the simulation ---------------------------------------------------------------------------------

def read_drawings(folder):
    """[(28x28 float image, label, canvas path)] from DIR/labels.csv; unreadable rows are an error."""
    folder, out = Path(folder), []
    for row in labels.read(folder):
        try:
            label = int(row["label"])
            if not 0 <= label <= 9:
                raise ValueError
            with Image.open(folder / row["file"]) as im:
                out.append((preprocess.to_mnist(im), label, folder / row["file"]))
        except (KeyError, TypeError, ValueError, OSError) as e:
            raise ValueError(f"labels.csv line {row['line']}: {row['file']},{row['label']} is not a readable "
                             f"drawing and a digit 0-9 ({e})") from None
    if len(out) < 4:
        raise ValueError(f"{folder} has {len(out)} drawings; need at least 4 (half flagged, half unseen)")
    return out


def families_of(folder):
    """The drawings.py families a campaign folder's labels.csv names (its `family` column), in
    order of first appearance; [] if it has none or names one the generator does not know."""
    names = list(dict.fromkeys(row.get("family") or "" for row in labels.read(folder)))
    return names if names and all(n in drawings.FAMILIES for n in names) else []


FRESH = 0x46524553  # mixed into a fresh drawing's seed: never the seed of a drawing drawings.make wrote


def fresh_drawings(families, seed, round_):
    """Endless new drawings (28x28, digit, canvas) that the simulated people make for round
    `round_`: the families in turn, digits 0-9 in turn, styles at random, each from a seed of its
    own, (seed, family, i, FRESH, round_), so no two rounds and no campaign drawing share one."""
    for i in itertools.count():
        family, digit = families[i % len(families)], (i // len(families)) % 10
        canvas, _ = drawings.digit(digit, np.random.default_rng([seed, zlib.crc32(family.encode()), i, FRESH, round_]),
                                  family)
        try:
            yield preprocess.to_mnist(canvas), digit, canvas
        except preprocess.CanvasError:  # nothing the app would answer: a person would redraw it
            continue


def pixels(x):
    """A 28x28's pixels as the store keeps them, as bytes: what 'the same drawing' means."""
    return preprocess.to_uint8(x).tobytes()


def error_rate(predictor, drawings):
    wrong = sum(int(predictor.probs(x)[1].argmax()) != y for x, y, _ in drawings)
    return wrong / len(drawings)


FRESH_MAX = 5000  # fresh drawings the simulated people try at most for one round


def simulate(drawings_dir, rounds, home, threshold, round0, cfg=None, seed=0, log=print, fresh_max=FRESH_MAX):
    """Run up to `rounds` DADC rounds on the drawings. Returns {"rounds": one dict per round (round 0
    first), "matrix": {served round: its matrix row (gate.matrix_row) over the rounds served before},
    "fresh_drawn": fresh drawings made in all, "stopped": why the run ended early, or None}."""
    from ..model import mnist as data
    from ..config import RoundConfig
    from ..examples import round_number
    from ..rounds.gate import matrix_row, measure
    from ..rounds.registry import Predictor, Registry
    from ..rounds.retrain import RetrainJob
    from ..store import FlagStore

    # the campaign's labels are true: its flags count as verified, whatever DADC_VERIFIED_ONLY says
    cfg = replace(cfg or RoundConfig.from_env(), verified_only=False)
    drawings = read_drawings(drawings_dir)
    families = families_of(drawings_dir) if fresh_max > 0 else []
    order = np.random.default_rng(seed).permutation(len(drawings))
    half = len(drawings) // 2
    pool = [drawings[i] for i in order[:half]]
    unseen = [drawings[i] for i in order[half:]]
    unseen_pixels = {pixels(x) for x, _, _ in unseen}
    arrays = data.fetch(home, log=lambda m: log(m))
    test = data.tensors(arrays, "test")
    registry = Registry(home, round0)
    predictor = Predictor(registry)
    store = FlagStore(home)
    job = RetrainJob(registry, predictor, store, threshold, cfg, mnist=arrays)
    flagged, mnist = set(), {}  # flagged: pool drawings flagged; mnist: round name -> its MNIST test numbers
    flags = 0
    fresh_total, stopped = 0, None

    def report(r, attempt=None, tries=None):
        name, model = predictor.serving
        if name not in mnist:
            mnist[name] = measure(model, {"test": test}, cfg, ("test",))
        held = [e for e in store.examples() if e.held_out]
        human = measure(model, {"holdout": store.tensors(held)}, cfg, ("holdout",))
        row = {"round": r, "serving": name, "unseen_error": error_rate(predictor, unseen),
               "mnist_test_acc": mnist[name]["clean_acc"], "robust_acc": mnist[name]["robust_acc"],
               "human_acc": human["human_acc"], "human_n": human["human_n"], "flagged": flags}
        if tries:
            row.update(tries)
        if attempt:
            row.update({k: attempt.get(k) for k in ("passed", "reasons", "notes", "seconds")})
        log(json.dumps(row))
        return row

    def matrix(rows):
        served = list(dict.fromkeys(row["serving"] for row in rows))
        examples = store.examples()
        return {r: matrix_row(registry.load(r)[0], store, examples,
                              [round_number(k) for k in served if round_number(k) < round_number(r)])
                for r in served}

    rows = [report(0)]
    for r in range(1, rounds + 1):
        name = predictor.round
        new = tried = fresh = fresh_new = 0

        def tries_on(x, y, canvas):  # one drawing tried on the serving round; flagged if it fools it
            nonlocal flags
            p = predictor.probs(x)[1]
            if int(p.argmax()) == y:
                return False
            # the simulated person flags what fooled the model
            store.append(x, y, canvas=canvas() if callable(canvas) else canvas, prediction=int(p.argmax()),
                         confidences=[float(v) for v in p], round=round_number(name), session="simulate")
            flags += 1
            job.notify()
            return True

        for i, (x, y, path) in enumerate(pool):
            if new >= threshold:
                break
            if i in flagged:
                continue
            tried += 1
            if tries_on(x, y, lambda: _copy(path)):
                flagged.add(i)
                new += 1
        if new < threshold and families:
            log(f"round {r}: the pool holds only {new} drawings that fool {name}: the simulated people draw "
                f"fresh ones ({', '.join(families)}; seed {seed}, round {r}; at most {fresh_max})")
            for x, y, canvas in fresh_drawings(families, seed, r):
                if new >= threshold or fresh >= fresh_max:
                    break
                if pixels(x) in unseen_pixels:
                    continue  # the unseen half stays unseen
                fresh += 1
                if tries_on(x, y, canvas):
                    new += 1
                    fresh_new += 1
            fresh_total += fresh
        if new < threshold:
            stopped = (f"round {r}: the pool ran dry: only {new} of {tried + fresh} drawings tried "
                       f"({fresh} of them fresh) fool {name}, fewer than the threshold {threshold}; stopping")
            log(stopped)
            break
        start = time.perf_counter()
        job.wait()
        attempt = [h for h in registry.history() if h.get("event") == "attempt"][-1]
        rows.append(report(r, attempt, {"tried": tried + fresh, "fresh_drawn": fresh, "fresh_flagged": fresh_new}))
        log(f"round {r}: {'promoted ' + attempt['round'] if attempt['passed'] else 'rejected'} "
            f"in {time.perf_counter() - start:.0f} s")
    return {"rounds": rows, "matrix": matrix(rows), "fresh_drawn": fresh_total, "stopped": stopped}


def _copy(path):
    with Image.open(path) as canvas:
        return canvas.copy()


def summary(result):
    """The result as text tables: one line per round (why a round was rejected, or the gate's notes,
    at its end), then the matrix."""
    def pct(v):
        return "-" if v is None else f"{v:6.2%}"

    lines = [f"{'round':>5}  {'serving':<9}  {'result':<8}  {'unseen err':>10}  {'MNIST':>7}  {'PGD':>7}  "
             f"{'human':>7}  {'held':>4}  {'flagged':>7}  {'tried':>5}  {'fresh':>5}  {'s':>5}  why"]
    for row in result["rounds"]:
        verdict = "-" if "passed" not in row else "promoted" if row["passed"] else "rejected"
        why = "; ".join((row.get("reasons") or []) + (row.get("notes") or []))
        lines.append(f"{row['round']:>5}  {row['serving']:<9}  {verdict:<8}  {pct(row['unseen_error']):>10}  "
                     f"{pct(row['mnist_test_acc']):>7}  {pct(row['robust_acc']):>7}  {pct(row['human_acc']):>7}  "
                     f"{row['human_n']:>4}  {row['flagged']:>7}  {row.get('tried', ''):>5}  "
                     f"{row.get('fresh_drawn', ''):>5}  {row.get('seconds') or '':>5}  {why}".rstrip())
    if result.get("stopped"):
        lines.append(result["stopped"])
    matrix = result["matrix"]
    cols = list(matrix)[:-1]
    if cols:
        last = matrix[list(matrix)[-1]]  # the newest round's row has every earlier round, with its n
        lines += ["", "accuracy on the held-out drawings that fooled each round (column; n = how many):",
                  " " * 10 + "".join(f"{c + ' (' + str(last[c]['n']) + ')':>18}" for c in cols)]
        for r, row in matrix.items():
            lines.append(f"{r:<10}" + "".join(f"{pct(row[c]['acc']) if c in row else '':>18}" for c in cols))
    return "\n".join(lines)


def make_total(out, n, seed, families=None):
    """Write n style-varied drawings in all (dadc.drawings), spread evenly over the families (the
    first n mod k get one more), and one labels.csv: drawing i of a family is the one
    drawings.make(out, m, seed) writes for any m > i."""
    families = list(families or drawings.FAMILIES)
    rows = []
    for j, family in enumerate(families):
        k = n // len(families) + (j < n % len(families))
        if k:
            drawings.make(out, k, seed=seed, families=[family])
            rows += [[r["file"], r["label"], r["family"], r["style"]] for r in labels.read(out)]
    labels.write(out, ["file", "label", "family", "style"], rows)
    return Path(out)


def main(args, settings):
    """The CLI: python -m dadc simulate --drawings DIR --rounds R [--threshold T] [--make-drawings N]."""
    from ..rounds.registry import ROUND0

    if args.make_drawings:
        if args.mnist_canvases:
            make_drawings(args.drawings, args.make_drawings, settings.home, seed=args.seed)
            what = f"{args.make_drawings} MNIST test digits on canvases"
        else:
            families = args.families.split(",") if args.families else None
            if args.total:
                if [f for f in families or () if f not in drawings.FAMILIES]:
                    drawings.make(args.drawings, 0, families=families)  # its error names the unknown ones
                make_total(args.drawings, args.make_drawings, args.seed, families)
            else:
                drawings.make(args.drawings, args.make_drawings, seed=args.seed, families=families)
            what = (f"{args.make_drawings} drawings {'in all' if args.total else 'per family'} "
                    f"({', '.join(families or drawings.FAMILIES)}; seed {args.seed})")
        print(f"wrote {what} and labels.csv to {args.drawings}", file=sys.stderr)
        if not args.rounds:
            return
    if args.rounds < 1:
        raise ValueError("--rounds must be >= 1")
    threshold = args.threshold or settings.threshold
    if args.fresh_max < 0:
        raise ValueError("--fresh-max must be >= 0")
    result = simulate(args.drawings, args.rounds, settings.home, threshold, args.seed_round or ROUND0,
                      seed=args.seed, log=lambda m: print(m, file=sys.stderr), fresh_max=args.fresh_max)
    print(summary(result), file=sys.stderr)
    print(json.dumps(result))


def add_arguments(p):
    p.add_argument("--drawings", required=True, help="folder of PNG canvases with labels.csv (file,label)")
    p.add_argument("--rounds", type=int, default=0, help="rounds to run")
    p.add_argument("--threshold", type=int, default=None, help="flags per round (default DADC_THRESHOLD)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the drawings made, of the split into flagged / unseen halves and of fresh drawings")
    p.add_argument("--seed-round", default=None, help="round-0 checkpoint dir (default models/round-000)")
    p.add_argument("--make-drawings", type=int, default=0, metavar="N",
                   help="first write N style-varied mouse-like drawings per family (dadc.drawings) into --drawings")
    p.add_argument("--total", action="store_true",
                   help="with --make-drawings: N drawings in all, spread evenly over the families")
    p.add_argument("--families", default=None, help="with --make-drawings: comma-separated families (default all)")
    p.add_argument("--fresh-max", type=int, default=FRESH_MAX, metavar="M",
                   help="when the pool holds fewer than --threshold drawings that fool the serving round, the "
                        "simulated people draw up to M fresh ones a round from the campaign's families "
                        f"(drawings.make campaigns only; default {FRESH_MAX}; 0: stop when the pool runs dry)")
    p.add_argument("--mnist-canvases", action="store_true",
                   help="with --make-drawings: N MNIST test digits pasted on canvases instead")
