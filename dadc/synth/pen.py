"""Digits drawn by a simulated pen: a second generator, made a different way from drawings.py, that
is kept out of all tuning and used only to report (docs/SIMULATE.md).

drawings.py draws each style as exact curves (arcs, Bezier pieces) and then disturbs them. Here a
digit is only a few via points per stroke (where a hand aims: the top of a 2, its turn, the end of
its base), and the trajectory comes from a pen that chases them: a mass on a damped spring pulled
toward the current via point, which moves on to the next one as soon as the pen comes near it
(a point-to-point reaching model of handwriting, after Hollerbach 1981 / Plamondon's kinematic
theory). Corners come out rounded or looped, curves overshoot, fast parts are sampled sparsely (the
browser reports the pointer at a fixed rate): what the hand does, not what the template says.

  1. via points of a style (VIA[digit][style]), each moved at random (where the hand aimed)
  2. slant, tilt and squeeze of the via points
  3. the pen: stiffness (how fast it turns), damping (how much it overshoots), how near a via
     point counts as reached; sampled at a fixed time step
  4. size, place and brush on the 448x448 canvas; rendered at 2x with curved joints, then reduced

make(out_dir, n, seed) writes PNG canvases and labels.csv (file,label,family,style), family "pen":
the format campaign/simulate.read_drawings reads. Drawing i depends only on (seed, i).
"""
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from . import labels
from ..preprocess import CANVAS

SUPER = 2  # rendered at 2x, then box-reduced

# via points (x right, y down, the digit about 1 tall), one list per stroke
VIA = {
    0: {"round": [[(.55, 0), (.2, .15), (.1, .55), (.35, .95), (.7, .95), (.9, .55), (.8, .15), (.5, .02)]],
        "tall": [[(.5, 0), (.28, .2), (.25, .7), (.45, 1), (.72, .8), (.75, .25), (.52, .02)]]},
    1: {"stick": [[(.5, 0), (.5, 1)]],
        "flag": [[(.28, .22), (.55, 0), (.5, 1)]]},
    2: {"swan": [[(.15, .28), (.45, 0), (.8, .15), (.75, .45), (.15, 1), (.9, 1)]],
        "loop": [[(.2, .25), (.5, 0), (.8, .2), (.6, .6), (.25, .95), (.15, .8), (.35, .85), (.9, 1)]]},
    3: {"round": [[(.15, .1), (.55, 0), (.8, .2), (.45, .45), (.85, .7), (.6, 1), (.15, .88)]],
        "flat": [[(.15, 0), (.8, 0), (.45, .4), (.85, .65), (.6, 1), (.15, .9)]]},
    4: {"closed": [[(.62, 0), (.08, .65), (.92, .65)], [(.62, .05), (.62, 1)]],
        "open": [[(.2, 0), (.15, .6), (.9, .6)], [(.7, .15), (.7, 1)]]},
    5: {"flag_last": [[(.25, 0), (.2, .45), (.6, .35), (.85, .65), (.6, 1), (.12, .88)], [(.25, 0), (.85, 0)]],
        "flag_first": [[(.85, 0), (.25, 0), (.2, .45), (.6, .35), (.85, .65), (.6, 1), (.12, .88)]]},
    6: {"curved": [[(.72, 0), (.3, .3), (.18, .75), (.45, 1), (.8, .8), (.65, .5), (.22, .62)]],
        "straight": [[(.6, 0), (.22, .7), (.45, 1), (.78, .8), (.6, .5), (.25, .65)]]},
    7: {"plain": [[(.12, 0), (.88, 0), (.4, 1)]],
        "crossbar": [[(.12, 0), (.88, 0), (.4, 1)], [(.38, .52), (.85, .5)]]},
    8: {"one": [[(.78, .12), (.5, 0), (.22, .18), (.5, .45), (.82, .75), (.5, 1), (.18, .75), (.5, .45),
                 (.78, .18)]],
        "two": [[(.5, 0), (.25, .22), (.5, .45), (.75, .22), (.5, 0)], [(.5, .45), (.18, .72), (.5, 1), (.82, .72),
                                                                      (.5, .45)]]},
    9: {"curved": [[(.8, .15), (.5, 0), (.2, .2), (.4, .45), (.78, .3), (.8, .05), (.75, .5), (.68, 1)]],
        "hooked": [[(.8, .2), (.5, 0), (.2, .2), (.45, .45), (.8, .25), (.75, .7), (.55, 1), (.3, .92)]]},
}


def _aim(strokes, rng, wobble):
    """Where the hand actually aimed: every via point moved by up to ~`wobble`, then the whole digit
    slanted, tilted and squeezed about its centre."""
    angle = np.radians(rng.uniform(-8, 8))
    slant, squeeze = rng.uniform(-0.35, 0.2), rng.uniform(0.7, 1.15)
    c, s = np.cos(angle), np.sin(angle)
    m = np.array([[c, -s], [s, c]]) @ np.array([[squeeze, slant], [0, 1]])
    return [(np.array(p, dtype=float) + rng.normal(0, wobble, (len(p), 2)) - 0.5) @ m.T for p in strokes]


def _chase(via, rng, stiffness, damping, reach, dt=0.004):
    """The pen's trajectory through one stroke's via points: a unit mass on a spring (stiffness w^2,
    damping 2*zeta*w) pulled toward the current via point, which moves on when the pen is within
    `reach` of it (the last one: when the pen has nearly stopped there)."""
    p, v = via[0].copy(), np.zeros(2)
    w, out, k = stiffness, [via[0].copy()], 1
    for _ in range(4000):  # a bound: a stroke takes ~100-600 steps
        if k >= len(via):
            break
        target = via[k]
        a = w * w * (target - p) - 2 * damping * w * v + rng.normal(0, 3.0, 2)  # a hand's small tremor
        v += a * dt
        p = p + v * dt
        out.append(p.copy())
        near = np.linalg.norm(target - p) < (reach if k < len(via) - 1 else 0.03)
        if near and (k < len(via) - 1 or np.linalg.norm(v) < 0.5):
            k += 1
    return np.array(out)[:: int(rng.integers(2, 6))]  # the browser's fixed sampling rate: every 2nd-5th step


def _place(strokes, rng, height, brush):
    """Scale the digit to `height` px and put it near the canvas centre, wholly inside it."""
    allp = np.concatenate(strokes)
    lo, hi = allp.min(0), allp.max(0)
    scale = min(height / max(hi[1] - lo[1], 1e-6), (CANVAS - brush - 8) / max(hi[0] - lo[0], 1e-6))
    room = np.maximum(CANVAS - (hi - lo) * scale - brush - 8, 0)
    offset = room * (0.5 + rng.uniform(-0.25, 0.25, 2)) + brush / 2 + 4
    return [(p - lo) * scale + offset for p in strokes]


def render(strokes, brush):
    """Strokes (canvas px) as an opaque white RGBA canvas with black ink: drawn at 2x with curved
    joints and a round dot at each end, then box-reduced."""
    ink = Image.new("L", (CANVAS * SUPER, CANVAS * SUPER), 0)
    d = ImageDraw.Draw(ink)
    r = brush * SUPER / 2
    for p in strokes:
        q = [(float(x) * SUPER, float(y) * SUPER) for x, y in p]
        if len(q) > 1:
            d.line(q, fill=255, width=max(1, round(brush * SUPER)), joint="curve")
        for x, y in (q[0], q[-1]):
            d.ellipse((x - r, y - r, x + r, y + r), fill=255)
    white = Image.eval(ink.reduce(SUPER), lambda v: 255 - v)
    return Image.merge("RGBA", (white, white, white, Image.new("L", white.size, 255)))


def digit(d, rng, style=None):
    """(canvas, style): one pen drawing of digit d; its style at random if None."""
    style = style or str(rng.choice(sorted(VIA[d])))
    aimed = _aim(VIA[d][style], rng, rng.uniform(0.01, 0.045))
    stiffness, damping, reach = rng.uniform(28, 55), rng.uniform(0.55, 1.0), rng.uniform(0.04, 0.12)
    strokes = [_chase(p, rng, stiffness, damping, reach) for p in aimed]
    height = rng.uniform(140, 380)
    brush = min(rng.uniform(8, 30), height / 6)
    return render(_place(strokes, rng, height, brush), brush), style


def make(out_dir, n, seed=0):
    """Write n pen drawings (digits cycling 0-9) as PNGs and labels.csv (file,label,family,style)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        canvas, style = digit(i % 10, np.random.default_rng([seed, zlib.crc32(b"pen"), i]))
        canvas.save(out / f"pen-{i:05d}.png")
        rows.append([f"pen-{i:05d}.png", i % 10, "pen", style])
    labels.write(out, ["file", "label", "family", "style"], rows)
    return out
