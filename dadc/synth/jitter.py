"""A flagged digit as a small family: the same drawing as the same hand would vary it.

A flag is one drawing; what fooled the model is usually the way it was drawn (a slashed 0, a
tilted 7, a thick stroke), not those exact 784 pixels. So a round learns each human example as a
family: the stored 28x28 redrawn with the jitter a person's hand has from one drawing to the next,
then read back through the app's own preprocessing (preprocess.to_mnist, the path /predict takes):

  elastic warp (a smooth random field at 28x28, Simard et al. 2003)
  -> 4x up (bicubic), brush width by where the grey edge is cut into ink, now and then a pen
     one step wider or narrower (max / min filter)
  -> one affine onto a small canvas: rotation, shear, aspect (squeeze or stretch), scale, position
  -> preprocess.to_mnist: ink box -> 20x20 -> centre of mass -> 28x28, as every drawing the app reads

No flips and rotations of at most ROTATE * strength degrees (15 at strength 1): a 6 stays a 6, a
2 never becomes a 5. Everything is drawn from a numpy Generator seeded by the caller: the same
(examples, seed) give the same family. About 0.8 ms a variant on one core (measured on the shared
2-core development CPU), pure numpy and PIL: a round's ~440 members take under half a second.
"""
import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps

from .. import preprocess
from .augment import elastic

ROTATE = 15.0   # degrees either way at strength 1
SHEAR = 0.3     # slant (x += shear * y) either way at strength 1
ASPECT = 0.15   # width squeezed or stretched by up to this fraction at strength 1
WARP = 1.5      # elastic displacement, px at 28x28, at strength 1
SIDE = 160      # the small canvas a variant is drawn on (to_mnist normalises size and place anyway)


def variant(x28, rng, strength=1.0):
    """One redrawing of a 28x28 (floats in [0, 1], white on black) with a hand's jitter, as the app
    would read it: a float32 28x28."""
    a = elastic(np.asarray(x28, dtype=np.float32), rng, rng.uniform(0, WARP * strength))
    src = Image.fromarray((np.clip(a, 0, 1) * 255).astype(np.uint8), mode="L").resize((112, 112), Image.BICUBIC)
    cut = rng.uniform(60, 170)  # where the grey edge becomes ink: a thinner or thicker brush
    src = src.point(lambda v: 0 if v < cut else min(255, int((v - cut) * 4 + 64)))
    pen = rng.random()
    if pen < 0.2 * strength:      # a wider pen
        src = src.filter(ImageFilter.MaxFilter(5))
    elif pen > 1 - 0.1 * strength:  # a narrower one (rarely: a thin stroke may break)
        src = src.filter(ImageFilter.MinFilter(3))
    return preprocess.to_mnist(ImageOps.invert(_pose(src, rng, strength)))


def _pose(src, rng, strength):
    """src (112x112, white ink on black) rotated, slanted, squeezed, scaled and moved onto a
    SIDE x SIDE canvas (white on black), the ink kept inside it."""
    angle = np.radians(rng.uniform(-ROTATE, ROTATE) * strength)
    shear = rng.uniform(-SHEAR, SHEAR) * strength
    aspect = 1 + rng.uniform(-ASPECT, ASPECT) * strength
    scale = rng.uniform(0.8, 1.2)
    c, s = np.cos(angle), np.sin(angle)
    fwd = scale * np.array([[c, -s], [s, c]]) @ np.array([[aspect, shear], [0, 1]])
    # 112 px of the 4x image hold the 28x28; rotated and slanted it needs at most ~1.6x that:
    # shrink to fit the canvas, then place it with what room is left
    fwd *= min(1.0, (SIDE - 4) / (112 * np.abs(fwd).sum(1).max()))
    room = max(0.0, (SIDE - 4 - 112 * np.abs(fwd).sum(1).max()) / 2)
    centre = SIDE / 2 + rng.uniform(-room, room, 2)
    inv = np.linalg.inv(fwd)
    off = 56 - inv @ centre
    return src.transform((SIDE, SIDE), Image.AFFINE, (inv[0, 0], inv[0, 1], off[0], inv[1, 0], inv[1, 1], off[1]),
                         resample=Image.BILINEAR, fillcolor=0)


def family(x28, n, rng, strength=1.0):
    """n variants of one 28x28: the first is the drawing itself, as stored, the rest jittered. A
    variant the preprocessing cannot read (its ink lost) is the drawing itself again."""
    out = [np.asarray(x28, dtype=np.float32)]
    for _ in range(n - 1):
        try:
            out.append(variant(x28, rng, strength))
        except preprocess.CanvasError:
            out.append(out[0])
    return np.stack(out[:n])


def families(x, y, n, seed, strength=1.0):
    """Every example of (x [N,1,28,28] float, y [N]) as a family of n (family() above), in order:
    (x [N*n,1,28,28], y [N*n]). Example i's family depends only on (seed, i) and its pixels."""
    if n < 1:
        raise ValueError(f"a family has at least 1 member, got {n}")
    if len(x) == 0:
        return x, y
    xs = [family(x[i, 0].numpy(), n, np.random.default_rng([seed, 0x4A17, i]), strength) for i in range(len(x))]
    return torch.from_numpy(np.concatenate(xs))[:, None], y.repeat_interleave(n)
