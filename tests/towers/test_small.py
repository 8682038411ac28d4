"""Small trainable towers: shapes, gradients, the conventional LeNet size, factories."""

from __future__ import annotations

import pytest
import torch

from adamodal.errors import ConfigError
from adamodal.towers.small import (
    BagOfWordsTower,
    LeNetTower,
    MLPTower,
    make_image_tower,
    make_text_tower,
)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_lenet_has_the_conventional_size_on_28x28() -> None:
    tower = LeNetTower((1, 28, 28))
    conv1 = 1 * 6 * 5 * 5 + 6  # 28 -> 24 -> pool 12
    conv2 = 6 * 16 * 5 * 5 + 16  # 12 -> 8 -> pool 4
    fc1 = 16 * 4 * 4 * 120 + 120
    fc2 = 120 * 84 + 84
    assert n_params(tower) == conv1 + conv2 + fc1 + fc2 == 43_576
    assert tower.out_dim == 84


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 64, 64)])
@pytest.mark.parametrize("name", ["cnn", "mlp"])
def test_image_towers_shapes_and_gradients(name: str, shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    tower = make_image_tower(name, shape)
    x = torch.randint(0, 256, (5, 2, *shape), dtype=torch.uint8)
    out = tower(x)
    assert out.shape == (5, 2, tower.out_dim) and out.dtype == torch.float32
    assert tower(x[:, 0]).shape == (5, tower.out_dim)
    torch.testing.assert_close(tower(x[:, 1]), out[:, 1])
    out.sum().backward()
    grads = [p.grad for p in tower.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads if g is not None)


def test_mlp_out_dim() -> None:
    assert MLPTower((1, 28, 28)).out_dim == 200
    assert n_params(MLPTower((1, 28, 28))) == 784 * 200 + 200 + 200 * 200 + 200


def test_bag_of_words_shapes_padding_and_gradients() -> None:
    torch.manual_seed(0)
    tower = BagOfWordsTower(vocab=1000, dim=16)
    ids = torch.tensor([[5, 7, 9, 0], [0, 0, 0, 0], [3, 0, 0, 0]])
    out = tower(ids)
    assert out.shape == (3, 16) and tower.out_dim == 16
    assert torch.isfinite(out).all()
    assert torch.equal(out[1], torch.zeros(16))  # empty text -> exact zeros, no NaN
    # padding does not change the mean: [3] and [3, 0, 0, 0] embed the same
    torch.testing.assert_close(tower(torch.tensor([[3]]))[0], out[2])
    out.pow(2).sum().backward()
    grad = tower.embed.weight.grad
    assert grad is not None and torch.isfinite(grad).all()
    assert float(grad[5].abs().sum()) > 0 and float(grad[0].abs().sum()) == 0
    assert tower(ids.view(3, 1, 4)).shape == (3, 1, 16)


def test_factories_reject_unknown_names() -> None:
    assert isinstance(make_image_tower("cnn", (3, 64, 64)), LeNetTower)
    assert isinstance(make_text_tower("bow", 64), BagOfWordsTower)
    with pytest.raises(ConfigError, match="cnn, mlp"):
        make_image_tower("resnet", (3, 64, 64))
    with pytest.raises(ConfigError, match="bow"):
        make_text_tower("bert", 64)
    with pytest.raises(ConfigError, match="too small"):
        LeNetTower((1, 8, 8))
    with pytest.raises(ConfigError, match=r"\(C, H, W\)"):
        make_image_tower("mlp", (28, 28))
