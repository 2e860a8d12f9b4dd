import pytest
import torch

from dadc.model.attacks import fgsm, pgd
from dadc.model.evaluate import accuracy, robust_accuracy
from dadc.model.training import TrainConfig, train
from synth import digits, tiny_net


@pytest.fixture(scope="module")
def trained():
    """A normally trained tiny net and held-out data it classifies almost perfectly."""
    torch.manual_seed(0)
    model = tiny_net()
    x, y = digits(2000, seed=1)
    train(model, x, y, TrainConfig(epochs=3, attack="none", lr=1e-2), progress=False)
    xt, yt = digits(300, seed=2)
    assert accuracy(model, xt, yt) > 0.95
    return model, xt, yt


@pytest.mark.parametrize("norm,eps", [("linf", 0.3), ("linf", 0.05), ("l2", 2.0)])
@pytest.mark.parametrize("restarts", [1, 3])
def test_pgd_stays_in_eps_ball_and_image_range(trained, norm, eps, restarts):
    model, x, y = trained
    x_adv = pgd(model, x, y, eps=eps, alpha=eps / 4, steps=10, norm=norm, restarts=restarts)
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert size.max().item() <= eps + 1e-5
    assert x_adv.min().item() >= 0 and x_adv.max().item() <= 1
    assert size.max().item() > 0.5 * eps  # it did move


def test_fgsm_stays_in_eps_ball(trained):
    model, x, y = trained
    x_adv = fgsm(model, x, y, eps=0.1)
    assert (x_adv - x).abs().max().item() <= 0.1 + 1e-6
    assert 0 <= x_adv.min().item() and x_adv.max().item() <= 1


def test_pgd_lowers_accuracy_of_a_trained_net(trained):
    model, x, y = trained
    clean = accuracy(model, x, y)
    robust = robust_accuracy(model, x, y, eps=0.3, steps=20)
    assert robust < clean - 0.5, (clean, robust)
    weak = robust_accuracy(model, x, y, eps=0.02, steps=20)
    assert robust <= weak <= clean  # a larger budget never helps the model


def test_more_restarts_never_weaken_the_attack(trained):
    model, x, y = trained
    torch.manual_seed(0)
    one = robust_accuracy(model, x, y, eps=0.1, steps=5, restarts=1)
    torch.manual_seed(0)  # the first restart of the 4 is the same run as the single one
    four = robust_accuracy(model, x, y, eps=0.1, steps=5, restarts=4)
    assert four <= one


def test_pgd_agrees_with_torchattacks(trained):
    """An independent PGD implementation (torchattacks) finds the same robust accuracy within a few points."""
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = trained
    eps, alpha, steps = 0.1, 0.01, 40
    ours = robust_accuracy(model, x, y, eps=eps, steps=steps, alpha=alpha)
    attack = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)
    theirs = accuracy(model, attack(x, y), y)
    assert 0.05 < theirs < 0.95, "pick eps so the comparison is informative"
    assert abs(ours - theirs) <= 0.04, (ours, theirs)


def test_attack_leaves_mode_bn_buffers_and_grads_untouched(trained):
    model, x, y = trained
    model.train()
    model.zero_grad(set_to_none=True)
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    for attack in (lambda: pgd(model, x, y, 0.3, 0.05, 5, restarts=2), lambda: fgsm(model, x, y, 0.3)):
        attack()
        assert model.training
        for k, v in model.named_buffers():
            assert torch.equal(v, buffers[k]), k
        assert all(p.grad is None for p in model.parameters())
    model.eval()
    pgd(model, x, y, 0.3, 0.05, 2)
    assert not model.training


def test_attack_rejects_bad_settings(trained):
    model, x, y = trained
    with pytest.raises(ValueError, match="eps"):
        pgd(model, x, y, eps=-0.1, alpha=0.01, steps=5)
    with pytest.raises(ValueError, match="norm"):
        pgd(model, x, y, eps=0.1, alpha=0.01, steps=5, norm="l7")


@pytest.mark.slow
def test_autoattack_is_at_least_as_strong_as_pgd(trained):
    pytest.importorskip("pyautoattack")
    from dadc.model.evaluate import autoattack_accuracy

    model, x, y = trained
    x, y = x[:40], y[:40]
    ours = robust_accuracy(model, x, y, eps=0.1, steps=20)
    aa = autoattack_accuracy(model, x, y, eps=0.1)
    assert 0 <= aa <= ours + 0.05, (aa, ours)


def test_trades_attack_stays_in_the_eps_ball_and_raises_the_kl(trained):
    import torch.nn.functional as F

    from dadc.model.attacks import trades_attack

    model, x, y = trained
    x_adv = trades_attack(model, x, eps=0.1, alpha=0.02, steps=10)
    assert (x_adv - x).abs().max().item() <= 0.1 + 1e-6 and 0 <= x_adv.min() and x_adv.max() <= 1
    with torch.no_grad():
        p = F.softmax(model(x), 1)
        kl = lambda z: F.kl_div(F.log_softmax(model(z), 1), p, reduction="sum").item()  # noqa: E731
        assert kl(x_adv) > 10 * kl((x + 0.001 * torch.randn_like(x)).clamp(0, 1))


def test_autoattack_reports_the_attacks_it_ran(trained, monkeypatch):
    pyautoattack = pytest.importorskip("pyautoattack")
    from dadc.model.evaluate import autoattack

    class Short(pyautoattack.AutoAttack):  # 5 iterations instead of 100: this checks the plumbing only
        def run_standard_evaluation(self, *args, **kwargs):
            for a in (self.apgd, self.apgd_targeted):
                a.n_iter, a.n_iter_2, a.n_iter_min, a.size_decr = 5, 1, 1, 1
            return super().run_standard_evaluation(*args, **kwargs)
    monkeypatch.setattr(pyautoattack, "AutoAttack", Short)
    model, x, y = trained
    res = autoattack(model, x[:10], y[:10], eps=0.1, attacks=["apgd-ce", "apgd-t"])
    assert res["attacks"] == ["apgd-ce", "apgd-t"]
    assert set(res["after"]) <= {"apgd-ce", "apgd-t"} and 0 <= res["robust_acc"] <= 1
