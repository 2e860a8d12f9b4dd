"""Headless DADC rounds for researchers: `python -m dadc simulate --drawings DIR --rounds R`.

DIR holds PNG canvases and labels.csv (columns file,label[,family,style]): the campaign. Its drawings
are split in two halves (seeded): the first is the pool the simulated people draw from, the second
is never flagged, never trained on and never redrawn: it measures how often each round is fooled by
drawings it has not seen. Each round the simulated people try drawings on the serving round and flag
every one it gets wrong, until `threshold` flags start the same RetrainJob (fine-tune, gate,
promote) the app uses. Every flagged drawing counts as verified.

People in a DADC campaign do not stop when their first drawings no longer fool the model: they
keep drawing new ones. So when the pool holds fewer than `threshold` drawings that fool the serving
round, and the campaign was made by synth/drawings.py (labels.csv names the families), the simulated
people draw fresh digits from the same generator and families, with a seed of their own for every
round (never a campaign drawing's seed; one that came out pixel-identical to an unseen drawing would
be skipped), each tried on that round only, at most `fresh_max` a round. If those do not fool it
`threshold` times either (or the campaign is not the generator's, or fresh_max is 0), the run says
the pool ran dry and stops.

Reported per round (one JSON row each): the serving round, the fool rate on the unseen half,
MNIST test clean accuracy (all 10,000) and PGD accuracy (`robust_acc`: the first robust_n, the
gate's seed and steps), accuracy on the human examples held out of every round, the flags made so
far (`flagged`) and those the serving round learnt from (`flags_used`), the drawings tried for the
round's flags (`tried`, of them `fresh_drawn` fresh, which gave `fresh_flagged` flags), and the
attempt's verdict, reasons, notes and seconds. At the end, the matrix: for every served round r and
every earlier one k, r's accuracy on the held-out flagged drawings that fooled k; and the sample
efficiency (`efficiency`): the unseen fool rate once 10, 20 and 50 flags were made and a round run on
them, None where the pool ran dry first (`pool_dry`: a result, not an error).

`--make-drawings N` first writes N style-varied mouse-like drawings per family (synth/drawings.py), or N
in all with `--total`; with `--mnist-canvases`, N MNIST test digits pasted on canvases instead; with
`--generator pen`, N in all from synth/pen.py (a generator kept out of all tuning: docs/SIMULATE.md).
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


def simulate(drawings_dir, rounds, home, threshold, round0, cfg=None, seed=0, log=print, fresh_max=FRESH_MAX,
             mnist_home=None):
    """Run up to `rounds` DADC rounds on the drawings. Returns {"rounds": one dict per round (round 0
    first), "matrix": {served round: its matrix row (gate.matrix_row) over the rounds served before},
    "fresh_drawn": fresh drawings made in all, "stopped": why the run ended early, or None}."""
    run = _Campaign(drawings_dir, home, threshold, round0, cfg, seed, log, fresh_max, mnist_home or home)
    rows, stopped = [run.report(0)], None
    for r in range(1, rounds + 1):
        name = run.predictor.round
        new, tried, fresh, fresh_new = run.flag_round(r, name)
        if new < threshold:
            stopped = (f"round {r}: the pool ran dry: only {new} of {tried + fresh} drawings tried "
                       f"({fresh} of them fresh) fool {name}, fewer than the threshold {threshold}; stopping")
            log(stopped)
            break
        start = time.perf_counter()
        run.job.wait()
        attempt = [h for h in run.registry.history() if h.get("event") == "attempt"][-1]
        rows.append(run.report(r, attempt, {"tried": tried + fresh, "fresh_drawn": fresh, "fresh_flagged": fresh_new}))
        log(f"round {r}: {'promoted ' + attempt['round'] if attempt['passed'] else 'rejected'} "
            f"in {time.perf_counter() - start:.0f} s")
    return {"rounds": rows, "matrix": run.matrix(rows), "fresh_drawn": run.fresh_total, "stopped": stopped,
            "pool_dry": stopped is not None, "efficiency": efficiency(rows)}


EFFICIENCY_AT = (10, 20, 50)  # flags after which the unseen fool rate is reported (sample efficiency)


def efficiency(rows, at=EFFICIENCY_AT):
    """Sample efficiency: {"10": the unseen fool rate of the round served once 10 flags were made
    and a round was run on them (promoted or not: a rejected round leaves the serving one's rate),
    ...}; None where the campaign never got that many flags (the pool ran dry first). "0" is
    round-000's."""
    out = {"0": rows[0]["unseen_error"]}
    for k in at:
        out[str(k)] = next((row["unseen_error"] for row in rows[1:] if row["flagged"] >= k), None)
    return out


class _Campaign:
    """One simulate() run on a home: the campaign split into the pool and the unseen half, the
    home's registry, store and RetrainJob (the app's), and what was flagged so far."""

    def __init__(self, drawings_dir, home, threshold, round0, cfg, seed, log, fresh_max, mnist_home):
        from ..config import RoundConfig
        from ..model import mnist as data
        from ..rounds.registry import Predictor, Registry
        from ..rounds.retrain import RetrainJob
        from ..store import FlagStore

        # the campaign's labels are true: its flags count as verified, whatever DADC_VERIFIED_ONLY says
        self.cfg = replace(cfg or RoundConfig.from_env(), verified_only=False)
        self.threshold, self.seed, self.log, self.fresh_max = threshold, seed, log, fresh_max
        campaign = read_drawings(drawings_dir)
        self.families = families_of(drawings_dir) if fresh_max > 0 else []
        order = np.random.default_rng(seed).permutation(len(campaign))
        half = len(campaign) // 2
        self.pool = [campaign[i] for i in order[:half]]
        self.unseen = [campaign[i] for i in order[half:]]
        self.unseen_pixels = {pixels(x) for x, _, _ in self.unseen}
        arrays = data.fetch(mnist_home, log=log)  # read only: the campaign's home holds no copy
        self.test = data.tensors(arrays, "test")
        self.registry = Registry(home, round0)
        self.predictor = Predictor(self.registry)
        self.store = FlagStore(home)
        self.job = RetrainJob(self.registry, self.predictor, self.store, threshold, self.cfg, mnist=arrays)
        self.flagged = set()  # indices of the pool drawings flagged
        self.mnist = {}       # round name -> its MNIST test numbers
        self.flags, self.fresh_total = 0, 0
        self.used = {self.predictor.round: 0}  # round name -> the flags made before it was trained

    def flag_round(self, r, name):
        """Round r's flagging on the serving round `name`: the pool's drawings not yet flagged in turn,
        then (when too few fool it and the campaign is the generator's) fresh ones, until `threshold`
        flags. Returns (flags made, pool drawings tried, fresh drawings tried, fresh ones flagged)."""
        new = tried = fresh = fresh_new = 0
        for i, (x, y, path) in enumerate(self.pool):
            if new >= self.threshold:
                break
            if i in self.flagged:
                continue
            tried += 1
            if self.tries_on(name, x, y, lambda: _copy(path)):
                self.flagged.add(i)
                new += 1
        if new < self.threshold and self.families:
            self.log(f"round {r}: the pool holds only {new} drawings that fool {name}: the simulated people draw "
                     f"fresh ones ({', '.join(self.families)}; seed {self.seed}, round {r}; at most {self.fresh_max})")
            for x, y, canvas in fresh_drawings(self.families, self.seed, r):
                if new >= self.threshold or fresh >= self.fresh_max:
                    break
                if pixels(x) in self.unseen_pixels:
                    continue  # the unseen half stays unseen
                fresh += 1
                if self.tries_on(name, x, y, canvas):
                    new += 1
                    fresh_new += 1
            self.fresh_total += fresh
        return new, tried, fresh, fresh_new

    def tries_on(self, name, x, y, canvas):
        """One drawing tried on the serving round `name`; flagged (True) if it fools it."""
        from ..examples import round_number

        p = self.predictor.probs(x)[1]
        if int(p.argmax()) == y:
            return False
        # the simulated person flags what fooled the model
        self.store.append(x, y, canvas=canvas() if callable(canvas) else canvas, prediction=int(p.argmax()),
                          confidences=[float(v) for v in p], round=round_number(name), visitor="simulate")
        self.flags += 1
        self.job.notify()
        return True

    def report(self, r, attempt=None, tries=None):
        """Round r's row (logged as one JSON line): the serving round measured, the flags so far, the
        drawings tried for it and the attempt's verdict."""
        from ..rounds.gate import measure

        name, model = self.predictor.serving
        if name not in self.mnist:
            self.mnist[name] = measure(model, {"test": self.test}, self.cfg, ("test",))
        held = [e for e in self.store.examples() if e.held_out]
        human = measure(model, {"holdout": self.store.tensors(held)}, self.cfg, ("holdout",))
        row = {"round": r, "serving": name, "unseen_error": error_rate(self.predictor, self.unseen),
               "mnist_test_acc": self.mnist[name]["clean_acc"], "robust_acc": self.mnist[name]["robust_acc"],
               "human_acc": human["human_acc"], "human_n": human["human_n"], "flagged": self.flags}
        if tries:
            row.update(tries)
        if attempt:
            row.update({k: attempt.get(k) for k in ("passed", "reasons", "notes", "seconds")})
            if attempt.get("passed"):
                self.used[attempt["round"]] = self.flags
        # the flags the serving round learnt from (a rejected round leaves the serving one's)
        row["flags_used"] = self.used.get(name, 0)
        self.log(json.dumps(row))
        return row

    def matrix(self, rows):
        """{served round: its accuracy on the held-out flags that fooled each round served before it}."""
        from ..examples import round_number
        from ..rounds.gate import matrix_row

        served = list(dict.fromkeys(row["serving"] for row in rows))
        examples = self.store.examples()
        return {r: matrix_row(self.registry.load(r)[0], self.store, examples,
                              [round_number(k) for k in served if round_number(k) < round_number(r)])
                for r in served}


def _copy(path):
    with Image.open(path) as canvas:
        return canvas.copy()


def summary(result):
    """The result as text tables: one line per round (why a round was rejected, or the gate's notes,
    at its end), then the matrix."""
    def pct(v):
        return "-" if v is None else f"{v:6.2%}"

    lines = [f"{'round':>5}  {'serving':<9}  {'result':<8}  {'unseen err':>10}  {'MNIST':>7}  {'PGD':>7}  "
             f"{'human':>7}  {'held':>4}  {'flagged':>7}  {'used':>5}  {'tried':>5}  {'fresh':>5}  {'s':>5}  why"]
    for row in result["rounds"]:
        verdict = "-" if "passed" not in row else "promoted" if row["passed"] else "rejected"
        why = "; ".join((row.get("reasons") or []) + (row.get("notes") or []))
        lines.append(f"{row['round']:>5}  {row['serving']:<9}  {verdict:<8}  {pct(row['unseen_error']):>10}  "
                     f"{pct(row['mnist_test_acc']):>7}  {pct(row['robust_acc']):>7}  {pct(row['human_acc']):>7}  "
                     f"{row['human_n']:>4}  {row['flagged']:>7}  {row.get('flags_used', ''):>5}  "
                     f"{row.get('tried', ''):>5}  "
                     f"{row.get('fresh_drawn', ''):>5}  {row.get('seconds') or '':>5}  {why}".rstrip())
    if result.get("stopped"):
        lines.append(result["stopped"])
    if "efficiency" in result:
        lines.append(efficiency_line(result))
    matrix = result["matrix"]
    cols = list(matrix)[:-1]
    if cols:
        last = matrix[list(matrix)[-1]]  # the newest round's row has every earlier round, with its n
        lines += ["", "accuracy on the held-out drawings that fooled each round (column; n = how many):",
                  " " * 10 + "".join(f"{c + ' (' + str(last[c]['n']) + ')':>18}" for c in cols)]
        for r, row in matrix.items():
            lines.append(f"{r:<10}" + "".join(f"{pct(row[c]['acc']) if c in row else '':>18}" for c in cols))
    return "\n".join(lines)


def efficiency_line(result):
    """'unseen fool rate after 0 / 10 / 20 / 50 flags: 3.43% / ... ' (with why a number is missing)."""
    eff = result["efficiency"]
    rates = " / ".join("-" if v is None else f"{v:.2%}" for v in eff.values())
    line = f"unseen fool rate after {' / '.join(eff)} flags: {rates}"
    if result.get("pool_dry") and None in eff.values():
        line += f" (- : the pool ran dry at {result['rounds'][-1]['flagged']} flags)"
    return line


def make_total(out, n, seed, families=None):
    """Write n style-varied drawings in all (synth/drawings.py), spread evenly over the families (the
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
