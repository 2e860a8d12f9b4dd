"""Digits put on a canvas the size of the app's (preprocess.CANVAS): the placing that augment.py,
fonts.py and drawings.py share (stamp), and MNIST digits pasted on canvases of any size and format
(paste_mnist, random_canvas) for tests, benchmarks and `simulate --mnist-canvases`."""
import math

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from ..preprocess import CANVAS


def stamp(src, box_height, height, angle, shear, rng, size=CANVAS):
    """src ('L', white ink on black, its ink `box_height` px tall) scaled to `height` px, slanted by
    `shear`, rotated by `angle` degrees, at a random place on a size x size canvas where all of its ink
    fits (smaller if it would not fit at all): black ink on white ('L')."""
    a = math.radians(angle)
    c, si = math.cos(a), math.sin(a)
    fwd = height / box_height * np.array([[c, -si], [si, c]]) @ np.array([[1, shear], [0, 1]])
    left, top, right, bottom = src.getbbox() or (0, 0, *src.size)
    corners = np.array([[left, top], [right, top], [left, bottom], [right, bottom]]) - np.array(src.size) / 2
    ink = corners @ fwd.T  # where the ink's corners land, around the centre
    lo, hi = ink.min(0), ink.max(0)
    fit = min(1.0, (size - 8) / max((hi - lo).max(), 1e-6))
    fwd, lo, hi = fwd * fit, lo * fit, hi * fit
    centre = rng.uniform(4 - lo, np.maximum(size - 4 - hi, 4 - lo))
    inv = np.linalg.inv(fwd)
    off = np.array(src.size) / 2 - inv @ centre
    out = src.transform((size, size), Image.AFFINE, (inv[0, 0], inv[0, 1], off[0], inv[1, 0], inv[1, 1], off[1]),
                        resample=Image.BILINEAR, fillcolor=0)
    return ImageOps.invert(out)


def paste_mnist(digit28, size=(CANVAS, CANVAS), height=300, thicken=0, fmt="RGBA", at=None, color=(0, 0, 0), rng=None):
    """An MNIST digit (uint8 28x28, white on black) as a person might have drawn it on a canvas:
    `height` pixels tall at `at` (top-left; random if None), stroke thickened by `thicken` pixels,
    in one of the formats a canvas comes in:
      "RGBA"  opaque white with dark ink (the Sketchpad's composite)
      "layer" transparent, the strokes opaque in `color` (a Sketchpad layer)
      "RGB"   white with ink in `color`;  "L" grey, dark on light."""
    rng = rng if rng is not None else np.random.default_rng(0)
    im = Image.fromarray(np.asarray(digit28, dtype=np.uint8))
    im = im.crop(im.point(lambda v: 255 if v > 40 else 0).getbbox())
    scale = height / im.size[1]
    im = im.resize((max(1, round(im.size[0] * scale)), max(1, height)), Image.BILINEAR)
    if thicken > 1:  # a pen `thicken` px wider: 3x3 max passes on a padded copy (PIL's big rank filters are slow)
        pad = Image.new("L", (im.size[0] + thicken, im.size[1] + thicken))
        pad.paste(im, (thicken // 2, thicken // 2))
        for _ in range(thicken // 2):
            pad = pad.filter(ImageFilter.MaxFilter(3))
        im = pad
    w, h = size
    if at is None:
        at = (int(rng.integers(0, max(1, w - im.size[0]))), int(rng.integers(0, max(1, h - im.size[1]))))
    alpha = Image.new("L", size, 0)
    alpha.paste(im, at)
    if fmt == "layer":
        layer = Image.new("RGBA", size, tuple(color) + (0,))
        layer.putalpha(alpha)
        return layer
    ink = Image.new("RGB", size, tuple(color))
    out = Image.composite(ink, Image.new("RGB", size, (255, 255, 255)), alpha)
    if fmt == "RGBA":
        return out.convert("RGBA")
    if fmt == "RGB":
        return out
    if fmt == "L":
        return out.convert("L")
    raise ValueError(f"unknown canvas format {fmt!r}")


def random_canvas(digit28, rng, fmt=None):
    """One canvas with a random format, size, digit height, position, stroke and ink colour."""
    fmt = fmt or ["RGBA", "layer", "RGB", "L"][int(rng.integers(4))]
    size = (int(rng.integers(200, 1200)), int(rng.integers(200, 1200)))
    ys, xs = np.nonzero(np.asarray(digit28) > 40)
    aspect = (xs.max() - xs.min() + 1) / (ys.max() - ys.min() + 1)
    height = int(rng.integers(28, int(0.9 * min(size[1], size[0] / aspect)) + 1))  # the whole digit fits
    thicken = int(height * rng.uniform(0, 0.08))
    color = (0, 0, 0) if fmt in ("RGBA", "L") else tuple(int(v) for v in rng.integers(0, 160, 3))
    return paste_mnist(digit28, size, height, thicken, fmt, color=color, rng=rng)
