import pytest
import torch

from dadc.model.evaluate import accuracy
from dadc.model.training import TrainConfig, mix_human, one_cycle, train
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
    from dadc.model.evaluate import robust_accuracy

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
                                 dict(epochs=0), dict(human_repeat=0), dict(loss="mart"),
                                 dict(loss="trades", attack="fgsm"), dict(ema=1.0), dict(ema=-0.1),
                                 dict(augment=1.5), dict(augment=0.5, augment_n=0), dict(steps_late=-1),
                                 dict(late=2.0)])
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


# --- issue 14: options for a stronger round-000, each off by default ----------------------------------

def test_new_options_are_off_by_default():
    cfg = TrainConfig()
    assert (cfg.loss, cfg.ema, cfg.augment, cfg.steps_late) == ("ce", 0.0, 0.0, 0)


def test_trades_trains_and_monitors_clean_and_adversarial():
    x, y = digits(300)
    ce, trades = fresh(), fresh()
    train(ce, x, y, TrainConfig(epochs=1, steps=2, eps=0.15), progress=False)
    history = train(trades, x, y, TrainConfig(epochs=1, steps=2, eps=0.15, loss="trades", beta=6.0, fraction=0.5),
                    progress=False)
    assert {"clean_loss", "clean_err", "adv_loss", "adv_err"} <= set(history[0])
    assert not torch.equal(weights(ce), weights(trades))


def test_ema_returns_the_averaged_weights():
    from dadc.model.training import _ema_update

    model = torch.nn.Linear(2, 1)
    ema = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    _ema_update(ema, model, 0.9, step=1000)
    assert torch.allclose(ema["weight"], 0.1 * model.weight.detach())
    x, y = digits(300)
    plain, averaged = fresh(), fresh()
    train(plain, x, y, TrainConfig(epochs=1, attack="none", lr=1e-2), progress=False)
    train(averaged, x, y, TrainConfig(epochs=1, attack="none", lr=1e-2, ema=0.5), progress=False)
    assert not torch.equal(weights(plain), weights(averaged))  # same updates, but the average is returned
    assert accuracy(averaged, x, y) > 0.8


def test_steps_late_uses_more_pgd_steps_at_the_end(monkeypatch):
    import dadc.model.training as training

    seen = []
    real = training.pgd
    monkeypatch.setattr(training, "pgd", lambda net, x, y, eps, alpha, steps: seen.append((steps, alpha)) or
                        real(net, x, y, eps, alpha, steps))
    x, y = digits(400)
    train(fresh(), x, y, TrainConfig(epochs=1, steps=2, steps_late=5, late=0.5, eps=0.2), progress=False)
    assert [s for s, _ in seen] == [2, 2, 5, 5]
    assert seen[-1][1] == pytest.approx(2.5 * 0.2 / 5)


def test_validation_keeps_the_best_epoch():
    x, y = digits(200)
    scores, snapshots = iter([0.9, 0.5, 0.7]), []

    def validate(model):
        snapshots.append(weights(model).clone())
        return {"score": next(scores)}
    model = fresh()
    history = train(model, x, y, TrainConfig(epochs=3, attack="none"), validate=validate, progress=False)
    assert [h.get("selected", False) for h in history] == [True, False, False]
    assert [h["val"]["score"] for h in history] == [0.9, 0.5, 0.7]
    assert torch.equal(weights(model), snapshots[0]) and not torch.equal(snapshots[0], snapshots[2])


def test_augment_pool_and_training_with_it():
    import numpy as np

    from dadc.synth import augment
    from dadc.synth import drawings

    x, y = digits(40)
    canvas = augment.to_canvas(x[0, 0].numpy(), np.random.default_rng(0))
    assert canvas.size == (448, 448) and canvas.mode == "L" and canvas.getextrema() == (0, 255)
    px, py = augment.pool(x, y, 12, drawings_per_family=1, seed=3)
    families = len(drawings.FAMILIES)
    assert px.shape[1:] == (1, 28, 28) and 12 + families - 3 <= len(px) == len(py) <= 12 + families
    assert 0 <= px.min() and px.max() <= 1 and px.flatten(1).amax(1).min() == 1  # full-strength ink, as MNIST
    assert py[-families:].tolist() == [0] * families  # drawing i of each family is digit i % 10
    again = augment.pool(x, y, 12, drawings_per_family=1, seed=3)
    assert torch.equal(px, again[0])
    history = train(fresh(), x, y, TrainConfig(epochs=1, attack="none", augment=0.5, augment_n=10, batch_size=20),
                    progress=False)
    assert history[0]["clean_err"] >= 0


def test_large_draws_an_mnist_digit_large_and_centred_and_reads_back_as_itself():
    import numpy as np

    from dadc.synth import augment
    from dadc import preprocess

    yy, xx = np.mgrid[:28, :28]
    ring = np.clip(3 - np.abs(np.hypot((yy - 14) / 10, (xx - 14) / 7) * 10 - 8), 0, 1)  # an MNIST-like 0
    bar = ((np.abs(xx - 14) < 2) & (np.abs(yy - 14) < 10)).astype(float)              # and a 1
    for v in (ring, bar):
        grey = np.asarray(augment.large(v))
        ys, xs = np.nonzero(grey < 128)
        assert grey.shape == (448, 448) and grey.max() == 255 and grey.min() < 40
        assert 250 <= ys.max() - ys.min() <= 330 and abs((ys.max() + ys.min()) / 2 - 224) < 20
        back = preprocess.to_mnist(augment.large(v))
        assert np.corrcoef(back.ravel(), v.ravel())[0, 1] > 0.8  # the same digit, in MNIST's frame again


def test_recipe_flags_win_and_no_recipe_is_todays_recipe():
    from dataclasses import asdict

    from dadc.__main__ import parser
    from dadc.model.recipe import TRAIN_OPTIONS, train_settings

    cfg, opt = train_settings(parser().parse_args(["train", "--out", "x"]))
    assert asdict(cfg) == asdict(TrainConfig()) and opt == TRAIN_OPTIONS
    cfg, opt = train_settings(parser().parse_args(["train", "--recipe", "round0", "--epochs", "2", "--no-amp",
                                                   "--eval-aa-n", "0", "--out", "x"]))
    assert (cfg.loss, cfg.ema, cfg.epochs, cfg.amp, cfg.steps_late, cfg.lr) == ("trades", 0.999, 2.0, False, 20, 1e-3)
    assert (opt["val_n"], opt["eval_aa_n"], opt["eval_drawings_n"]) == (0, 0, 200)
    cfg, _ = train_settings(parser().parse_args(["train", "--recipe", "v1", "--out", "x"]))
    assert (cfg.epochs, cfg.eps_ramp, cfg.loss, cfg.steps, cfg.lr) == (12, 0.15, "ce", 10, 5e-3)


def test_recipe_round0_needs_a_model_to_fine_tune(tmp_path):
    from test_cli import assert_one_line_error, dadc

    r = dadc("train", "--recipe", "round0", "--out", tmp_path / "r0", home=tmp_path)
    assert_one_line_error(r, "--init")
    assert not (tmp_path / "r0").exists()


@pytest.mark.slow
def test_train_recipe_writes_the_issue_14_metrics(tmp_path):
    import json

    from test_cli import ROUND0, dadc
    from test_rounds import mnist_into

    home = mnist_into(tmp_path / "home")
    out = tmp_path / "r0"
    r = dadc("train", "--recipe", "round0", "--init", ROUND0, "--epochs", 0.002, "--steps", 1, "--steps-late", 2,
             "--augment-n", 10, "--augment-drawings", 0, "--val-n", 100, "--val-robust-n", 20, "--eval-n", 50, "--eval-steps", 1,
             "--eval-aa-n", 5, "--eval-drawings-n", 1, "--out", out, home=home)
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["autoattack"]["attacks"] == ["apgd-ce", "apgd-t"] and m["autoattack"]["n"] == 5
    assert set(m["drawings"]["by_family"]) == set(__import__("dadc.synth.drawings").synth.drawings.FAMILIES)
    assert m["mnist_canvas"]["n"] == 50 and 0 <= m["mnist_canvas"]["acc"] <= 1
    assert m["recipe"]["name"] == "round0" and m["recipe"]["train"]["loss"] == "trades"
    assert m["recipe"]["train"]["steps"] == 1 and m["recipe"]["val_n"] == 100
    assert m["history"][0]["selected"] and "robust_acc" in m["history"][0]["val"]
    assert {"cpu", "gpu", "threads"} <= set(m["machine"]) and m["wall_seconds"] > 0
