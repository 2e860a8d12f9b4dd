"""Training examples as the app sees them: MNIST digits drawn onto the 448x448 canvas and read back
through the app's own preprocessing (dadc.preprocess.to_mnist, the path /predict takes).

MNIST is pen on paper, size-normalised and centred by LeCun et al.; a visitor's digit is a brush
stroke of any width, tilted, slanted, anywhere and any size on the canvas, and what the model gets
is preprocess.to_mnist's reading of it. to_canvas() makes such a canvas from an MNIST digit:

  elastic distortion (a smooth random displacement field, Simard et al. 2003), at 28x28
  -> 4x up (bicubic), brush width by where the grey edge is cut (low cut: thick, high: thin), and
     now and then a wider pen (max filter)
  -> one affine onto the canvas: scale (the digit 45-420 px tall), rotation, shear, position
  -> black ink on white, as the Sketchpad's composite

pool() renders n of them once (and, optionally, drawings.py's mouse-drawn and font digits) into a tensor
pool that training.train samples a fraction of each batch from: about 10 ms an image on one core
(measured on the shared 2-core development CPU), paid once before training, nothing per batch. Pure numpy and PIL (no scipy), as the app's runtime.
"""
import math

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps

from .. import preprocess
from ..preprocess import CANVAS
from .canvas import stamp

def elastic(a, rng, strength):
    """a (28x28 float) warped by a smooth random field of up to ~`strength` px (bilinear sampling)."""
    if strength <= 0:
        return a
    field = [np.asarray(Image.fromarray(rng.normal(0, 1, (5, 5)).astype(np.float32), mode="F")
                        .resize((28, 28), Image.BICUBIC)) * strength for _ in range(2)]
    ys, xs = np.indices(a.shape, dtype=np.float32)
    sy, sx = np.clip(ys + field[0], 0, 27), np.clip(xs + field[1], 0, 27)
    y0, x0 = np.floor(sy).astype(int), np.floor(sx).astype(int)
    y1, x1 = np.minimum(y0 + 1, 27), np.minimum(x0 + 1, 27)
    fy, fx = sy - y0, sx - x0
    return ((a[y0, x0] * (1 - fx) + a[y0, x1] * fx) * (1 - fy) + (a[y1, x0] * (1 - fx) + a[y1, x1] * fx) * fy)


def to_canvas(x28, rng, size=CANVAS):
    """An MNIST digit (28x28 floats in [0,1], white on black) drawn on a size x size canvas ('L',
    black ink on white) with a random brush, elastic warp, rotation, shear, scale and position."""
    a = elastic(np.asarray(x28, dtype=np.float32), rng, rng.uniform(0, 1.5))
    src = Image.fromarray((np.clip(a, 0, 1) * 255).astype(np.uint8), mode="L").resize((112, 112), Image.BICUBIC)
    cut = rng.uniform(40, 190)  # where the grey edge becomes ink: the brush width
    src = src.point(lambda v: 0 if v < cut else min(255, int((v - cut) * 4 + 64)))
    if rng.random() < 0.25:  # a wide pen
        src = src.filter(ImageFilter.MaxFilter(int(rng.choice([3, 5]))))
    # MNIST's digit is 20 of its 28 px tall: 80 px at 112
    height = math.exp(rng.uniform(math.log(45), math.log(420)))
    return stamp(src, 80, height, rng.uniform(-15, 15), rng.uniform(-0.3, 0.3), rng, size)


def large(x28, size=CANVAS):
    """An MNIST digit drawn large on the canvas, as a visitor copying it would: its 28x28 image 14x
    up (bicubic, 392 px, the digit ~280 px tall), centred, black ink on white ('L')."""
    up = Image.fromarray((np.clip(np.asarray(x28, dtype=np.float32), 0, 1) * 255).astype(np.uint8), mode="L")
    canvas = Image.new("L", (size, size), 0)
    canvas.paste(up.resize((392, 392), Image.BICUBIC), ((size - 392) // 2, (size - 392) // 2))
    return ImageOps.invert(canvas)


def pool(x, y, n, drawings_per_family=0, seed=0):
    """(x, y) tensors: n random MNIST digits of (x, y) through to_canvas and preprocess.to_mnist, plus
    drawings_per_family drawings.py digits of each family (digits cycling 0-9, styles at random)
    through to_mnist. Seeded; canvases the preprocessing refuses (an empty crop) are left out."""
    rng = np.random.default_rng([seed, 14])
    idx = rng.choice(len(x), size=min(n, len(x)), replace=False) if n else np.array([], dtype=int)
    xs, ys = [], []
    for i in idx:
        try:
            xs.append(preprocess.to_mnist(to_canvas(x[i, 0].numpy(), rng)))
        except preprocess.CanvasError:
            continue
        ys.append(int(y[i]))
    if drawings_per_family:
        from . import drawings
        from . import fonts

        for f, family in enumerate(drawings.FAMILIES):
            for i in range(drawings_per_family):
                # its own streams: never the drawings that drawings.make(dir, n, seed) writes for evaluation
                r = np.random.default_rng([seed, 14, f, i])
                # font digits only in the fonts every machine has (never the held-out ones evaluation uses)
                style = str(r.choice(fonts.training())) if family == "font" else None
                canvas, _ = drawings.digit(i % 10, r, family, style)
                try:
                    xs.append(preprocess.to_mnist(canvas))
                except preprocess.CanvasError:
                    continue
                ys.append(i % 10)
    if not xs:
        raise ValueError("the augmentation pool is empty")
    return torch.from_numpy(np.stack(xs))[:, None], torch.tensor(ys, dtype=torch.long)
