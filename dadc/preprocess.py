"""Any canvas -> an MNIST-style 28x28 image, the way LeCun et al. built MNIST.

MNIST digits are white ink on black, size-normalised to fit a 20x20 box (aspect kept, anti-aliased),
then placed in a 28x28 field so that their centre of mass sits at the centre. A digit drawn on a
canvas has none of that: any size, anywhere, any colour, on white or on transparent. Resizing the
whole canvas to 28x28 loses most small or off-centre digits (measured: most of them), so we redo LeCun's steps:

  ink map (from alpha, or dark-on-light colour distance)  ->  ink bounding box
  -> crop, resize to fit 20x20 keeping aspect  ->  paste so the centre of mass lands at (14, 14)

Most of the work is done by PIL on 8-bit images (C loops, no float copies of the canvas), so the
app's 448x448 canvas takes about a millisecond, and memory stays bounded on huge canvases: those are
box-reduced to at most MAX_SIDE pixels first (a reduction keeps ink as grey, it never drops a stroke).
Strokes far thicker or thinner than MNIST's are evened out at 4x resolution before the last shrink.
"""
import math

import numpy as np
from PIL import Image, ImageChops, ImageFilter

CANVAS = 448                 # px a side of the app's canvas: big enough for a finger, small enough to send and read fast
MAX_SIDE = 1024              # canvases larger than this are box-reduced first (bounded memory and time)
MAX_INPUT_SIDE = 4096        # larger images are refused before decoding (a 20000x20000 PNG is 400 Mpx)
INK = 40                     # 0-255: ink weaker than this is noise (anti-aliasing, JPEG, paper)
MOSTLY_INK = 0.85            # more ink than this fraction of the canvas is not a digit
HI = 80                      # the digit is fitted at 4x MNIST's 20 px, its stroke evened out, then shrunk

BLANK = "draw a digit"
ALL_INK = "the canvas is covered in ink: clear it and draw one digit"


def to_uint8(x):
    """A 28x28 of floats in [0, 1] (as to_mnist returns and the model reads) as the uint8 pixels the
    store keeps: the one rounding, so 'the same drawing' means the same bytes everywhere."""
    return (np.clip(np.asarray(x, dtype=np.float32), 0, 1) * 255).round().astype(np.uint8)


class CanvasError(ValueError):
    """The canvas holds no single digit to read; the message is meant for the person drawing."""


def check_size(width, height):
    if max(width, height) > MAX_INPUT_SIDE:
        raise CanvasError(f"image too large ({width}x{height}): at most {MAX_INPUT_SIDE} px a side")


def as_image(value):
    """A PIL image from what Gradio or a caller hands us: PIL, numpy (HxW, HxWx3, HxWx4), or None."""
    if value is None or isinstance(value, Image.Image):
        return value
    arr = np.asarray(value)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)) or arr.size == 0:
        raise CanvasError(f"not an image: array of shape {arr.shape}")
    if arr.dtype != np.uint8:  # floats in [0, 1] (as a model sees them) or wider ints
        arr = np.clip(arr * 255 if arr.dtype.kind == "f" and arr.max() <= 1 else arr, 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def _top(img):
    """The value eight_bit maps to 255, or None for an image of 8 bits a channel: 16-bit modes their
    range, 32-bit int images their largest value (at least 255), float images 1 when they lie in
    [0, 1] (else as int)."""
    if img.mode.startswith("I;16"):
        return 65535
    if img.mode in ("I", "F"):
        high = img.getextrema()[1]
        return 1.0 if img.mode == "F" and high <= 1 else max(high, 255)
    return None


def eight_bit(img, top=None):
    """Images with more than 8 bits per channel as 8-bit 'L', scaled so that `top` (default: _top)
    is 255: PIL's own conversion of 16-bit greyscale clips every value above 255 to white (a 16-bit
    PNG would read as blank). Other images are returned as they are."""
    top = _top(img) if top is None else top
    if top is None:
        return img
    arr = np.array(img, dtype=np.float32)  # a copy (an "F" image reads as a read-only view), then in place
    arr *= 255 / top
    np.clip(arr, 0, 255, out=arr)
    np.round(arr, out=arr)
    return Image.fromarray(arr.astype(np.uint8), mode="L")


BAND = 64  # rows of the reduced image made at a time by bounded() (4096 px RGBA: 4 MiB bands)


def bounded(img, side=MAX_SIDE):
    """eight_bit(img) box-reduced to at most `side` px a side (not reduced if it fits), made band
    by band: the same pixels as eight_bit and then one reduce(), without their full-size copies (a
    16-bit image's floats, RGBA's premultiplied copy: 64 MiB each at 4096 px). Modes that cannot be
    averaged as they are (P, PA, 1, CMYK, ...) become RGBA band by band. Bands start on multiples
    of the factor, so every box lies in one band."""
    factor, top = math.ceil(max(img.size) / side), _top(img)
    if factor <= 1:
        return eight_bit(img, top)
    mode = "L" if top is not None else img.mode if img.mode in ("L", "LA", "RGB", "RGBA") else "RGBA"
    width, height = img.size
    out = Image.new(mode, (math.ceil(width / factor), math.ceil(height / factor)))
    for y in range(0, height, BAND * factor):
        band = img.crop((0, y, width, min(y + BAND * factor, height)))
        band = eight_bit(band, top) if top is not None else band
        out.paste(band.convert(mode).reduce(factor), (0, y // factor))
    return out


def pick(value):
    """The image to read from a Sketchpad value {"background", "layers", "composite"}: the composite,
    else the background (an API caller may send only that), else the top layer. None if all empty."""
    if not isinstance(value, dict):
        return as_image(value)
    for key in ("composite", "background"):
        if value.get(key) is not None:
            return as_image(value[key])
    layers = [layer for layer in (value.get("layers") or []) if layer is not None]
    return as_image(layers[-1]) if layers else None


def _ink(img, how):
    """8-bit 'L' ink image (255 = full ink) of an image in mode L/LA/RGB/RGBA: "dark" or "light" ink."""
    bands = img.split()
    color = bands[:1] if img.mode in ("L", "LA") else bands[:3]
    if how == "dark":  # dark on light: distance from white = 255 - min channel (red ink counts)
        low = color[0]
        for band in color[1:]:
            low = ImageChops.darker(low, band)
        return ImageChops.invert(low)
    high = color[0]  # light on dark (MNIST itself): max channel
    for band in color[1:]:
        high = ImageChops.lighter(high, band)
    return high


def _read_ink(img):
    """(ink, how): ink from alpha where the image has transparency (the strokes are what is opaque),
    else dark on light, or light on dark when the border is dark (MNIST itself)."""
    if img.mode in ("LA", "RGBA"):
        alpha = img.getchannel("A")
        if alpha.getextrema()[0] < 255:
            return alpha, "alpha"
    dark = _ink(img, "dark")
    arr = np.asarray(dark)
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
    return (_ink(img, "light"), "light") if np.median(border) > 127 else (dark, "dark")


def _bbox(arr):
    """(left, top, right, bottom) of the pixels >= INK in a uint8 array, or None."""
    rows, cols = np.flatnonzero((arr >= INK).any(1)), np.flatnonzero((arr >= INK).any(0))
    if len(rows) == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _fit(ink, box):
    """Crop to the ink and resize to fit a box x box square, keeping the aspect ratio."""
    digit = ink.crop(_bbox(np.asarray(ink)))
    w, h = digit.size
    scale = box / max(w, h)
    # LANCZOS anti-aliases when shrinking (as MNIST was made) and stays smooth when enlarging
    return digit.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.LANCZOS, reducing_gap=3.0)


def stroke_width(img):
    """Mean stroke width in pixels of an 'L' image: area / half the perimeter of the ink >= 128."""
    m = np.asarray(img) >= 128
    area = m.sum()
    inner = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return 2.0 * area / max(area - inner.sum(), 1)


def _normalise_stroke(hi):
    """Bring a stroke much thicker or thinner than MNIST's back into MNIST's range. At HI px per
    digit, MNIST's strokes are 6.6-15.4 px wide (5th-95th percentile, measured on the test set with
    stroke_width), median ~10. A drawn digit thinner than 6 px is thickened to about 9; one thicker
    than 13 is thinned to about 12: the model reads thick digits worst. Thinning from 13 rather than
    from 16 (the 95th percentile), with the LANCZOS last shrink below, took canvas-drawn accuracy on
    all 10,000 test digits from 98.75 % to 98.99 % (benchmarks/bench_app_canvas_accuracy.py)."""
    width = stroke_width(hi)
    if width > 13:
        steps, filt = round((width - 12) / 2), ImageFilter.MinFilter(3)   # each pass: 1 px off each side
    elif width < 6:
        steps, filt = round((9 - width) / 2), ImageFilter.MaxFilter(3)
    else:
        return hi
    pad = Image.new("L", (hi.size[0] + 2 * steps + 2, hi.size[1] + 2 * steps + 2))
    pad.paste(hi, (steps + 1, steps + 1))
    for _ in range(steps):
        thinner = pad.filter(filt)
        if _bbox(np.asarray(thinner)) is None:  # never erode a digit away
            break
        pad = thinner
    return _fit(pad, HI)


def to_mnist(value):
    """float32 [28, 28] in [0, 1], white digit on black, as MNIST. Raises CanvasError (with a message
    for the person) when there is nothing to read: a blank canvas, or one covered in ink."""
    img = pick(value)
    if img is None:
        raise CanvasError(BLANK)
    check_size(*img.size)
    if max(img.size) > MAX_SIDE:  # bound memory and time: box-reduce before anything else
        img = img.reduce(math.ceil(max(img.size) / MAX_SIDE))
    img = eight_bit(img)
    if img.mode not in ("L", "LA", "RGB", "RGBA"):
        img = img.convert("RGBA")
    ink, how = _read_ink(img)
    arr = np.asarray(ink)
    box = _bbox(arr)
    if box is None:
        # an opaque canvas that is dark all over reads as light on dark with no ink: say what it is
        raise CanvasError(ALL_INK if how == "light" else BLANK)
    if np.count_nonzero(arr >= INK) > MOSTLY_INK * arr.size:
        raise CanvasError(ALL_INK)
    hi = _fit(ink.crop(box), HI)
    hi = hi.point(_STRETCH[hi.getextrema()[1]])  # full-strength ink, whatever the pen or its colour
    hi = _normalise_stroke(hi)
    # LANCZOS rather than a box average: edges as sharp as MNIST's (a box blurs them, costing 0.1 pt)
    small = hi.resize((max(1, round(hi.size[0] * 20 / HI)), max(1, round(hi.size[1] * 20 / HI))), Image.LANCZOS)
    small = np.asarray(small, dtype=np.float32)
    small /= max(small.max(), 1.0)  # the 20x20's darkest pixel is full ink, as in MNIST
    h, w = small.shape
    ys, xs = np.indices(small.shape)
    mass = small.sum()
    cy, cx = (ys * small).sum() / mass, (xs * small).sum() / mass
    # shift the centre of mass to (14, 14), keeping the whole digit inside the field
    top = int(np.clip(round(14 - cy), 0, 28 - h))
    left = int(np.clip(round(14 - cx), 0, 28 - w))
    out = np.zeros((28, 28), dtype=np.float32)
    out[top:top + h, left:left + w] = small
    return out


# lookup tables that scale a peak of p up to 255: _STRETCH[p] (built once, PIL's point() takes them)
_STRETCH = [[min(255, round(v * 255 / max(p, 1))) for v in range(256)] for p in range(256)]


def to_image(x28):
    """The 28x28 as a PIL image (what the model sees), white on black, 8-bit."""
    return Image.fromarray(to_uint8(x28), mode="L")
