"""Digits typed in a font and put on the canvas: visitors who trace or paste a printed digit, and a
family of digits the stroke generator (drawings.py) does not make.

A font's digit is rendered large (FreeType, anti-aliased), sometimes made bolder (a wider pen), then
scaled (45-380 px tall), slanted, tilted and placed on the app's canvas the way
augment.py places an MNIST digit: black ink on opaque white, as the Sketchpad's composite.

Which fonts: TRAINING names the fonts that every machine running the app has, because they come with
the project (the KaTeX fonts in typefaces/, which gradio also ships; Pillow's own Aileron): training uses
only those, so a recipe trains the same everywhere. The "font" family of drawings.py (what
evaluation measures) uses every other font found on the machine (e.g. DejaVu, Liberation under
/usr/share/fonts), fonts no model here was trained on; a machine with none falls back to TRAINING.
A font is kept only if its ten digits are ten different glyphs (KaTeX's Size and Script fonts have
no digits). Left out: KaTeX's math italic, whose digits are old-style (a 3 or 9 hanging below the
line), and its Fraktur, whose 1 reads as a 7.
"""
import functools
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter, ImageFont

from ..preprocess import CANVAS
from .canvas import stamp

TRAINING = ("KaTeX_Main", "KaTeX_SansSerif", "KaTeX_Typewriter", "Aileron")
SKIP = ("KaTeX_Math", "KaTeX_Fraktur")
SYSTEM_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "/Library/Fonts", "C:/Windows/Fonts")
GLYPH = 200  # px: the size digits are rendered at before they are scaled onto the canvas


TYPEFACES = Path(__file__).parent / "typefaces"  # the KaTeX fonts training uses (see its README.md)


def _files():
    yield from sorted(TYPEFACES.glob("*.ttf"))
    for d in SYSTEM_DIRS:
        if Path(d).is_dir():
            yield from sorted(p for p in Path(d).rglob("*") if p.suffix.lower() in (".ttf", ".otf"))


def _glyph(font, digit):
    """The digit in `font`: 'L', white ink on black, cropped to its ink."""
    left, top, right, bottom = font.getbbox(str(digit))
    im = Image.new("L", (right - left + 2, bottom - top + 2), 0)
    ImageDraw.Draw(im).text((1 - left, 1 - top), str(digit), font=font, fill=255)
    return im.crop(im.getbbox())


@functools.cache
def find():
    """{name: font file (None: Pillow's own)} of the usable fonts here, name as "Family-Style"."""
    found = {}
    for path in [None, *_files()]:
        try:
            f = ImageFont.load_default(24) if path is None else ImageFont.truetype(str(path), 24)
        except OSError:  # not a font FreeType reads
            continue
        name = "-".join(f.getname()).replace(" ", "")
        if name not in found and not name.startswith(SKIP) and len({_glyph(f, d).tobytes() for d in range(10)}) == 10:
            found[name] = path
    return found


@functools.cache
def _font(name):
    path = find()[name]
    return ImageFont.load_default(GLYPH) if path is None else ImageFont.truetype(str(path), GLYPH)


def training():
    """Names of the fonts training may use (TRAINING's, found on every machine with the app's dependencies)."""
    return sorted(n for n in find() if n.startswith(TRAINING))


def unseen():
    """Names of the fonts found here that training never uses; TRAINING's if there are none."""
    return sorted(n for n in find() if not n.startswith(TRAINING)) or training()


def typed(digit, rng, name=None, size=CANVAS):
    """(canvas, font name): `digit` in font `name` (one of unseen() at random if None), scaled, slanted,
    tilted and placed on an opaque white RGBA canvas."""
    name = name or str(rng.choice(unseen()))
    if name not in find():
        raise ValueError(f"unknown font {name!r}; found: {', '.join(sorted(find()))}")
    glyph = _glyph(_font(name), digit)
    if rng.random() < 0.4:  # bolder: a pen 3-9 px wider at GLYPH px (~2-6 % of the digit's height)
        glyph = glyph.filter(ImageFilter.MaxFilter(int(rng.choice([3, 5, 7, 9]))))
    side = max(glyph.size) + 8
    src = Image.new("L", (side, side), 0)
    src.paste(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2))
    height = float(rng.uniform(45, 380)) if rng.random() < 0.3 else float(rng.uniform(180, 380))
    shear = float(rng.uniform(-0.2, 0.2)) if rng.random() < 0.3 else 0.0
    white = stamp(src, glyph.height, height, float(rng.uniform(-8, 8)), shear, rng, size)
    return Image.merge("RGBA", (white, white, white, Image.new("L", white.size, 255))), name
