"""SVD rank reduction and its paired multi-order interactions (Ren et al., NeurIPS 2021, §4.3, Figure 6 right)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lit_advgame.defenses import (
    RankReductionApproximator,
    kept_rank,
    rank_reduced_game,
    rank_reduction_interactions,
    svd_rank_reduce,
)
from lit_advgame.interactions import InputGame, PerturbationGame, exact_interactions, multi_order_interactions


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 8), nn.Tanh(), nn.Linear(8, 3))


def _images(batch: int = 2, size: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 1, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("shape, fraction, rank", [((16, 16), 1 / 4, 4), ((16, 16), 1 / 16, 1), ((12, 20), 1 / 4, 3)])
def test_reduction_keeps_the_requested_rank_per_channel(shape, fraction, rank):
    x = torch.rand(2, 3, *shape, dtype=torch.float64)
    reduced = svd_rank_reduce(x, fraction, clamp=False)
    assert reduced.shape == x.shape and reduced.dtype == x.dtype
    assert torch.linalg.matrix_rank(reduced).eq(rank).all()
    # the best rank-r approximation (Eckart–Young): its error is the discarded singular values
    singular = torch.linalg.svdvals(x)
    torch.testing.assert_close(
        (x - reduced).flatten(2).norm(dim=2), singular[..., rank:].pow(2).sum(-1).sqrt(), atol=1e-10, rtol=0
    )


def test_float32_reduction_has_negligible_singular_values_beyond_the_rank():
    x = torch.rand(1, 3, 16, 16)
    singular = torch.linalg.svdvals(svd_rank_reduce(x, 1 / 4, clamp=False).double())
    assert float((singular[..., 4:] / singular[..., :1]).max()) < 1e-5


def test_clamped_reduction_stays_in_the_image_range_and_only_clamps():
    x = torch.rand(3, 3, 16, 16)
    exact = svd_rank_reduce(x, 1 / 4, clamp=False)
    assert float(exact.min()) < 0 and float(exact.max()) > 1  # a rank-4 noise image leaves [0, 1] ...
    clamped = svd_rank_reduce(x, 1 / 4)
    assert float(clamped.min()) >= 0 and float(clamped.max()) <= 1  # ... and is clamped back
    torch.testing.assert_close(clamped, exact.clamp(0, 1))


def test_full_fraction_returns_the_image():
    x = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(svd_rank_reduce(x, 1.0), x, atol=1e-5, rtol=0)


def test_kept_rank_rounding_is_robust_to_float_noise():
    assert (1 - 0.9) * 10 < 1  # float noise that a plain floor would turn into rank 0
    assert kept_rank(1 - 0.9, 10, "floor") == kept_rank(1 - 0.9, 10, "ceil") == 1
    assert kept_rank(0.28, 25, "floor") == kept_rank(0.28, 25, "ceil") == 7  # 0.28 · 25 = 7.000000000000001
    assert (kept_rank(1 / 16, 28), kept_rank(1 / 16, 28, "floor"), kept_rank(1 / 16, 28, "ceil")) == (2, 1, 2)
    assert kept_rank(1 / 16, 8) == 1  # at least rank 1 (8/16 rounds to 0)
    assert kept_rank(1.0, 5) == 5


@pytest.mark.parametrize("fraction", [0, 0.0, -0.25, 1.5, math.nan])
def test_rank_fraction_outside_zero_one_is_an_error(fraction):
    error = TypeError if isinstance(fraction, float) and math.isnan(fraction) else ValueError
    with pytest.raises(error, match=r"fraction.*\(0, 1\]"):
        svd_rank_reduce(torch.rand(1, 1, 4, 4), fraction)


def test_bad_reduction_arguments_name_the_argument():
    with pytest.raises(TypeError, match="fraction"):
        kept_rank(True, 4)
    with pytest.raises(ValueError, match="rounding"):
        kept_rank(0.5, 4, "nearest")
    with pytest.raises(TypeError, match="clamp"):
        svd_rank_reduce(torch.rand(1, 1, 4, 4), 0.5, clamp=1)
    with pytest.raises(ValueError, match="fractions"):
        RankReductionApproximator(fractions=(0.25, 2.0))
    with pytest.raises(ValueError, match="fractions"):
        RankReductionApproximator(fractions=())


def _games(x_adv_shift: float = 0.2, value: str = "log_prob"):
    model = _model()
    x = _images()
    x_adv = (x + x_adv_shift * _images(seed=1) - x_adv_shift / 2).clamp(0, 1)
    y = torch.tensor([0, 1])
    options = {"grid": 3, "baseline": "zeros", "value": value}
    return model, InputGame(model, x, y, **options), InputGame(model, x_adv, y, **options)


def test_reduced_game_keeps_players_value_labels_and_baseline():
    model, game, _ = _games()
    reduced = rank_reduced_game(game, 1 / 3)
    assert torch.equal(reduced.absent, game.absent) and torch.equal(reduced.labels, game.labels)
    assert torch.equal(reduced.player_map, game.player_map) and reduced.value is game.value
    torch.testing.assert_close(reduced.present, svd_rank_reduce(game.present, 1 / 3))
    with pytest.raises(TypeError, match="InputGame"):
        x = _images()
        rank_reduced_game(PerturbationGame(model, x, torch.zeros_like(x), torch.tensor([0, 1]), grid=3), 0.5)


def test_estimates_are_paired_same_pairs_and_contexts_as_separate_seeded_runs():
    model, normal, adversarial = _games()
    options = {"num_pairs": 4, "num_contexts": 6, "pairs": "uniform"}
    result = rank_reduction_interactions(normal, adversarial, [1, 3, 5], fractions=(1 / 3,), generator=0, **options)
    parts = [result.normal, result.adversarial, result.reduced_normal[0], result.reduced_adversarial[0]]
    for part in parts[1:]:
        assert torch.equal(part.pairs, parts[0].pairs)  # one draw of pairs for every game
    # one draw of contexts too: each game alone with the same random state gives the same estimates
    games = [normal, adversarial, rank_reduced_game(normal, 1 / 3), rank_reduced_game(adversarial, 1 / 3)]
    for part, game in zip(parts, games):
        alone = multi_order_interactions(game, [1, 3, 5], generator=0, **options)
        torch.testing.assert_close(part.per_pair, alone.per_pair)
    change = result.adversarial_change[0]
    torch.testing.assert_close(change.per_pair, parts[3].per_pair - parts[1].per_pair)
    torch.testing.assert_close(result.difference[0].values, change.values - result.normal_change[0].values)
    assert result.ranks == (2,) and result.full_rank == 6  # k = min(H, W) of the 6×6 images


def test_identical_normal_and_adversarial_images_give_an_exactly_zero_paired_difference():
    model, normal, _ = _games()
    twin = InputGame(model, normal.present.clone(), normal.labels, grid=3, baseline="zeros")
    result = rank_reduction_interactions(normal, twin, [2, 4], num_pairs=3, num_contexts=5, generator=0)
    for f in range(2):
        assert torch.equal(result.difference[f].values, torch.zeros(2, dtype=torch.float64))
        assert torch.equal(result.difference[f].stderr, torch.zeros(2, dtype=torch.float64))  # paired: no noise
        assert bool(result.normal_change[f].stderr.gt(0).all())


def test_enumerated_orders_match_the_exact_oracle_on_the_reduced_images():
    model, normal, adversarial = _games()
    result = rank_reduction_interactions(normal, adversarial, [0, 7], fractions=(0.5,), num_pairs=5, generator=0)
    reduced_x = svd_rank_reduce(adversarial.present, 0.5)
    exact = exact_interactions(InputGame(model, reduced_x, adversarial.labels, grid=3, baseline="zeros"))
    pairs = result.reduced_adversarial[0].pairs
    expected = exact.mean_over_pairs(pairs)[:, [0, 7]]
    torch.testing.assert_close(result.reduced_adversarial[0].per_image, expected.double(), atol=1e-5, rtol=0)


def test_result_logs_every_part_and_the_budget_counts_every_game():
    _, normal, adversarial = _games()
    result = rank_reduction_interactions(normal, adversarial, [1, 6], num_pairs=2, num_contexts=3, generator=0)
    logged = result.to_dict()
    assert logged["rank_reduction/normal/m1"] == pytest.approx(float(result.normal.values[0]))
    for name in ("reduced_normal", "reduced_adversarial", "normal_change", "adversarial_change", "difference"):
        assert f"rank_reduction/k0.25/{name}/m6_stderr" in logged and f"rank_reduction/k0.0625/{name}/m1" in logged
    assert logged["rank_reduction/num_forward_passes"] == result.num_forward_passes > 0
    # 6 games x 2 images x (2 orders x 2 pairs x 4 coalitions x 3 contexts + 1) = 588 planned
    with pytest.raises(ValueError, match="max_forward_passes"):
        rank_reduction_interactions(normal, adversarial, [1, 6], num_pairs=2, num_contexts=3, max_forward_passes=587)
    rank_reduction_interactions(normal, adversarial, [1, 6], num_pairs=2, num_contexts=3, max_forward_passes=588)


def test_games_must_be_paired():
    model, normal, adversarial = _games()
    other = InputGame(model, adversarial.present, torch.tensor([1, 1]), grid=3, baseline="zeros")
    with pytest.raises(ValueError, match="same labels"):
        rank_reduction_interactions(normal, other, [1], num_pairs=2, num_contexts=2)
