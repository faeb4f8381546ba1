"""Restricted targeted attacks: closed-form costs, masks respected, failures flagged, clear errors."""

from __future__ import annotations

import math

import pytest
import torch

from lit_advgame.attributions import L2CostAttack, LinfCostAttack, build_cost_attack
from tests.attributions.helpers import TwoClassLinear
from tests.interactions.helpers import make_tiny_cnn

SIZE = 16


def FAST_LINF(**options) -> LinfCostAttack:
    """A coarser grid than the reference's (1/128 up to 50/128, α = 1/128, 60 steps) to keep the tests fast."""
    return LinfCostAttack(eps_step=1 / 128, max_level=50, step_size=1 / 128, steps=60, **options)


@pytest.fixture
def linear():
    """A 16×16 image at 0.5 and a two-class linear model with margin 1.5 (the box never binds below)."""
    x = torch.full((1, 1, SIZE, SIZE), 0.5)
    return x, TwoClassLinear(x, margin=1.5)


def _masks() -> torch.Tensor:
    masks = torch.zeros(3, SIZE, SIZE, dtype=torch.bool)
    masks[0] = True
    masks[1, :8] = True
    masks[2, :, :5] = True
    return masks


@pytest.mark.parametrize("box", ["tanh", "clip"])
def test_l2_cost_matches_the_closed_form_on_a_linear_model(linear, box):
    x, model = linear
    masks = _masks()
    g = model.g.view(1, SIZE, SIZE)
    expected = torch.stack([1.5 / (g * m).norm() for m in masks.float()]).double()
    # the box does not bind: the optimal δ = margin·g∘M/‖g∘M‖² stays inside [-0.5, 0.5]
    assert max(float((1.5 * g * m / (g * m).norm() ** 2).abs().max()) for m in masks.float()) < 0.45
    result = L2CostAttack(steps=100, batch_size=3, box=box)(model, x, torch.tensor([0]), masks)
    assert bool(result.success.all())
    torch.testing.assert_close(result.cost[0], expected, rtol=0.02, atol=0.0)  # stated tolerance: 2 %
    assert result.num_steps == 3 * 5 * 100
    assert bool((result.cost[0] >= expected * (1 - 1e-4)).all())  # never below the minimum


def test_the_clip_box_moves_pixels_at_zero_where_tanh_saturates():
    x = torch.zeros(1, 1, SIZE, SIZE)  # a black background, as digits and MNIST
    weights = torch.stack(
        [torch.rand(SIZE * SIZE, generator=torch.Generator().manual_seed(0)) * 0.1 + 0.05, torch.zeros(SIZE * SIZE)]
    )
    model = TwoClassLinear(x, margin=1.5, weights=weights)  # g > 0: the optimal δ is positive, the box does not bind
    expected = 1.5 / model.g.norm()
    clip = L2CostAttack(steps=100, box="clip")(model, x, torch.tensor([0]), torch.ones(1, SIZE, SIZE, dtype=torch.bool))
    tanh = L2CostAttack(steps=100, box="tanh")(model, x, torch.tensor([0]), torch.ones(1, SIZE, SIZE, dtype=torch.bool))
    torch.testing.assert_close(clip.cost[0, 0], expected.double(), rtol=0.02, atol=0.0)
    assert not bool(tanh.success.all()) or float(tanh.cost[0, 0]) > 1.5 * float(expected)


@pytest.mark.parametrize("search", ["scan", "bisection"])
def test_linf_cost_is_the_first_grid_level_above_the_closed_form(linear, search):
    x, model = linear
    masks = _masks()
    g = model.g.view(1, SIZE, SIZE)
    step = 1 / 128
    exact = torch.stack([1.5 / (g * m).abs().sum() for m in masks.float()]).double()
    result = FAST_LINF(search=search)(model, x, torch.tensor([0]), masks)
    assert bool(result.success.all())
    # BIM from 0 with α = 1/256 moves every masked pixel along sign(g): success iff ε·‖g∘M‖₁ > margin
    torch.testing.assert_close(result.cost[0], torch.floor(exact / step + 1) * step)


def test_bisection_runs_fewer_bim_steps_than_the_scan(linear):
    x, model = linear
    scan = FAST_LINF(search="scan")(model, x, torch.tensor([0]), _masks())
    bisection = FAST_LINF(search="bisection")(model, x, torch.tensor([0]), _masks())
    torch.testing.assert_close(scan.cost, bisection.cost)
    assert bisection.num_steps < scan.num_steps
    assert LinfCostAttack(search="bisection").planned_steps(64) == 64 * 9 * 80
    assert LinfCostAttack().planned_steps(1) == 255 * 80


@pytest.mark.parametrize(
    "attack",
    [
        L2CostAttack(steps=30, binary_search_steps=3),
        L2CostAttack(steps=30, binary_search_steps=3, box="clip"),
        LinfCostAttack(max_level=40),
    ],
)
def test_pixels_outside_the_mask_never_change_and_the_box_holds(attack):
    x = torch.rand(2, 1, 9, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    model = TwoClassLinear(x[:1], margin=0.3, scale=0.5).double()
    masks = torch.zeros(2, 2, 9, 9, dtype=torch.bool)
    masks[:, 0, 2:6, 3:7] = True
    masks[:, 1, :, :4] = True
    masks[1, 1, 0] = True  # masks may differ per image
    result = attack(model, x, torch.tensor([0, 0]), masks, return_perturbation=True)
    delta = result.perturbation
    assert delta.shape == (2, 2, 1, 9, 9)
    assert bool((delta.masked_select(~masks.unsqueeze(2)) == 0).all())  # exactly zero outside S ∪ border
    adversarial = x.unsqueeze(1) + delta
    assert bool(((adversarial >= 0) & (adversarial <= 1)).all())
    assert bool(result.success.any())  # the test is not vacuous


@pytest.mark.parametrize("attack", [L2CostAttack(steps=10, binary_search_steps=2), LinfCostAttack(max_level=8)])
def test_failures_are_flagged_with_nan_cost_never_a_sentinel(linear, attack):
    x, model = linear
    masks = torch.zeros(2, SIZE, SIZE, dtype=torch.bool)
    masks[1, :1, :1] = True  # one pixel: far too weak for the margin
    result = attack(model, x, torch.tensor([0]), masks, return_perturbation=True)
    assert not bool(result.success.any())
    assert bool(torch.isnan(result.cost).all())
    assert result.failure_rate == 1.0
    assert bool((result.perturbation == 0).all())


def test_the_clean_image_at_the_target_costs_zero(linear):
    x, model = linear
    result = LinfCostAttack(search="bisection")(model, x, torch.tensor([1]), _masks())
    assert bool(result.success.all()) and bool((result.cost == 0).all())


def test_many_images_and_masks_in_one_call_agree_with_one_image_calls():
    x = torch.rand(3, 1, 9, 9, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    model = make_tiny_cnn(num_classes=3, smooth=True)
    target = model.eval()(x).argsort(dim=1)[:, -2]  # the runner-up class: reachable
    masks = torch.ones(2, 9, 9, dtype=torch.bool)
    masks[1, :, :3] = False
    attack = LinfCostAttack(search="bisection", max_level=32, eps_step=1 / 32, step_size=1 / 64, steps=40, batch_size=4)
    together = attack(model, x, target, masks)
    assert bool(together.success.any())
    for b in range(3):
        alone = attack(model, x[b : b + 1], target[b : b + 1], masks)
        torch.testing.assert_close(together.cost[b], alone.cost[0], equal_nan=True)


def test_bad_input_errors_name_the_argument(linear):
    x, model = linear
    with pytest.raises(TypeError, match="masks must be a boolean"):
        LinfCostAttack()(model, x, torch.tensor([0]), _masks().float())
    with pytest.raises(ValueError, match=r"masks must have shape \(K, 16, 16\)"):
        LinfCostAttack()(model, x, torch.tensor([0]), torch.ones(2, 8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="unknown search 'binary'"):
        LinfCostAttack(search="binary")
    with pytest.raises(ValueError, match="binary_search_steps must be >= 1"):
        L2CostAttack(binary_search_steps=0)
    with pytest.raises(ValueError, match="lr must be > 0"):
        L2CostAttack(lr=-1.0)
    with pytest.raises(ValueError, match="unknown norm 'l1'"):
        build_cost_attack("l1")
    with pytest.raises(ValueError, match="options"):
        build_cost_attack(L2CostAttack(), steps=3)
    with pytest.raises(ValueError, match="target must be a 1-D tensor"):
        LinfCostAttack()(model, x, torch.tensor([0, 1]), _masks())
    with pytest.raises(ValueError, match=r"x must lie in pixel space \[0, 1\]"):
        LinfCostAttack()(model, x * 3, torch.tensor([0]), _masks())
    assert isinstance(build_cost_attack("linf", max_level=3), LinfCostAttack)
    assert math.isclose(build_cost_attack("l2").lr, 0.025)
