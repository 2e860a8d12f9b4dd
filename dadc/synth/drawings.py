"""Digits drawn the way people draw them on the app's Sketchpad: with a mouse or a finger, in many styles.

MNIST is pen on paper, scanned; the app sees something else: strokes from a mouse or a finger, drawn
with a round brush on a 448x448 canvas. This module makes such drawings, so that tests, benchmarks
and training can see the styles real visitors use (continental 1 and 7, open 4, slashed 0, ...)
without waiting for the visitors. How a drawing is made:

  1. a style of the digit as strokes in a unit box (y down), its proportions varied a little
     (a 2's neck, a 4's crossbar height, how well a 0 closes): STYLES[digit][style](rng)
  2. the pose: squeeze or stretch, shear (slant), rotation (tilt)
  3. each stroke as a pointer reports it: points at uneven spacing (a mouse moves fast in the middle
     of a stroke and slows at its ends and corners, and the browser samples it at a fixed rate, so
     fast parts become straight chords), with smooth hand tremor, and the pen lifted between strokes
     so that strokes meet only roughly (gaps and overshoots)
  4. rendered as Gradio's Sketchpad renders its composite: opaque white RGBA canvas, black strokes of
     one brush width, round caps and joins, anti-aliased (drawn at 4x, then box-reduced)

Families (the pose and brush; every family draws every style of every digit):

  plain            centred, mid-size (220-300 px tall), the app's default 20 px brush (16-24), little
                   tremor or tilt: a careful visitor
  mouse            anywhere near the centre, 150-360 px, brush 10-28, tilt +-10 deg, shear, tremor
  thin             as mouse with a thin brush (3-9 px): someone who turned the brush size down
  thick            as mouse with a wide brush (30-60 px): turned up, or a finger
  tilted           as mouse, tilted 10-22 deg either way (and slanted as mouse: up to 30 deg in all)
  offcentre_small  small (45-140 px) and anywhere on the canvas, corners included
  large            nearly the whole canvas (370-435 px tall)
  font             not drawn: a digit typed in a font the training never saw (fonts.py), style = the font

make(out_dir, n, seed) writes PNG canvases and labels.csv (file,label,family,style), the format that
campaign/simulate.read_drawings and model/evaluate.accuracy_by_family read. Drawing i of a family depends only on
(seed, family, i): the same seed always gives the same files.
"""
import math
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from . import fonts, labels
from ..preprocess import CANVAS

SIZE = CANVAS   # the app's canvas
SUPER = 4       # strokes are drawn at 4x and box-reduced: anti-aliased edges, as a browser canvas has


# --- stroke pieces, in a unit box: x right, y down, the digit about 1 tall ----------------------------

def line(*pts):
    return np.array(pts, dtype=float)


def arc(cx, cy, rx, ry, a0, a1, n=40):
    """Points of an elliptic arc from angle a0 to a1 (degrees; 0 = right, 90 = down, as y is down)."""
    t = np.radians(np.linspace(a0, a1, n))
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1)


def bez(*pts, n=30):
    """A Bezier curve with these control points (any degree), as n points."""
    p, k = np.array(pts, dtype=float), len(pts) - 1
    t = np.linspace(0, 1, n)[:, None]
    return sum(math.comb(k, i) * t ** i * (1 - t) ** (k - i) * p[i] for i in range(k + 1))


def chain(*parts):
    """One stroke from pieces drawn one after the other without lifting the pen."""
    return np.concatenate(parts)


# --- styles: STYLES[digit][name](rng) -> list of strokes -------------------------------------------
# Each takes a numpy Generator and varies its own proportions, because no two people (and no two
# drawings by one person) put a 2's neck or a 4's crossbar at the same place.

def _zero(rng, width, slash=False):
    # people start a 0 at the top and go round anticlockwise; the end overshoots or falls short
    rx, start = width * rng.uniform(0.85, 1.15), rng.uniform(-110, -70)
    end = start - 360 + rng.uniform(-25, 20)
    strokes = [arc(0.5, 0.5, rx, 0.5, start, end, n=60)]
    if slash:
        strokes.append(line((0.5 - rx * 0.9, 0.85), (0.5 + rx * 0.9, 0.15)))
    return strokes


def _one(rng, flag=0.0, foot=False):
    top, bottom = (0.5 + rng.uniform(-0.03, 0.03), 0.0), (0.5 + rng.uniform(-0.03, 0.03), 1.0)
    stem = line(top, bottom)
    if flag:  # the continental 1: a flag up to the top, then down, in one stroke
        stem = chain(line((top[0] - flag, flag * rng.uniform(0.6, 1.1))), stem)
    strokes = [stem]
    if foot:
        half = rng.uniform(0.18, 0.28)
        strokes.append(line((bottom[0] - half, 1.0), (bottom[0] + half, 1.0)))
    return strokes


def _two(rng, neck="curved"):
    w, base = rng.uniform(0.55, 0.75), rng.uniform(0.95, 1.1)
    x0, x1 = 0.5 - w / 2, 0.5 + w / 2
    top = bez((x0 + 0.02, 0.3), (x0, -0.04), (x1 + 0.05, -0.08), (x1, 0.3), n=30)
    if neck == "straight":    # an angular 2: a straight diagonal down to the base
        down = line((x0, 1.0))
    elif neck == "loop":      # a small loop where the neck meets the base: round it clockwise, then out right
        r = rng.uniform(0.07, 0.11)
        cx, cy = x0 + r + 0.02, 1.0 - r
        into = (cx + 0.7 * r, cy + 0.7 * r)
        down = chain(bez((x1, 0.3), (x1 - 0.05, 0.6), (x0 + 0.3, 0.75), into, n=20),
                     arc(cx, cy, r, r, 45, 375, n=30),
                     bez((cx + r, cy + 0.2 * r), (cx + r * 1.2, 1.0), (cx + 2 * r, 1.0)))
    else:                     # the swan neck: a curve down to the base
        down = bez((x1, 0.3), (x1 - 0.02, 0.6), (x0 + 0.1, 0.75), (x0, 1.0), n=24)
    return [chain(top, down, line((x0 + w * base, 1.0 + rng.uniform(-0.04, 0.04))))]


def _three(rng, flat=False):
    w, mid = rng.uniform(0.5, 0.65), rng.uniform(0.42, 0.5)
    lower = arc(0.5, (1 + mid) / 2, w / 2 + 0.02, (1 - mid) / 2, -120, 150, n=36)
    if flat:  # a flat top like a Z's, a diagonal to the middle, then the belly
        x0, x1 = 0.5 - w / 2, 0.5 + w / 2
        return [chain(line((x0, 0.0), (x1, 0.0), (0.48, mid)), lower[8:])]
    upper = arc(0.5, mid / 2, w / 2 - 0.03, mid / 2, -160, 110, n=32)
    return [chain(upper, lower)]


def _four(rng, closed=True):
    bar, x_stem = rng.uniform(0.6, 0.72), rng.uniform(0.6, 0.7)
    if closed:  # a triangle: down-left from the top, across, then the stem from the top again
        arm = line((x_stem, 0.0), (0.08, bar), (0.92, bar))
        return [arm, line((x_stem, rng.uniform(-0.02, 0.05)), (x_stem + rng.uniform(-0.04, 0.02), 1.0))]
    # open: down, across, and a separate stem that starts lower than the first stroke
    arm = line((0.2, 0.0), (0.16 + rng.uniform(-0.04, 0.04), bar), (0.88, bar))
    return [arm, line((x_stem, rng.uniform(0.1, 0.3)), (x_stem, 1.0))]


def _five(rng, one_stroke=False):
    w, belly = rng.uniform(0.5, 0.65), rng.uniform(0.38, 0.48)
    x0, x1 = 0.5 - w / 2, 0.5 + w / 2
    cy, ry = (belly + 1) / 2, (1 - belly) / 2 + 0.03
    body = chain(line((x0 + 0.04, 0.0), (x0, belly)), arc(0.5, cy, w / 2 + 0.03, ry, -150, 145, n=34))
    if one_stroke:  # bar first, right to left, then down and round without lifting
        return [chain(line((x1 + 0.05, 0.0)), body)]
    return [body, line((x0 + 0.04, 0.0), (x1 + 0.05, rng.uniform(-0.05, 0.02)))]   # the flag last


def _six(rng, straight=False):
    r = rng.uniform(0.25, 0.33)
    cx, cy, rx = 0.5, 1.0 - r, r * rng.uniform(0.95, 1.2)
    start = (0.5 + rng.uniform(0.1, 0.25), 0.0)
    if straight:
        stem = line(start, (cx - rx, cy))
    else:
        stem = bez(start, (0.2, 0.15), (cx - rx - 0.02, cy - 0.3), (cx - rx, cy), n=24)
    # round the loop anticlockwise: down the left, along the bottom, up the right, back over the top
    loop = arc(cx, cy, rx, r, 180, 180 - 350 + rng.uniform(-20, 25), n=40)
    return [chain(stem, loop)]


def _seven(rng, crossbar=False, hook=False):
    w = rng.uniform(0.55, 0.75)
    x0, x1 = 0.5 - w / 2, 0.5 + w / 2
    foot = (0.5 + rng.uniform(-0.2, 0.02), 1.0)
    if rng.random() < 0.5:
        stem = line(foot)
    else:  # a slightly bowed stem
        stem = bez((x1, 0.0), (x1 - 0.1, 0.4), foot, n=16)
    head = [(x0, rng.uniform(0.1, 0.2)), (x0, 0.0)] if hook else [(x0, 0.0)]
    strokes = [chain(line(*head, (x1, rng.uniform(-0.04, 0.04))), stem)]
    if crossbar:  # the continental 7: a bar across the middle of the stem
        y = rng.uniform(0.45, 0.55)
        xm = x1 + (foot[0] - x1) * y
        strokes.append(line((xm - rng.uniform(0.15, 0.25), y), (xm + rng.uniform(0.12, 0.22), y)))
    return strokes


def _eight(rng, one_stroke=True):
    mid = rng.uniform(0.4, 0.5)
    w1, w2 = rng.uniform(0.2, 0.27), rng.uniform(0.25, 0.33)
    if not one_stroke:  # a snowman: two ovals, one on the other
        return [arc(0.5, mid / 2, w1, mid / 2, -90, -450 + rng.uniform(-15, 15), n=36),
                arc(0.5, (1 + mid) / 2, w2, (1 - mid) / 2, -90, -450 + rng.uniform(-15, 15), n=40)]
    # one stroke from the top right: left round the upper loop, cross, round the lower, back up.
    # A figure-of-eight curve; `a` sets how steeply the stroke crosses itself in the middle (0: the
    # two loops only touch, as two ovals; 1: a lemniscate, its loops widest near their ends)
    t = np.linspace(0.25, 2 * np.pi + rng.uniform(0.1, 0.5), 90)
    a, c = rng.uniform(0.3, 0.6), np.cos(t)
    up = c >= 0
    x = 0.5 - np.where(up, w1, w2) * np.sin(2 * t)
    y = np.where(up, mid * (a * (1 - c) + (1 - a) * (1 - c * c)),
                 mid + (1 - mid) * (-a * c + (1 - a) * c * c))
    return [np.stack([x, y], 1)]


def _nine(rng, straight=False):
    r = rng.uniform(0.22, 0.3)
    cx, cy = 0.45, r
    # the loop anticlockwise from its right side, then the tail down from there
    loop = arc(cx, cy, r * rng.uniform(1.0, 1.25), r, rng.uniform(-10, 20), -360, n=40)
    right = loop[-1]
    if straight:
        tail = line((right[0] + rng.uniform(-0.04, 0.04), 1.0))
    else:
        tail = bez(right, (right[0] + 0.03, 0.7), (right[0] - 0.1, 1.0), (cx - r * 0.8, 0.95), n=24)
    return [chain(loop, tail)]


STYLES = {
    0: {"oval": lambda r: _zero(r, 0.32), "narrow": lambda r: _zero(r, 0.2),
        "slashed": lambda r: _zero(r, 0.3, slash=True)},
    1: {"stick": lambda r: _one(r), "flag": lambda r: _one(r, flag=r.uniform(0.15, 0.3)),
        "flag_foot": lambda r: _one(r, flag=r.uniform(0.15, 0.3), foot=True)},
    2: {"curved": lambda r: _two(r), "straight": lambda r: _two(r, "straight"),
        "loop": lambda r: _two(r, "loop")},
    3: {"round": lambda r: _three(r), "flat_top": lambda r: _three(r, flat=True)},
    4: {"closed": lambda r: _four(r), "open": lambda r: _four(r, closed=False)},
    5: {"two_strokes": lambda r: _five(r), "one_stroke": lambda r: _five(r, one_stroke=True)},
    6: {"curved": lambda r: _six(r), "straight": lambda r: _six(r, straight=True)},
    7: {"plain": lambda r: _seven(r), "crossbar": lambda r: _seven(r, crossbar=True),
        "hook": lambda r: _seven(r, hook=True)},
    8: {"one_stroke": lambda r: _eight(r), "two_loops": lambda r: _eight(r, one_stroke=False)},
    9: {"curved": lambda r: _nine(r), "straight": lambda r: _nine(r, straight=True)},
}

# brush, height: (low, high) px; tilt: (low, high) |degrees|, either sign; shear: |max|;
# tremor: wobble, in % of the digit's height; where: "centre", "near" (the centre) or "anywhere"
FAMILIES = {
    "plain": dict(brush=(16, 24), height=(220, 300), tilt=(0, 3), shear=0.05, tremor=0.4, where="centre"),
    "mouse": dict(brush=(10, 28), height=(150, 360), tilt=(0, 10), shear=0.15, tremor=1.0, where="near"),
    "thin": dict(brush=(3, 9), height=(150, 360), tilt=(0, 10), shear=0.15, tremor=1.0, where="near"),
    "thick": dict(brush=(30, 60), height=(180, 380), tilt=(0, 10), shear=0.15, tremor=1.0, where="near"),
    "tilted": dict(brush=(10, 28), height=(150, 330), tilt=(10, 22), shear=0.15, tremor=1.0, where="near"),
    "offcentre_small": dict(brush=(6, 20), height=(45, 140), tilt=(0, 10), shear=0.15, tremor=1.0,
                            where="anywhere"),
    "large": dict(brush=(12, 36), height=(370, 435), tilt=(0, 6), shear=0.1, tremor=1.0, where="centre"),
    "font": {},  # not strokes: a font's digit (fonts.py), its style the font's name
}


# --- from a style to a canvas ----------------------------------------------------------------------

def _pose(strokes, rng, fam):
    """Squeeze or stretch, slant (shear) and tilt (rotation) the whole digit, about its centre."""
    angle = np.radians(rng.uniform(*fam["tilt"]) * rng.choice([-1, 1]))
    shear, squeeze = rng.uniform(-fam["shear"], fam["shear"]), rng.uniform(0.85, 1.15)
    c, s = np.cos(angle), np.sin(angle)
    # squeeze and slant first (x' = squeeze*x - shear*y), then rotate
    m = np.array([[c, -s], [s, c]]) @ np.array([[squeeze, -shear], [0, 1]])
    return [(p - 0.5) @ m.T for p in strokes]


def _corners(p):
    """Indices of the points where the stroke turns by more than 40 degrees (a drawer slows there)."""
    d = np.diff(p, axis=0)
    a = np.arctan2(d[:, 1], d[:, 0])
    turn = np.abs((np.diff(a) + np.pi) % (2 * np.pi) - np.pi)
    return 1 + np.flatnonzero(turn > np.radians(40))


def _pointer(p, rng, tremor, spacing):
    """The points a browser would report for stroke p (unit coords): sampled at uneven spacing along
    the stroke (slow at its ends and corners, fast in between), with smooth tremor added."""
    seg = np.linalg.norm(np.diff(p, axis=0), axis=1)
    s = np.concatenate([[0], np.cumsum(seg)])
    length = s[-1]
    if length == 0:
        return p[:1]
    # a speed profile: eases in and out, wavers in between; samples fall at fixed time steps
    grid = np.linspace(0, 1, 200)
    speed = np.sin(np.pi * np.clip(grid, 0.02, 0.98)) ** 0.7
    speed *= 1 + 0.4 * np.sin(2 * np.pi * (rng.uniform(0.5, 2) * grid + rng.uniform()))
    time = np.concatenate([[0], np.cumsum(1 / (speed[1:] + 0.15))])
    steps = max(2, int(length / spacing))
    at = np.interp(np.linspace(0, time[-1], steps + 1), time, grid) * length
    at = np.unique(np.concatenate([at, s[_corners(p)]]))  # corners are always reported
    pts = np.stack([np.interp(at, s, p[:, 0]), np.interp(at, s, p[:, 1])], 1)
    # tremor: a few random sine waves along the stroke, wavelengths 0.1-0.5 of the digit's height
    for _ in range(3):
        wave, phase = rng.uniform(0.1, 0.5), rng.uniform(0, 2 * np.pi, 2)
        amp = tremor * rng.uniform(0.2, 0.6) / 100
        pts += amp * np.sin(2 * np.pi * at[:, None] / wave + phase)
    return pts


def _place(strokes, rng, fam, height, brush):
    """Scale the digit to `height` px and put it on the canvas, wholly inside it."""
    allp = np.concatenate(strokes)
    lo, hi = allp.min(0), allp.max(0)
    scale = height / max(hi[1] - lo[1], 1e-6)
    if (hi[0] - lo[0]) * scale > SIZE - brush - 4:   # a wide, tilted digit must still fit
        scale = (SIZE - brush - 4) / (hi[0] - lo[0])
    size = (hi - lo) * scale
    room = np.maximum(SIZE - size - brush - 4, 0)     # free space around the ink box
    spread = {"centre": 0.1, "near": 0.35, "anywhere": 1.0}[fam["where"]]
    offset = room / 2 + rng.uniform(-0.5, 0.5, 2) * room * spread
    return [(p - lo) * scale + offset + brush / 2 + 2 for p in strokes]


def render(strokes, brush, size=SIZE):
    """Strokes (lists of (x, y) canvas px) as the Sketchpad's composite: opaque white RGBA, black ink,
    round caps and joins, anti-aliased."""
    ink = Image.new("L", (size * SUPER, size * SUPER), 0)
    d = ImageDraw.Draw(ink)
    r = brush * SUPER / 2
    for p in strokes:
        q = [(float(x) * SUPER, float(y) * SUPER) for x, y in p]
        if len(q) > 1:
            d.line(q, fill=255, width=max(1, round(brush * SUPER)))
        for x, y in q:  # a disc at every point: round caps and joins, as a canvas brush has
            d.ellipse((x - r, y - r, x + r, y + r), fill=255)
    white = Image.eval(ink.reduce(SUPER), lambda v: 255 - v)
    return Image.merge("RGBA", (white, white, white, Image.new("L", white.size, 255)))


def digit(digit, rng, family="mouse", style=None):
    """(canvas, style): one drawing of `digit` in `family`'s pose and brush; style at random if None."""
    if family == "font":
        return fonts.typed(digit, rng, style)
    fam = FAMILIES[family]
    style = style or str(rng.choice(sorted(STYLES[digit])))
    strokes = _pose(STYLES[digit][style](rng), rng, fam)
    height = rng.uniform(*fam["height"])
    # a brush over a fifth of the digit's height makes a blob that the drawer would clear and redo
    brush = min(rng.uniform(*fam["brush"]), height / 5)
    spacing = rng.uniform(0.02, 0.07)  # 15-50 reports per digit height: a quick or a slow hand
    strokes = [_pointer(p, rng, fam["tremor"], spacing) for p in strokes]
    # the pen is lifted between strokes: each later stroke lands a little off where it was aimed
    strokes = [p + (rng.normal(0, fam["tremor"] * 0.02, 2) if i else 0) for i, p in enumerate(strokes)]
    return render(_place(strokes, rng, fam, height, brush), brush), style


def _rng(seed, family, i):
    # one generator per drawing: drawing i of a family is the same whatever else is made with it
    return np.random.default_rng([seed, zlib.crc32(family.encode()), i])


def make(out_dir, n, seed=0, families=None):
    """Write n drawings of each family (all of FAMILIES if None) as PNGs, and labels.csv
    (file,label,family,style), into out_dir. Digits cycle 0-9; styles are drawn at random."""
    families = list(families or FAMILIES)
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown families {unknown}; known: {list(FAMILIES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for family in families:
        for i in range(n):
            canvas, style = digit(i % 10, _rng(seed, family, i), family)
            canvas.save(out / f"{family}-{i:05d}.png")
            rows.append([f"{family}-{i:05d}.png", i % 10, family, style])
    labels.write(out, ["file", "label", "family", "style"], rows)
    return out


def contact_sheet(canvases, cols=10, cell=112):
    """One image of many canvases side by side (for looking at what a family draws)."""
    rows = (len(canvases) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * cell, rows * cell), (128, 128, 128))
    for k, c in enumerate(canvases):
        small = c.convert("RGB").resize((cell - 2, cell - 2), Image.LANCZOS)
        sheet.paste(small, ((k % cols) * cell + 1, (k // cols) * cell + 1))
    return sheet
