"""Baselines for absent players."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lit_advgame.interactions import InputGame, gaussian_blur, make_baseline
from tests.interactions.helpers import make_images, make_tiny_cnn


def _all_absent_image(game: InputGame) -> torch.Tensor:
    seen = []
    hook = game.model.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    game.evaluate(torch.zeros(1, game.num_players, dtype=torch.bool))
    hook.remove()
    return seen[-1]


def test_mean_baseline_is_the_normalizer_mean_colour():
    model = make_tiny_cnn(in_channels=3)
    x = make_images(channels=3)
    game = InputGame(model, x, torch.tensor([0, 1]), grid=3)
    absent = _all_absent_image(game)
    assert torch.equal(absent, model.normalize.mean.expand_as(x))
    assert torch.allclose(absent, torch.full_like(x, 0.4))
    # i.e. zero after normalization, as the reference multiplies the normalized image by the mask
    assert torch.equal(model.normalize(absent), torch.zeros_like(x))


def test_zeros_explicit_mean_and_tensor_baselines():
    model = make_tiny_cnn(in_channels=3)
    x = make_images(channels=3)
    assert torch.equal(make_baseline("zeros", x), torch.zeros(1, 3, 1, 1, dtype=x.dtype))
    explicit = make_baseline([0.1, 0.2, 0.3], x)
    assert explicit.shape == (1, 3, 1, 1) and torch.allclose(
        explicit.flatten(), torch.tensor([0.1, 0.2, 0.3], dtype=x.dtype)
    )
    chw = torch.rand(3, 9, 9, dtype=x.dtype)
    assert torch.equal(make_baseline(chw, x), chw.unsqueeze(0))
    game = InputGame(model, x, torch.tensor([0, 1]), grid=3, baseline=chw)
    assert torch.equal(_all_absent_image(game), chw.unsqueeze(0).expand_as(x))


def test_blur_baseline():
    x = make_images(channels=2, height=12, width=12)
    blurred = make_baseline("blur", x, blur_sigma=1.5)
    assert blurred.shape == x.shape
    assert blurred.std() < x.std()  # smoother
    flat = torch.full((1, 2, 12, 12), 0.3, dtype=torch.float64)
    assert torch.allclose(gaussian_blur(flat, 2.0), flat)  # a constant image is unchanged (replicate padding)
    # mass is preserved away from the borders: blur of a centred impulse sums to 1
    impulse = torch.zeros(1, 1, 21, 21, dtype=torch.float64)
    impulse[0, 0, 10, 10] = 1.0
    assert gaussian_blur(impulse, 1.0).sum().item() == pytest.approx(1.0, abs=1e-12)


def _separable_blur(x, sigma):
    """The blur baseline's previous hand-written form: separable depthwise convolutions, replicate padding."""
    radius = max(1, math.ceil(3.0 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(x.dtype)
    channels = x.shape[1]
    out = F.pad(x, (radius, radius, 0, 0), mode="replicate")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    out = F.pad(out, (0, 0, radius, radius), mode="replicate")
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-13), (torch.float32, 3e-6)])
@pytest.mark.parametrize("sigma", [0.4, 1.5, 5.0])
def test_blur_is_torchvision_gaussian_blur_with_replicate_padding(dtype, atol, sigma):
    # torchvision pads by reflection; padding by replicate first keeps the previous border behaviour
    x = make_images(channels=3, height=12, width=9).to(dtype)
    assert torch.allclose(gaussian_blur(x, sigma), _separable_blur(x, sigma), atol=atol, rtol=0)


def test_baseline_errors():
    x = make_images(channels=3)
    with pytest.raises(ValueError, match="Normalize layer"):
        make_baseline("mean", x, nn.Conv2d(3, 2, 1))
    with pytest.raises(ValueError, match="unknown baseline"):
        make_baseline("grey", x)
    with pytest.raises(ValueError, match="3 values"):
        make_baseline([0.1, 0.2], x)
    with pytest.raises(ValueError, match="NaN"):
        make_baseline(torch.full((3,), float("nan")), x)
    with pytest.raises(ValueError, match="broadcast"):
        make_baseline(torch.zeros(5, 3, 9, 9), x)
    with pytest.raises(ValueError, match="blur_sigma"):
        make_baseline("blur", x, blur_sigma=0.0)
    with pytest.raises(ValueError, match="channels"):
        make_baseline("mean", make_images(channels=1), make_tiny_cnn(in_channels=3))
