"""Estimator details checked against exact enumeration (issue 9): finite-population factor,
context-only standard errors of D^(m) with every pair, rounding-noise pairs, enumerated contexts,
paired-game checks, consistent result fields, approximator objects, library statistics."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.stats
import torch

from lit_advgame.interactions import (
    DisentanglementApproximator,
    InputGame,
    InteractionChangeApproximator,
    MultiOrderApproximator,
    MultiOrderShapleyApproximator,
    PerturbationGame,
    PerturbationInteractionApproximator,
    ShapleyApproximator,
    disentanglement,
    enumerate_subsets,
    exact_interactions,
    grid_shape,
    interaction_change,
    multi_order_interactions,
    multi_order_shapley,
    neighbour_pairs,
    perturbation_interaction_estimate,
    sample_players,
    shapley_values,
)
from lit_advgame.interactions.stats import mean_and_stderr, sem
from tests.interactions.helpers import make_images, make_tiny_cnn, synthetic_input_game

Y = torch.tensor([1, 3])


def _delta(x, seed=0, scale=0.2):
    delta = scale * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype)
    return (x + delta).clamp(0, 1) - x


def _table_game(seed: int = 0, n: int = 9):
    """A random game v(S) = table[S] through the masked-evaluation engine (3x3 grid)."""
    table = torch.randn(1 << n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    bits = 1 << torch.arange(n)
    return synthetic_input_game(lambda s: table[(s.long() * bits).sum(1)])


# ------------------------------------------------------------------ 1. finite-population factor
def test_single_form_standard_error_is_unbiased_over_all_subsets():
    model = make_tiny_cnn()
    x = make_images()
    game = PerturbationGame(model, x, _delta(x), Y, grid=3)
    terms, exhaustive = PerturbationInteractionApproximator(form="single", num_samples=9, scale="paper").terms(game)
    assert exhaustive and terms.shape == (2, 9)
    terms = terms.double()
    n, k = 9, 3
    subsets = torch.tensor(list(itertools.combinations(range(n), k)))  # all 84 subsets, equally likely
    means, stderr = mean_and_stderr(terms[:, subsets], dim=-1, population=n)  # (B, 84)
    true_variance = means.var(dim=1, correction=0)  # the exact variance of the estimator
    assert torch.allclose(stderr.pow(2).mean(dim=1), true_variance, rtol=1e-10, atol=0)
    # the old factor (n - k) / (n - 1) overstates it by exactly n / (n - 1) = 9 / 8
    old = means.new_tensor(0) + sem(terms[:, subsets], -1).pow(2) * (n - k) / (n - 1)
    assert torch.allclose(old.mean(dim=1), true_variance * 9 / 8, rtol=1e-10, atol=0)
    # the estimator uses that factor on the players it draws
    result = perturbation_interaction_estimate(
        model,
        x,
        game.delta,
        Y,
        grid=3,
        form="single",
        num_samples=k,
        scale="paper",
        generator=torch.Generator().manual_seed(4),
    )
    drawn = sample_players(2, k, n, torch.Generator().manual_seed(4))
    expected_mean, expected_se = mean_and_stderr(terms.gather(1, drawn), dim=1, population=n)
    assert torch.allclose(result.per_image, expected_mean, atol=1e-12)
    assert torch.allclose(result.per_image_stderr, expected_se, atol=1e-15, rtol=1e-12)


def test_standard_errors_are_scipy_sem():
    samples = torch.randn(3, 4, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = scipy.stats.sem(samples.numpy(), axis=-1, ddof=1)
    assert np.allclose(sem(samples).numpy(), expected, rtol=1e-14, atol=0)
    assert torch.isnan(sem(samples[..., :1])).all()


# ------------------------------------------------------------------ 2. D^(m) with every pair
def test_disentanglement_standard_error_with_every_pair_follows_the_contexts():
    game = _table_game()
    orders = [2, 3, 4]  # C(7, m) = 21, 35, 35 contexts

    def run(contexts, seed):
        return disentanglement(
            game,
            orders,
            num_pairs=None,
            num_contexts=contexts,
            pairs="uniform",
            enumerate_contexts=False,
            generator=torch.Generator().manual_seed(seed),
        )

    few = torch.stack([run(10, seed).stderr for seed in range(3)]).mean(0)
    results = [run(160, seed) for seed in range(8)]
    many = torch.stack([r.stderr for r in results]).mean(0)
    spread = torch.stack([r.values for r in results]).std(0)
    # SE ~ 1/sqrt(T): 16x the contexts gives ~4x smaller errors (the old SE did not move with T)
    assert bool(((few / many) > 2.5).all() and ((few / many) < 6.5).all())
    # and it matches the spread over seeds (8 runs: a loose band)
    assert bool(((spread / many) > 0.4).all() and ((spread / many) < 2.0).all())
    # enumerated contexts: exact, zero standard error
    exact = exact_interactions(game)
    enumerated = disentanglement(game, orders, num_pairs=None, num_contexts=35, pairs="uniform")
    assert torch.allclose(enumerated.values, exact.disentanglement_pooled()[orders], atol=1e-12)
    assert torch.equal(enumerated.stderr, torch.zeros(3, dtype=torch.float64))


# ------------------------------------------------------------------ 3. rounding-noise pairs
def test_disentanglement_skips_pairs_that_do_not_interact():
    weights = torch.rand(9, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3.7 + 0.1

    def additive(s):
        return s.double() @ weights + 0.3

    game = synthetic_input_game(additive)
    exact = exact_interactions(game)
    noise = exact.multi_order.abs().max().item()
    assert 0 < noise < 1e-13  # the interactions are rounding noise, not exact zeros
    assert torch.isnan(exact.disentanglement).all() and torch.isnan(exact.disentanglement_per_pair).all()
    assert torch.isnan(exact.disentanglement_pooled()).all()
    assert torch.equal(exact.num_skipped_pairs, torch.full((1, 8), 36))
    result = disentanglement(
        game, [1, 4, 6], num_pairs=None, num_contexts=5, pairs="uniform", generator=torch.Generator().manual_seed(0)
    )
    assert torch.isnan(result.values).all() and torch.isnan(result.per_pair_form).all()
    assert torch.equal(result.num_skipped_pairs, torch.full((3,), 36))
    assert result.to_dict()["disentanglement/num_skipped_pairs/m4"] == 36.0
    # one interacting pair on top: only it counts, D = 1 exactly
    pair = synthetic_input_game(lambda s: additive(s) + (s[:, 0] & s[:, 4]).double())
    exact_pair = exact_interactions(pair)
    assert torch.allclose(exact_pair.disentanglement[0], torch.ones(8, dtype=torch.float64))
    assert torch.equal(exact_pair.num_skipped_pairs, torch.full((1, 8), 35))
    sampled = disentanglement(
        pair, [1, 4, 6], num_pairs=None, num_contexts=5, pairs="uniform", generator=torch.Generator().manual_seed(0)
    )
    assert torch.allclose(sampled.values, torch.ones(3, dtype=torch.float64))
    assert torch.allclose(sampled.per_pair_form, torch.ones(3, dtype=torch.float64))


# ------------------------------------------------------------------ 4. enumerated contexts
def test_enumerate_subsets_lists_every_subset_once():
    excluded = torch.tensor([[0, 3], [2, 4]])
    subsets = enumerate_subsets(excluded, 2, 6)
    assert subsets.shape == (2, 6, 6)
    for row, ex in zip(subsets, excluded.tolist()):
        assert not row[:, ex].any() and bool((row.sum(1) == 2).all())
        assert len({tuple(r.tolist()) for r in row}) == 6


def test_contexts_are_enumerated_when_there_are_few():
    model = make_tiny_cnn()
    game = InputGame(model, make_images(), Y, grid=3)
    exact = exact_interactions(game)
    orders = [0, 1, 2, 3]  # C(7, m) = 1, 7, 21, 35
    result = multi_order_interactions(
        game,
        orders,
        num_pairs=5,
        num_contexts=21,
        pairs="uniform",
        generator=torch.Generator().manual_seed(0),
        dedupe=False,
    )
    pairs = result.pairs
    images = torch.arange(2).view(-1, 1)
    expected = exact.multi_order[images, :, pairs[..., 0], pairs[..., 1]].permute(0, 2, 1)  # (B, O, P)
    assert torch.allclose(result.per_pair[:, :3], expected[:, orders[:3]], atol=1e-12, rtol=0)  # exact per pair
    assert torch.equal(result.per_pair_stderr[:, :3], torch.zeros(2, 3, 5, dtype=torch.float64))
    assert bool((result.per_pair_stderr[:, 3] > 0).all())  # 35 > 21 contexts: sampled
    assert result.num_forward_passes == 2 * 5 * 4 * (1 + 7 + 21 + 21)
    # the other orders' draws do not depend on the enumeration
    sampled = multi_order_interactions(
        game,
        orders,
        num_pairs=5,
        num_contexts=21,
        pairs="uniform",
        generator=torch.Generator().manual_seed(0),
        enumerate_contexts=False,
    )
    assert torch.equal(sampled.per_pair[:, 3], result.per_pair[:, 3])


# ------------------------------------------------------------------ 5. paired games, pair kinds
def test_interaction_change_checks_the_two_games():
    model = make_tiny_cnn()
    x = make_images()
    x_adv = (x + _delta(x, seed=1)).clamp(0, 1)
    clean = InputGame(model, x, Y, grid=3)
    options = {"num_pairs": 2, "num_contexts": 2}
    with pytest.raises(ValueError, match="same labels"):
        interaction_change(clean, InputGame(model, x_adv, torch.tensor([1, 2]), grid=3), [1], **options)
    with pytest.raises(ValueError, match="same value function"):
        interaction_change(clean, InputGame(model, x_adv, Y, grid=3, value="logit"), [1], **options)
    player_map = torch.zeros(9, 9, dtype=torch.long)
    player_map[:, 3:] = 1
    player_map[:, 6:] = 2
    player_map[5:] += 3
    other = InputGame(model, x_adv, Y, player_map=player_map)
    with pytest.raises(ValueError, match="same number of images and players|same players"):
        interaction_change(clean, other, [1], **options)
    with pytest.raises(TypeError, match="adversarial_game must be a MaskedGame"):
        interaction_change(clean, x_adv, [1], **options)


def test_neighbour_means_are_named_and_comparable_with_the_oracle():
    model = make_tiny_cnn()
    game = InputGame(model, make_images(), Y, grid=3)
    exact = exact_interactions(game)
    result = multi_order_interactions(game, [0, 7], num_pairs=None, num_contexts=1)  # neighbour pairs, exact orders
    assert result.pair_kind == "neighbour" and result.exhaustive_pairs
    like_for_like = exact.mean_over_pairs(neighbour_pairs(game.player_map))
    assert torch.allclose(result.per_image, like_for_like[:, [0, 7]], atol=1e-12)
    assert torch.allclose(exact.mean_over_pairs(result.pairs), like_for_like, atol=0)
    assert not torch.allclose(result.per_image, exact.all_pairs_interaction[:, [0, 7]], atol=1e-6)


# ------------------------------------------------------------------ 6. consistent result fields
def test_result_fields_and_deprecated_aliases():
    game = _table_game(1)
    exact = exact_interactions(game)
    with pytest.warns(DeprecationWarning, match="utility_sum"):
        assert torch.equal(exact.utility, exact.utility_sum)
    with pytest.warns(DeprecationWarning, match="value_table"):
        assert torch.equal(exact.values, exact.value_table)
    with pytest.warns(DeprecationWarning, match="all_pairs_interaction"):
        assert torch.equal(exact.mean_interaction, exact.all_pairs_interaction)
    n = 9
    assert torch.allclose(exact.utility_sum, n * (n - 1) * exact.utility_per_pair, atol=1e-12)
    shapley = shapley_values(game, num_permutations=4, generator=torch.Generator().manual_seed(0))
    assert shapley.values.shape == (9,) and shapley.per_image.shape == (1, 9)
    mos = multi_order_shapley(
        game, [0, 4], num_contexts=3, num_sampled_players=2, generator=torch.Generator().manual_seed(0)
    )
    assert mos.values.shape == (2,) and mos.per_image.shape == (1, 2) and mos.per_player.shape == (1, 2, 2)
    assert mos.num_players == 9 and mos.players.shape == (1, 2)


# ------------------------------------------------------------------ 7. approximator objects
def test_approximators_match_the_functions_and_own_their_state():
    model = make_tiny_cnn()
    x = make_images()
    game = InputGame(model, x, Y, grid=3)
    adv = InputGame(model, (x + _delta(x, seed=2)).clamp(0, 1), Y, grid=3)
    options = {"num_pairs": 4, "num_contexts": 3}
    function = multi_order_interactions(game, [2, 4], generator=torch.Generator().manual_seed(5), **options)
    approximator = MultiOrderApproximator(orders=[2, 4], random_state=5, **options)
    first, second = approximator.approximate(game), approximator.approximate(game)
    assert torch.equal(first.per_pair, function.per_pair) and torch.equal(second.per_pair, function.per_pair)
    before = game.forward_passes
    change = InteractionChangeApproximator(orders=[2, 4], random_state=5, **options).approximate(game, adv)
    assert game.forward_passes - before == change.clean.num_forward_passes
    assert torch.equal(change.clean.per_pair, function.per_pair)
    assert torch.equal(
        DisentanglementApproximator(orders=[2], random_state=1, **options).approximate(game).values,
        disentanglement(game, [2], generator=torch.Generator().manual_seed(1), **options).values,
    )
    assert torch.equal(
        ShapleyApproximator(num_permutations=3, random_state=2).approximate(game).per_image,
        shapley_values(game, num_permutations=3, generator=torch.Generator().manual_seed(2)).per_image,
    )
    assert torch.equal(
        MultiOrderShapleyApproximator(orders=[3], num_contexts=2, random_state=3).approximate(game).per_player,
        multi_order_shapley(game, [3], num_contexts=2, generator=torch.Generator().manual_seed(3)).per_player,
    )
    with pytest.raises(ValueError, match="max_forward_passes"):
        MultiOrderApproximator(orders=[2], max_forward_passes=10, **options).approximate(game)
    with pytest.raises(ValueError, match="num_contexts must be >= 1"):
        MultiOrderApproximator(num_contexts=0)
    with pytest.raises(ValueError, match="unknown form"):
        PerturbationInteractionApproximator(form="pairs")
    perturbation = PerturbationGame(model, x, _delta(x), Y, grid=3)
    result = PerturbationInteractionApproximator(num_samples=3, group_size=2, random_state=0).approximate(perturbation)
    assert result.num_forward_passes == perturbation.forward_passes == 2 * (2 + 2 * 3)


# ------------------------------------------------------------------ 8. grid_shape
@pytest.mark.parametrize("grid, expected", [(4, (4, 4)), ([2, 3], (2, 3)), ((3, 1), (3, 1))])
def test_grid_shape(grid, expected):
    assert grid_shape(grid) == expected


@pytest.mark.parametrize(
    "grid, error, match",
    [
        (True, TypeError, "an int L"),
        (2.5, TypeError, "an int L"),
        ("4", TypeError, "an int L"),
        ([2, 2, 2], TypeError, "pair"),
        ([2, 2.0], TypeError, "integers"),
        (0, ValueError, ">= 1"),
        ([1, 1], ValueError, "at least 2 cells"),
    ],
)
def test_grid_shape_errors(grid, error, match):
    with pytest.raises(error, match=match):
        grid_shape(grid, min_players=2)
    assert math.prod(grid_shape([1, 1])) == 1  # one cell is a valid grid for a game without pairs


def test_unknown_keywords_name_the_allowed_ones():
    game = _table_game(2)
    with pytest.raises(
        TypeError, match=r"multi_order_interactions\(\) got unknown keyword\(s\) num_pair; allowed: .*num_pairs"
    ):
        multi_order_interactions(game, [1], num_pair=3)
    with pytest.raises(
        TypeError, match=r"perturbation_interaction_estimate\(\) got unknown keyword\(s\) samples; allowed: grid"
    ):
        x = make_images()
        perturbation_interaction_estimate(make_tiny_cnn(), x, torch.zeros_like(x), Y, grid=3, samples=3)
    with pytest.raises(TypeError, match="pass num_sampled_players= only"):
        multi_order_shapley(game, [1], num_players=2, num_sampled_players=2)
