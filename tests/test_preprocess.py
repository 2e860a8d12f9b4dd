"""Any canvas -> MNIST-style 28x28: every canvas format, size, position, stroke; blank and bad input."""
import numpy as np
import pytest
from PIL import Image, ImageDraw

from dadc import preprocess
from dadc.preprocess import ALL_INK, BLANK, CanvasError, to_mnist
from dadc.synth.canvas import paste_mnist as draw


def seven(size=(448, 448), box=(100, 80, 300, 380), width=36, fmt="RGBA", color=(0, 0, 0)):
    """A hand-drawn-looking 7 in the box, on a canvas of the given format."""
    mask = Image.new("L", size, 0)
    d = ImageDraw.Draw(mask)
    x0, y0, x1, y1 = box
    d.line([(x0, y0), (x1, y0), (x0 + (x1 - x0) // 3, y1)], fill=255, width=width, joint="curve")
    if fmt == "layer":
        img = Image.new("RGBA", size, tuple(color) + (0,))
        img.putalpha(mask)
        return img
    out = Image.composite(Image.new("RGB", size, tuple(color)), Image.new("RGB", size, "white"), mask)
    return {"RGBA": out.convert("RGBA"), "RGB": out, "L": out.convert("L")}[fmt]


def similar(a, b):
    """Correlation of the two images blurred a little: a thin stroke one pixel over is still alike."""
    def blur(x):
        p = np.pad(x, 1)
        return sum(p[i:i + 28, j:j + 28] for i in range(3) for j in range(3))
    return np.corrcoef(blur(a).ravel(), blur(b).ravel())[0, 1]


def centre_of_mass(x):
    ys, xs = np.indices(x.shape)
    return (ys * x).sum() / x.sum(), (xs * x).sum() / x.sum()


def ink_box(x):
    ys, xs = np.nonzero(x > 0.05)
    return ys.max() - ys.min() + 1, xs.max() - xs.min() + 1


@pytest.mark.parametrize("fmt", ["RGBA", "layer", "RGB", "L"])
def test_every_format_gives_an_mnist_style_digit(fmt):
    x = to_mnist(seven(fmt=fmt, color=(200, 30, 30) if fmt in ("RGB", "layer") else (0, 0, 0)))
    assert x.shape == (28, 28) and x.dtype == np.float32
    assert x.max() == pytest.approx(1.0) and x.min() == 0.0        # white digit on black, full ink
    cy, cx = centre_of_mass(x)
    assert abs(cy - 14) <= 0.6 and abs(cx - 14) <= 0.6               # centred by centre of mass
    h, w = ink_box(x)
    assert max(h, w) in (20, 21) and h > w                           # fits 20x20, aspect kept (tall 7)
    assert x[:, :3].sum() == 0 and x[:, -3:].sum() == 0              # a narrow 7 keeps side margins


def test_formats_agree_with_each_other():
    ref = to_mnist(seven(fmt="RGBA"))
    for fmt, color in (("layer", (0, 0, 0)), ("layer", (250, 220, 0)), ("RGB", (30, 30, 220)), ("L", (0, 0, 0))):
        x = to_mnist(seven(fmt=fmt, color=color))
        assert np.abs(x - ref).mean() < 0.02, (fmt, color)


def test_position_and_size_do_not_matter():
    ref = to_mnist(seven())
    small_corner = to_mnist(seven(size=(1000, 700), box=(850, 20, 900, 95), width=9))
    # centring is to the nearest pixel (as MNIST's): the same digit drawn twice may land one pixel apart
    shifts = [np.roll(small_corner, (dy, dx), (0, 1)) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    assert max(similar(x, ref) for x in shifts) > 0.95


def test_numpy_canvases_and_the_sketchpad_value_shapes():
    img = seven()
    ref = to_mnist(img)
    arr = np.asarray(img)
    for value in (arr, arr[..., :3], arr[..., 0], arr.astype(np.float32) / 255,
                  {"background": None, "layers": [], "composite": img},
                  {"background": img, "layers": [], "composite": None},        # API: background only
                  {"background": None, "layers": [seven(fmt="layer")], "composite": None}):
        assert np.abs(to_mnist(value) - ref).mean() < 0.02


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_wide_greyscale_images_are_scaled_not_clipped(mode):
    """PIL's own conversion of a 16-bit greyscale image clips it to white (blank); we scale it."""
    ref = to_mnist(seven(fmt="L"))
    grey = np.asarray(seven(fmt="L"), dtype=np.float32)
    wide = {"I;16": grey * 257, "I": grey * 257, "F": grey / 255}[mode]
    img = Image.fromarray(wide.astype(np.uint16 if mode == "I;16" else np.int32 if mode == "I" else np.float32))
    assert img.mode == mode
    assert np.abs(to_mnist(img) - ref).max() < 0.02


def test_mnist_itself_light_on_dark_comes_back_as_it_was():
    digit = np.asarray(to_mnist(seven())) * 255
    again = to_mnist(digit.astype(np.uint8))
    assert similar(again, digit / 255) > 0.95


def test_thick_and_thin_strokes_are_brought_into_mnist_range():
    def width(x):
        return preprocess.stroke_width(Image.fromarray((x * 255).astype(np.uint8)).resize((112, 112)))
    # MNIST's strokes at this scale: 6.6-15.4 px (5th-95th percentile of the test set)
    assert 6 <= width(to_mnist(seven(width=90))) <= 16      # a felt-tip pen on a small digit
    assert 6 <= width(to_mnist(seven(width=2))) <= 16       # a hairline on a big one
    # without the normalisation the thick one would be far outside
    plain = preprocess._normalise_stroke
    try:
        preprocess._normalise_stroke = lambda hi: hi
        assert width(to_mnist(seven(width=90))) > 16
    finally:
        preprocess._normalise_stroke = plain


@pytest.mark.parametrize("value", [
    None,
    {"background": None, "layers": [], "composite": None},                  # untouched or cleared Sketchpad
    {"background": None, "layers": [None], "composite": None},
    Image.new("RGBA", (448, 448), "white"),
    Image.new("RGBA", (448, 448), (0, 0, 0, 0)),                             # transparent, nothing drawn
    Image.new("RGB", (448, 448), (250, 250, 250)),                           # off-white paper
    Image.new("L", (300, 300), 255),
])
def test_blank_canvas_says_draw_a_digit(value):
    with pytest.raises(CanvasError, match=BLANK):
        to_mnist(value)


@pytest.mark.parametrize("value", [
    Image.new("RGBA", (448, 448), (0, 0, 0, 255)),
    Image.new("RGB", (448, 448), (0, 0, 120)),
    Image.new("L", (448, 448), 0),
])
def test_all_ink_canvas_gets_a_clear_message(value):
    with pytest.raises(CanvasError, match="covered in ink"):
        to_mnist(value)
    assert ALL_INK.startswith("the canvas is covered in ink")


def test_huge_canvas_is_read_with_bounded_work():
    big = Image.new("L", (4096, 4096), 255)  # the largest accepted (check_size)
    big.paste(seven(fmt="L").resize((1700, 1700)), (2300, 2100))
    x = to_mnist(big)
    assert abs(centre_of_mass(x)[0] - 14) <= 0.6 and x.max() == pytest.approx(1.0)
    assert similar(x, to_mnist(seven())) > 0.9


def test_too_large_image_is_refused_before_decoding():
    with pytest.raises(CanvasError, match="too large"):
        preprocess.check_size(20000, 20000)
    with pytest.raises(CanvasError, match="4096 px a side"):
        preprocess.check_size(4097, 10)
    preprocess.check_size(4096, 4096)


def test_not_an_image():
    with pytest.raises(CanvasError, match="not an image"):
        to_mnist(np.zeros((4, 4, 7), np.uint8))


def test_mnist_digits_drawn_on_canvases_come_back_like_mnist():
    """An MNIST digit placed, scaled and thickened on a canvas of any format maps back close to the
    original (itself re-centred the same way: MNIST's own digits are centred within a pixel)."""
    rng = np.random.default_rng(0)
    digit = (to_mnist(seven()) * 255).astype(np.uint8)
    for fmt in ("RGBA", "layer", "RGB", "L"):
        for height, thicken in ((40, 0), (300, 6), (600, 30)):
            canvas = draw(digit, size=(900, 800), height=height, thicken=thicken, fmt=fmt, rng=rng)
            x = to_mnist(canvas)
            assert similar(x, digit / 255) > 0.85, (fmt, height, thicken)
