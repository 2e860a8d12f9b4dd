"""Font digits (dadc.fonts, the "font" family of dadc.drawings): found on every machine with the app's
dependencies, drawn as Sketchpad canvases, held out of training, read by the shipped model."""
import numpy as np
import pytest
import torch

from dadc.synth import augment
from dadc.model import checkpoint
from dadc.synth import drawings
from dadc.model import evaluate
from dadc.synth import fonts
from dadc import preprocess
from test_cli import ROUND0


def test_the_training_fonts_come_with_the_apps_dependencies():
    names = fonts.training()
    # gradio ships KaTeX's fonts, Pillow its Aileron: every machine that runs the app has these
    assert {"Aileron-Regular", "KaTeX_Main-Regular", "KaTeX_SansSerif-Bold", "KaTeX_Typewriter-Regular"} <= set(names)
    assert not any(n.startswith(fonts.SKIP) for n in fonts.find()), "old-style and Fraktur digits are left out"
    held = fonts.unseen()
    others = [n for n in fonts.find() if n not in names]
    assert held == sorted(others) if others else held == names


@pytest.mark.parametrize("which", ["training", "unseen"])
def test_every_digit_in_every_font_is_a_sketchpad_canvas_inside_the_canvas(which):
    rng = np.random.default_rng(5)
    for name in getattr(fonts, which)():
        for digit in range(10):
            canvas, got = drawings.digit(digit, rng, "font", name)
            assert got == name and canvas.mode == "RGBA" and canvas.size == (448, 448)
            rgba = np.asarray(canvas)
            assert (rgba[..., 3] == 255).all() and (rgba[..., 0] == rgba[..., 2]).all()
            grey = rgba[..., 0]
            assert grey.min() < 64 and 0 < (grey < 128).mean() < 0.5, f"{name} {digit}: no digit, or a blob"
            border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
            assert (border > 200).all(), f"{name} {digit}: the digit runs off the canvas"
            assert preprocess.to_mnist(canvas).max() > 0.9


def test_font_drawings_are_deterministic_and_unknown_fonts_are_refused():
    a, name = drawings.digit(3, np.random.default_rng(9), "font")
    b, again = drawings.digit(3, np.random.default_rng(9), "font")
    assert name == again and name in fonts.unseen() and a.tobytes() == b.tobytes()
    with pytest.raises(ValueError, match="unknown font"):
        fonts.typed(3, np.random.default_rng(0), "NoSuchFont-Regular")


def test_the_augmentation_pool_draws_fonts_only_from_the_training_fonts(monkeypatch):
    used, real = [], drawings.digit

    def spy(digit, rng, family="mouse", style=None):
        canvas, style = real(digit, rng, family, style)
        used.append((family, style))
        return canvas, style
    monkeypatch.setattr(drawings, "digit", spy)
    x, y = augment.pool(torch.zeros(1, 1, 28, 28), torch.zeros(1, dtype=torch.long), 0, drawings_per_family=20)
    font_styles = {s for f, s in used if f == "font"}
    assert len(font_styles) > 5 and font_styles <= set(fonts.training())
    assert len(x) == len(y) == 20 * len(drawings.FAMILIES)


def test_the_shipped_model_reads_font_digits(tmp_path):
    torch.set_num_threads(1)
    model, _, _ = checkpoint.load(ROUND0)
    drawings.make(tmp_path, 60, seed=77, families=["font"])
    res = evaluate.accuracy_by_family(evaluate.predictor(model), tmp_path)
    assert res["by_family"]["font"]["n"] == 60
    assert res["by_family"]["font"]["acc"] >= 0.95, res["by_style"]  # 200 of 200 at seed 31337
