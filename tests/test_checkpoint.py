import json

import pytest
import torch

from dadc.model import checkpoint
from dadc.model import nets


@pytest.mark.parametrize("name", list(nets.NETS))
def test_checkpoint_round_trips_exactly(tmp_path, name):
    torch.manual_seed(0)
    model = nets.build(name).eval()
    x = torch.rand(4, 1, 28, 28)
    checkpoint.save(model, tmp_path / "ck", {"net": name}, {"clean_acc": 0.5})
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["config.json", "metrics.json", "model.safetensors"]
    loaded, config, metrics = checkpoint.load(tmp_path / "ck")
    assert config == {"net": name} and metrics == {"clean_acc": 0.5}
    assert not loaded.training
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    assert torch.equal(model(x), loaded(x))
    assert model(x).shape == (4, 10)


def test_save_replaces_an_existing_checkpoint(tmp_path):
    a, b = nets.build("fast"), nets.build("fast")
    checkpoint.save(a, tmp_path / "ck", {"net": "fast"}, {"v": 1})
    checkpoint.save(b, tmp_path / "ck", {"net": "fast"}, {"v": 2})
    loaded, _, metrics = checkpoint.load(tmp_path / "ck")
    assert metrics == {"v": 2}
    assert all(torch.equal(p, q) for p, q in zip(b.state_dict().values(), loaded.state_dict().values()))
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]  # no temporary directory left behind


def test_loading_refuses_pickle(tmp_path):
    model = nets.build("fast")
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")  # a pickle, as older tools write
    (tmp_path / "config.json").write_text(json.dumps({"net": "fast"}))
    with pytest.raises(checkpoint.CheckpointError, match="refusing to load pickle"):
        checkpoint.load(tmp_path)


def test_corrupt_missing_and_mismatched_checkpoints(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="not a directory"):
        checkpoint.load(tmp_path / "nope")
    checkpoint.save(nets.build("fast"), tmp_path / "ck", {"net": "fast"}, {})
    weights = tmp_path / "ck" / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])
    with pytest.raises(checkpoint.CheckpointError, match="corrupt"):
        checkpoint.load(tmp_path / "ck")
    weights.write_bytes(good)
    (tmp_path / "ck" / "config.json").write_text(json.dumps({"net": "madry"}))
    with pytest.raises(checkpoint.CheckpointError, match="does not fit"):
        checkpoint.load(tmp_path / "ck")
    (tmp_path / "ck" / "config.json").write_text(json.dumps({"net": "resnet9000"}))
    with pytest.raises(checkpoint.CheckpointError, match="unknown net"):
        checkpoint.load(tmp_path / "ck")
    (tmp_path / "ck" / "config.json").write_text("{not json")
    with pytest.raises(checkpoint.CheckpointError, match="config.json"):
        checkpoint.load(tmp_path / "ck")


def test_seed000_is_the_blog_net():
    model = nets.build("seed000")
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == {"conv1.weight": (10, 1, 5, 5), "conv1.bias": (10,), "conv2.weight": (20, 10, 5, 5),
                      "conv2.bias": (20,), "fc1.weight": (50, 320), "fc1.bias": (50,),
                      "fc2.weight": (10, 50), "fc2.bias": (10,)}
    out = model.eval()(torch.rand(2, 1, 28, 28))
    assert torch.allclose(out.exp().sum(1), torch.ones(2))  # log-probabilities, as in the blog


def test_unknown_net_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown net 'vgg'; choose one of: seed000, fast"):
        nets.build("vgg")
