"""Dropout and cutout on adversarial examples (Ren et al., NeurIPS 2021, Table 1, supplement H): Eq. 20 in its
exact form, the neighbour fill, cutout, the early-stopped attack and the correction ratio."""

from __future__ import annotations

import math
from fractions import Fraction
from functools import partial

import pytest
import torch
from torch import nn

from lit_advgame.attacks import Attack
from lit_advgame.defenses import (
    Cutout,
    EarlyStoppedAttack,
    PixelDropout,
    correction_ratio,
    dropout_average_value,
    dropout_keep_count,
    dropout_order_fractions,
    dropout_removed_by_order,
    dropout_value_from_interactions,
    neighbour_fill,
)
from lit_advgame.interactions import InputGame, exact_interactions
from lit_advgame.models.normalize import NormalizedModel


def linear_model(channels: int = 1, side: int = 6, classes: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(channels * side * side, classes))


# ----------------------------------------------------------------------------- Eq. 20


def test_keep_count_is_the_exact_floor_despite_float_rounding():
    assert math.floor((1 - 0.9) * 10) == 0  # the float trap
    assert dropout_keep_count(10, 0.9) == 1
    for n in range(1, 60):
        for hundredths in range(0, 100, 5):
            rate = hundredths / 100
            assert dropout_keep_count(n, rate) == math.floor((1 - Fraction(hundredths, 100)) * n), (n, rate)


@pytest.mark.parametrize("n, rate", [(6, 0.5), (7, 0.3), (8, 0.1), (8, 0.9), (5, 0.0), (7, 0.75)])
def test_eq20_exact_form_equals_the_dropout_average(n, rate):
    table = torch.randn(2, 1 << n, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    exact = exact_interactions(table)
    k = dropout_keep_count(n, rate)
    torch.testing.assert_close(
        dropout_value_from_interactions(exact, rate), dropout_average_value(table, rate), rtol=0, atol=1e-10
    )
    fractions = dropout_order_fractions(n, rate)
    for m in range(n - 1):  # order m keeps (k-1-m)/(n-1-m); orders >= k-1 vanish
        assert fractions[m].item() == pytest.approx(max(0.0, (k - 1 - m) / (n - 1 - m)), abs=1e-15)
        assert (fractions[m] == 0) == (m >= k - 1)
    first_order = (exact.singleton_values - exact.empty_value[:, None]).sum(1)
    change = (1 - k / n) * first_order + dropout_removed_by_order(exact, rate).sum(1)
    torch.testing.assert_close(exact.full_value - dropout_average_value(exact, rate), change, rtol=0, atol=1e-10)


def printed_eq20_change(exact, rate: float) -> torch.Tensor:
    """``v(N) - v^α(N)`` as supplement H prints Eq. 20 (α where the exact form has ``(n-k)/n``)."""
    n, k = exact.num_players, dropout_keep_count(exact.num_players, rate)
    first_order = (exact.singleton_values - exact.empty_value[:, None]).sum(1)
    pair_sums = exact.multi_order.sum(dim=(-1, -2))  # Σ_{i≠j} I^(m)_ij, (B, n-1)
    low = pair_sums[:, : max(k - 1, 0)].sum(1) * rate / (n - 1)
    high = sum(pair_sums[:, m] * (n - 1 - m) / (n * (n - 1)) for m in range(max(k - 1, 0), n - 1))
    return rate * first_order + low + high


def test_eq20_on_a_masked_game_and_the_printed_form_only_for_integer_kept_counts():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    x = torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = exact_interactions(InputGame(model, x, grid=3, baseline="zeros"))  # n = 9
    for rate in (0.1, 0.3, 0.5, 1 / 3):
        torch.testing.assert_close(
            dropout_value_from_interactions(exact, rate), dropout_average_value(exact, rate), rtol=0, atol=1e-12
        )
    change = exact.full_value - dropout_average_value(exact, 1 / 3)  # (1-α)n = 6 is an integer: as printed
    torch.testing.assert_close(printed_eq20_change(exact, 1 / 3), change, rtol=0, atol=1e-12)
    change = exact.full_value - dropout_average_value(exact, 0.3)  # (1-α)n = 6.3, k = 6: the printed form is off
    assert not torch.allclose(printed_eq20_change(exact, 0.3), change, rtol=0, atol=1e-6)


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, float("nan")])
def test_dropout_rate_outside_zero_one_is_refused(rate):
    with pytest.raises(ValueError, match=r"rate \(the dropout rate α\) must lie in \[0, 1\)"):
        PixelDropout(rate)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\)"):
        dropout_keep_count(10, rate)
    with pytest.raises(TypeError, match="must be a number"):
        PixelDropout(True)


# ----------------------------------------------------------------------------- pixel dropout and cutout


def brute_force_fill(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    out = x.clone()
    _, _, height, width = x.shape
    for b in range(x.shape[0]):
        for h in range(height):
            for w in range(width):
                if keep[b, 0, h, w]:
                    continue
                radius = 1
                while True:
                    rows = slice(max(0, h - radius), h + radius + 1)
                    cols = slice(max(0, w - radius), w + radius + 1)
                    kept = keep[b, 0, rows, cols]
                    if kept.any():
                        out[b, :, h, w] = x[b, :, rows, cols][:, kept].mean(dim=1)
                        break
                    radius += 1
    return out


def test_neighbour_fill_uses_kept_neighbours_only_and_leaves_kept_pixels_untouched():
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 7, 8, generator=generator, dtype=torch.float64)
    keep = torch.rand(2, 1, 7, 8, generator=generator) > 0.6
    keep[0, 0, :4, :4] = False  # pixel (1, 1) has no kept pixel in its 3x3 window: the 5x5 one is used
    keep[0, 0, 4, 0] = True
    filled = neighbour_fill(x, keep)
    assert torch.equal(filled[keep.expand_as(x)], x[keep.expand_as(x)])  # kept pixels are untouched
    torch.testing.assert_close(filled, brute_force_fill(x, keep), rtol=0, atol=1e-12)
    scrambled = torch.where(keep, x, torch.rand(x.shape, generator=generator, dtype=torch.float64))
    assert torch.equal(neighbour_fill(scrambled, keep), filled)  # dropped pixels' own values never enter
    with pytest.raises(ValueError, match="at least one kept pixel"):
        neighbour_fill(x, torch.zeros(2, 7, 8, dtype=torch.bool))


def test_pixel_dropout_keeps_exactly_k_pixels_in_every_channel():
    x = torch.rand(4, 3, 10, 10, generator=torch.Generator().manual_seed(1))
    dropout = PixelDropout(0.3, seed=5)
    keep = dropout.keep_mask(x)
    assert keep.shape == (4, 1, 10, 10) and keep.flatten(1).sum(1).tolist() == [70] * 4
    assert torch.equal(dropout(x), neighbour_fill(x, keep))  # an int seed draws the same masks every call
    assert not torch.equal(keep[0], keep[1])
    assert torch.equal(PixelDropout(0.0)(x), x)
    with pytest.raises(ValueError, match="keeps no pixel of a 2x2 image"):
        PixelDropout(0.8)(torch.rand(1, 1, 2, 2))


def test_cutout_masks_a_square_of_half_the_side_inside_the_image():
    x = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 0.5 + 0.25
    cutout = Cutout(fill="zeros", seed=3)
    keep = cutout.keep_mask(x)
    assert keep.flatten(1).logical_not().sum(1).tolist() == [64] * 5  # 8x8 = 25 % of 16x16
    out = cutout(x)
    assert torch.equal(out[keep.expand_as(x)], x[keep.expand_as(x)]) and bool((out[~keep.expand_as(x)] == 0).all())
    for b in range(5):
        rows, cols = (~keep[b, 0]).nonzero(as_tuple=True)
        assert rows.max() - rows.min() == 7 and cols.max() - cols.min() == 7
    model = NormalizedModel(linear_model(3, 16), mean=[0.1, 0.2, 0.3], std=[1.0, 1.0, 1.0])
    filled = Cutout(seed=3)(x, model)  # "mean": the model's Normalize mean, i.e. 0 after normalization
    assert torch.equal(filled[:, 1][~keep[:, 0]], torch.full((5 * 64,), 0.2))
    with pytest.raises(ValueError, match=r"cutout size 17 does not fit a 16x16 image: it must lie in \[1, 16\]"):
        Cutout(size=17)(x)
    with pytest.raises(ValueError, match="size must be >= 1"):
        Cutout(size=0)


# ----------------------------------------------------------------------------- the early-stopped attack


def predictions_of_iterates(model, x, attack_kwargs):
    """Every candidate the plain attack visits: (T + 1, B) predictions and (T + 1, B, ...) images."""
    plain = Attack(model, **attack_kwargs).run(x, model(x).argmax(1), record_iterates=True)
    candidates = torch.cat([(x + plain.iterates).clamp(0, 1), plain.x_adv[None]])
    with torch.no_grad():
        predictions = torch.stack([model(c).argmax(1) for c in candidates])
    return candidates, predictions


def test_early_stopped_pgd_stops_each_image_at_its_first_successful_step():
    model = linear_model(classes=4, seed=1)
    x = torch.rand(6, 1, 6, 6, generator=torch.Generator().manual_seed(3))
    y = model(x).argmax(1)
    kwargs = {"eps": 0.3, "step_size": 0.01, "steps": 40, "random_start": False}
    candidates, predictions = predictions_of_iterates(model, x, kwargs)
    wrong = predictions != y
    assert wrong[-1].all() and not wrong[0].any()
    first = wrong.long().argmax(dim=0)  # the first successful iterate per image
    assert len(set(first.tolist())) > 1  # the images stop at different steps
    result = EarlyStoppedAttack(Attack(model, **kwargs)).run(x, y)
    assert torch.equal(result.steps, first) and bool(result.success.all())
    assert torch.equal(result.x_adv, candidates[first, torch.arange(6)])
    assert result.num_steps_run == int(first.max()) < 40  # the attack ended once every image had stopped
    assert result.forward_passes == 6 * (1 + result.num_steps_run) + int((first + 1).sum())
    with torch.inference_mode():  # as in Lightning's predict loop
        inside = EarlyStoppedAttack(Attack(model, **kwargs)).run(x.clone(), y.clone())
    assert torch.equal(inside.x_adv, result.x_adv) and torch.equal(inside.steps, result.steps)


def test_early_stopped_pgd_keeps_the_last_iterate_of_images_that_never_succeed():
    model = linear_model(classes=4, seed=1)
    x = torch.rand(6, 1, 6, 6, generator=torch.Generator().manual_seed(3))
    y = model(x).argmax(1)
    kwargs = {"eps": 0.02, "step_size": 0.01, "steps": 5, "seed": 0}
    candidates, predictions = predictions_of_iterates(model, x, kwargs)
    result = EarlyStoppedAttack(Attack(model, **kwargs)).run(x, y)
    never = ~(predictions != y).any(dim=0)
    assert never.any()
    assert torch.equal(result.success, ~never) and bool((result.steps[never] == 5).all())
    assert torch.equal(result.x_adv[never], candidates[-1][never])
    with pytest.raises(TypeError, match="must be a lit_advgame.attacks.Attack"):
        EarlyStoppedAttack(model)
    with pytest.raises(ValueError, match="needs target labels"):
        EarlyStoppedAttack(Attack(model, targeted=True, steps=2)).run(x, y)


def test_correction_ratio_counts_misclassified_adversarial_examples_only():
    model = linear_model(classes=4, seed=1)
    x = torch.rand(6, 1, 6, 6, generator=torch.Generator().manual_seed(3))
    y = model(x).argmax(1)
    result = EarlyStoppedAttack(Attack(model, eps=0.3, step_size=0.01, steps=40, seed=0)).run(x, y)
    x_adv = torch.cat([result.x_adv[:4], x[4:]])  # the last two are not adversarial: not counted
    assert correction_ratio(model, x_adv, y, lambda images: images).ratio == 0.0
    back = correction_ratio(model, x_adv, y, lambda images: x)  # a transform that recovers the clean images
    assert back.ratio == 1.0 and back.num_counted == 4 and back.counted.tolist() == [True] * 4 + [False] * 2
    dropped = correction_ratio(model, x_adv, y, PixelDropout(0.2))
    assert 0.0 <= dropped.ratio <= 1.0 and not dropped.corrected[4:].any()
    normalized = NormalizedModel(linear_model(classes=4, seed=1), mean=[0.5], std=[1.0])
    assert correction_ratio(normalized, x_adv, y, partial(Cutout(), model=normalized)).num_counted >= 0
