import pytest
import torch

from dadc.evaluate import accuracy
from dadc.training import TrainConfig, mix_human, one_cycle, train
from synth import digits, tiny_net


def fresh(seed=0):
    torch.manual_seed(seed)
    return tiny_net()


def weights(model):
    return torch.cat([p.detach().flatten() for p in model.state_dict().values()])


def test_fraction_zero_is_normal_training():
    x, y = digits(400)
    normal, zero = fresh(), fresh()
    train(normal, x, y, TrainConfig(epochs=1, attack="none"), progress=False)
    history = train(zero, x, y, TrainConfig(epochs=1, attack="pgd", fraction=0.0), progress=False)
    assert torch.equal(weights(normal), weights(zero))
    assert "adv_loss" not in history[0]


def test_same_seed_same_model_other_seed_other_model():
    x, y = digits(300)
    cfg = TrainConfig(epochs=1, steps=2, fraction=0.5)
    a, b, c = fresh(), fresh(), fresh()
    train(a, x, y, cfg, progress=False)
    train(b, x, y, cfg, progress=False)
    train(c, x, y, TrainConfig(epochs=1, steps=2, fraction=0.5, seed=1), progress=False)
    assert torch.equal(weights(a), weights(b))
    assert not torch.equal(weights(a), weights(c))


def test_clean_and_adversarial_monitored_separately():
    x, y = digits(500)
    history = train(fresh(), x, y, TrainConfig(epochs=2, fraction=0.5, steps=3, eps=0.2), progress=False)
    last = history[-1]
    assert {"clean_loss", "clean_err", "adv_loss", "adv_err", "samples_per_s"} <= set(last)
    assert last["adv_loss"] > last["clean_loss"]  # the adversarial half is harder
    only_adv = train(fresh(), x, y, TrainConfig(epochs=1, fraction=1.0, steps=2), progress=False)
    assert "clean_loss" not in only_adv[0] and "adv_loss" in only_adv[0]


def test_adversarial_training_makes_the_net_more_robust():
    from dadc.evaluate import robust_accuracy

    x, y = digits(2000, seed=1)
    xt, yt = digits(300, seed=2)
    normal, robust = fresh(), fresh()
    train(normal, x, y, TrainConfig(epochs=2, attack="none", lr=1e-2), progress=False)
    train(robust, x, y, TrainConfig(epochs=2, attack="pgd", eps=0.15, steps=5, lr=1e-2), progress=False)
    r_normal = robust_accuracy(normal, xt, yt, eps=0.15, steps=10)
    r_robust = robust_accuracy(robust, xt, yt, eps=0.15, steps=10)
    assert r_robust > r_normal + 0.3, (r_normal, r_robust)


def test_human_examples_are_learned_with_weight_or_repeat():
    """A few unusual human examples are only fitted when mixed in strongly."""
    x, y = digits(1000, seed=1)
    hx, hy = digits(20, seed=3)
    hx, hy = hx.flip(2), (hy + 1) % 10  # drawn upside down, with labels the plain data does not suggest
    base = fresh()
    train(base, x, y, TrainConfig(epochs=2, attack="none", lr=1e-2), progress=False)
    mixed = fresh()
    train(mixed, x, y, TrainConfig(epochs=2, attack="none", lr=1e-2, human_repeat=20), human=(hx, hy), progress=False)
    weighted = fresh()
    train(weighted, x, y, TrainConfig(epochs=2, attack="none", lr=1e-2, human_weight=50.0), human=(hx, hy),
          progress=False)
    assert accuracy(base, hx, hy) < 0.3
    assert accuracy(mixed, hx, hy) > 0.8
    assert accuracy(weighted, hx, hy) > 0.8


def test_mix_human_shapes_and_bad_sets():
    x, y = digits(10)
    hx, hy = digits(3)
    mx, my, w = mix_human(x, y, (hx, hy), weight=2.0, repeat=2)
    assert mx.shape == (16, 1, 28, 28) and my.shape == (16,)
    assert w.tolist() == [1.0] * 10 + [2.0] * 6
    with pytest.raises(ValueError, match="empty"):
        mix_human(x, y, (hx[:0], hy[:0]))
    with pytest.raises(ValueError, match="28"):
        mix_human(x, y, (torch.zeros(3, 1, 20, 20), hy))


@pytest.mark.parametrize("bad", [dict(fraction=1.5), dict(fraction=-0.1), dict(eps=-0.1), dict(attack="cw"),
                                 dict(epochs=0), dict(human_repeat=0)])
def test_bad_config_is_refused(bad):
    with pytest.raises(ValueError):
        TrainConfig(**bad).check()


def test_one_cycle_schedule():
    assert one_cycle(0, 100, 1.0, 0.4) == 0
    assert one_cycle(40, 100, 1.0, 0.4) == pytest.approx(1.0)
    assert one_cycle(70, 100, 1.0, 0.4) == pytest.approx(0.5)
    assert one_cycle(100, 100, 1.0, 0.4) == pytest.approx(0.0)


def test_callback_reports_progress():
    x, y = digits(200)
    seen = []
    train(fresh(), x, y, TrainConfig(epochs=60, attack="none", batch_size=100), progress=False,
          callback=lambda done, total, metrics: seen.append((done, total)))
    assert seen[0] == (50, 120) and seen[-1] == (120, 120)
