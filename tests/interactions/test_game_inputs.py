"""No silent inputs in the games (issue 8): x + δ outside [0, 1], dtypes, plain functions, empty batches."""

from __future__ import annotations

import pytest
import torch

from lit_advgame.interactions import (
    InputGame,
    PerturbationGame,
    perturbation_interaction,
)
from tests.interactions.helpers import make_images, make_tiny_cnn

Y = torch.tensor([1, 3])
FULL_AND_SOME = torch.tensor([[True] * 9, [True, False] * 4 + [True]])


def _in_box_delta(x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    delta = 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype)
    return (x + delta).clamp(0, 1) - x


def test_perturbation_outside_the_pixel_box_is_an_error():
    model, x = make_tiny_cnn(), make_images()
    outside = 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype)
    assert ((x + outside) > 1).any() and ((x + outside) < 0).any()
    with pytest.raises(ValueError, match=r"x \+ delta must lie in pixel space \[0, 1\]; got values in .*clamp\(0, 1\)"):
        perturbation_interaction(model, x, outside, Y, grid=3, num_samples=2, group_size=2)
    with pytest.raises(ValueError, match=r"x \+ delta must lie in pixel space \[0, 1\]"):
        PerturbationGame(model, x, outside, Y, grid=3)
    # float rounding of a clipped perturbation (x + ((x + δ).clamp(0, 1) − x)) is fine
    inside = _in_box_delta(x)
    nudged = inside + 1e-7 * torch.sign(inside)
    values = perturbation_interaction(
        model, x, nudged, Y, grid=3, num_samples=2, group_size=2, generator=torch.Generator().manual_seed(0)
    )
    assert values.shape == (2,) and torch.isfinite(values).all()


def test_images_of_another_dtype_are_cast_to_the_model_dtype():
    model64 = make_tiny_cnn()
    model32 = make_tiny_cnn().float()
    x = make_images()
    for model, x_other, x_same in ((model32, x, x.float()), (model64, x.float(), x.float().double())):
        got = InputGame(model, x_other, Y, grid=3).evaluate(FULL_AND_SOME)
        expected = InputGame(model, x_same, Y, grid=3).evaluate(FULL_AND_SOME)
        assert got.dtype == expected.dtype == x_same.dtype
        assert torch.equal(got, expected)
    # the perturbation game: float64 x and δ on a float32 model, gradients still reach δ (in float64)
    delta = _in_box_delta(x).requires_grad_(True)
    values = perturbation_interaction(
        model32, x, delta, Y, grid=3, num_samples=2, group_size=2, generator=torch.Generator().manual_seed(0)
    )
    assert values.dtype == torch.float32
    values.sum().backward()
    assert delta.grad is not None and delta.grad.dtype == torch.float64 and delta.grad.abs().sum() > 0
    expected = perturbation_interaction(
        model32,
        x.float(),
        delta.detach().float(),
        Y,
        grid=3,
        num_samples=2,
        group_size=2,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.equal(values.detach(), expected)


@pytest.mark.parametrize(
    "build",
    [
        lambda f, x: InputGame(f, x, Y, grid=3),  # the default "mean" baseline used to fail with an AttributeError
        lambda f, x: InputGame(f, x, Y, grid=3, baseline="zeros"),
        lambda f, x: PerturbationGame(f, x, torch.zeros_like(x), Y, grid=3),
        lambda f, x: perturbation_interaction(f, x, torch.zeros_like(x), Y, grid=3),
    ],
)
def test_a_plain_function_is_not_a_model(build):
    model, x = make_tiny_cnn(), make_images()
    with pytest.raises(TypeError, match=r"model must be a torch.nn.Module .*got function \(a plain function"):
        build(lambda v: model(v), x)


@pytest.mark.parametrize(
    "build",
    [
        lambda m, x: InputGame(m, x, Y[:0], grid=3),
        lambda m, x: PerturbationGame(m, x, torch.zeros_like(x), Y[:0], grid=3),
        lambda m, x: perturbation_interaction(m, x, torch.zeros_like(x), Y[:0], grid=3),
    ],
)
def test_an_empty_batch_is_an_error(build):
    model, x = make_tiny_cnn(), make_images()[:0]
    with pytest.raises(ValueError, match=r"x must contain at least one image; got an empty batch \(B = 0"):
        build(model, x)
