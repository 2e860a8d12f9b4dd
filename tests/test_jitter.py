"""A flag as a small family (synth/jitter.py, rounds/retrain.human_families): the drawing itself
first, then redrawings with a hand's jitter that keep the label and stay an MNIST-style 28x28;
deterministic per seed; the family size spends the round's human share over its examples."""
from pathlib import Path

import numpy as np
import pytest
import torch

from dadc.config import RoundConfig
from dadc.model import checkpoint
from dadc.rounds.retrain import family_size, human_families
from dadc.synth import jitter
from test_rounds import CACHE

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits():
    """100 MNIST test digits (ten of each), as the model reads them."""
    from dadc.model import mnist

    if not CACHE.exists():
        pytest.skip("real MNIST not cached: run `python -m dadc data` first")
    x, y = mnist.tensors(mnist.fetch(CACHE.parents[1], log=lambda m: None), "test")
    idx = torch.cat([(y == d).nonzero()[:10, 0] for d in range(10)])
    return x[idx], y[idx]


def test_a_family_is_the_drawing_then_variants_in_order_deterministic_per_seed(digits):
    x, y = digits[0][:6], digits[1][:6]
    fx, fy = jitter.families(x, y, 4, seed=3)
    assert fx.shape == (24, 1, 28, 28) and fx.dtype == torch.float32
    assert fy.tolist() == [v for v in y.tolist() for _ in range(4)]  # labels never change
    assert torch.equal(fx[::4], x)  # the first member is the drawing as stored
    assert not torch.equal(fx[1], fx[0]) and not torch.equal(fx[1], fx[2])  # the others are jittered
    assert torch.equal(fx, jitter.families(x, y, 4, seed=3)[0])  # the same seed, the same family
    assert not torch.equal(fx, jitter.families(x, y, 4, seed=4)[0])  # another round, other variants
    # example i's family depends on (seed, i) and its pixels, not on the others in the batch
    assert torch.equal(jitter.families(x[:2], y[:2], 4, seed=3)[0], fx[:8])
    assert jitter.families(x[:0], y[:0], 4, seed=3)[0].shape == (0, 1, 28, 28)
    with pytest.raises(ValueError):
        jitter.families(x, y, 0, seed=3)


def test_variants_stay_mnist_style_inside_the_28x28(digits):
    rng = np.random.default_rng(0)
    for x in digits[0][:40, 0].numpy():
        v = jitter.variant(x, rng, strength=1.5)
        assert v.shape == (28, 28) and v.min() >= 0 and abs(v.max() - 1) < 1e-6
        rows, cols = np.nonzero(v > 0.05)
        # preprocess.to_mnist's frame: the ink fits a 20x20 box (+1 for resampling) inside the field
        assert rows.max() - rows.min() < 22 and cols.max() - cols.min() < 22
        assert v[0].max() < 0.05 and v[-1].max() < 0.05 and v[:, 0].max() < 0.05 and v[:, -1].max() < 0.05


def test_jitter_keeps_the_label_the_shipped_round_reads_the_variants(digits):
    model = checkpoint.load(ROOT / "models" / "round-000")[0].eval()
    x, y = digits
    fx, fy = jitter.families(x, y, 4, seed=0, strength=1.0)
    with torch.no_grad():
        jittered = (model(fx).argmax(1) == fy).view(-1, 4)[:, 1:].float()
    # no flips and small turns: MNIST digits stay readable (measured about 96 % at strength 1)
    assert jittered.mean() >= 0.9, jittered.mean()
    assert all(jittered[fy.view(-1, 4)[:, 0] == d].mean() >= 0.7 for d in range(10))


def test_family_size_spends_the_human_share_over_the_examples():
    cfg = RoundConfig(mnist_n=8000, human_share=0.1, family_max=32)
    assert family_size(10, cfg) == 32             # few flags: big families (capped)
    assert family_size(50, cfg) == 18             # 8000 / 9 = 889 members over 50 examples
    assert family_size(400, cfg) == 2
    assert family_size(100000, cfg) == 1          # never fewer than the drawing itself
    assert family_size(10, RoundConfig(human_share=0.0)) == 1
    with pytest.raises(ValueError):
        family_size(10, RoundConfig(human_share=1.0))
    x, y = torch.rand(3, 1, 28, 28), torch.tensor([1, 2, 3])
    hx, hy = human_families(x, y, RoundConfig(mnist_n=90, human_share=0.1, family_max=32), seed=1)
    assert len(hx) == 3 * 3 and hy.tolist() == [1, 1, 1, 2, 2, 2, 3, 3, 3]
