"""Multi-order interaction estimator I^(m): convergence to the oracle, seeds, pairs, budget."""

from __future__ import annotations

import pytest
import torch

from lit_advgame.interactions import (
    InputGame,
    exact_interactions,
    multi_order_interactions,
    neighbour_pairs,
    sample_pair_deltas,
)
from tests.interactions.helpers import make_images, make_tiny_cnn, synthetic_input_game

ORDERS = [0, 1, 2, 3, 4, 5, 6, 7]


@pytest.fixture(scope="module")
def game_and_exact():
    model = make_tiny_cnn()
    game = InputGame(model, make_images(), torch.tensor([1, 3]), grid=3)
    return game, exact_interactions(game)


def _within(estimate, stderr, exact, k=4.0):
    return bool(((estimate - exact).abs() <= k * stderr + 1e-12).all())


def test_all_pairs_estimate_converges_within_standard_errors(game_and_exact):
    game, exact = game_and_exact
    # C(7, m) <= 60 for every order: sample anyway to check the sampler's standard errors
    result = multi_order_interactions(
        game,
        ORDERS,
        num_pairs=None,
        num_contexts=60,
        pairs="uniform",
        generator=torch.Generator().manual_seed(0),
        enumerate_contexts=False,
    )
    assert result.per_pair.shape == (2, 8, 36) and result.pairs.shape == (2, 36, 2)
    assert _within(result.per_image, result.per_image_stderr, exact.all_pairs_interaction)
    assert _within(result.values, result.stderr, exact.all_pairs_interaction.mean(0))
    iu = result.pairs[0]
    exact_pairs = exact.multi_order[:, :, iu[:, 0], iu[:, 1]]
    # 576 per-pair estimates: all within 5 SE, and the standard errors are calibrated (~95% within 2 SE)
    assert _within(result.per_pair, result.per_pair_stderr, exact_pairs, k=5.0)
    sampled = result.per_pair_stderr > 0
    z = (result.per_pair - exact_pairs).abs()[sampled] / result.per_pair_stderr[sampled]
    assert 0.88 <= (z <= 2).double().mean().item() <= 0.995
    # orders with a single context (m = 0 and m = n - 2) are exact
    assert torch.allclose(result.per_pair[:, [0, 7]], exact_pairs[:, [0, 7]], atol=1e-12)


def test_sampled_pairs_estimate_converges(game_and_exact):
    game, exact = game_and_exact
    result = multi_order_interactions(
        game, ORDERS, num_pairs=12, num_contexts=30, pairs="uniform", generator=torch.Generator().manual_seed(1)
    )
    assert _within(result.per_image, result.per_image_stderr, exact.all_pairs_interaction)
    assert bool((result.per_image_stderr[:, 1:7] > 0).all())


def test_error_shrinks_with_more_contexts(game_and_exact):
    game, exact = game_and_exact
    errors = []
    for contexts in (4, 200):
        result = multi_order_interactions(
            game,
            ORDERS,
            num_pairs=None,
            num_contexts=contexts,
            pairs="uniform",
            generator=torch.Generator().manual_seed(2),
            enumerate_contexts=False,
        )
        iu = result.pairs[0]
        diff = result.per_pair - exact.multi_order[:, :, iu[:, 0], iu[:, 1]]
        errors.append(diff.pow(2).mean().sqrt().item())
        stderr_scale = result.per_pair_stderr[:, 1:7].mean().item()
    assert errors[1] < 0.3 * errors[0]  # ~ sqrt(4 / 200) = 0.14 expected
    assert stderr_scale > 0


def test_synthetic_unanimity_game_through_the_engine():
    # v(S) = 1[{0, 4, 8} ⊆ S] on a 3x3 grid: I^(m)_ij = m / (n - 2) for i, j in the set, else 0
    game = synthetic_input_game(lambda s: (s[:, 0] & s[:, 4] & s[:, 8]).double())
    result = multi_order_interactions(
        game, ORDERS, num_pairs=None, num_contexts=200, pairs="uniform", generator=torch.Generator().manual_seed(3)
    )
    pairs = [tuple(p) for p in result.pairs[0].tolist()]
    for k, pair in enumerate(pairs):
        estimate, stderr = result.per_pair[0, :, k], result.per_pair_stderr[0, :, k]
        if set(pair) <= {0, 4, 8}:
            expected = torch.tensor([m / 7 for m in ORDERS], dtype=torch.float64)
            assert _within(estimate, stderr, expected)
            assert torch.allclose(estimate[[0, 7]], expected[[0, 7]])
        elif not set(pair) & {0, 4, 8}:
            assert torch.equal(estimate, torch.zeros(8, dtype=torch.float64))


def test_neighbour_pairs_default_and_reproducibility(game_and_exact):
    game, _ = game_and_exact
    first = multi_order_interactions(
        game, [0.3, 0.6], num_pairs=6, num_contexts=5, generator=torch.Generator().manual_seed(4)
    )
    second = multi_order_interactions(
        game, [0.3, 0.6], num_pairs=6, num_contexts=5, generator=torch.Generator().manual_seed(4)
    )
    other = multi_order_interactions(
        game, [0.3, 0.6], num_pairs=6, num_contexts=5, generator=torch.Generator().manual_seed(5)
    )
    assert torch.equal(first.per_pair, second.per_pair) and torch.equal(first.pairs, second.pairs)
    assert not torch.equal(first.per_pair, other.per_pair)
    allowed = {tuple(p) for p in neighbour_pairs(game.player_map).tolist()}
    assert all(tuple(p) in allowed for p in first.pairs.reshape(-1, 2).tolist())
    assert first.orders == (int(7 * 0.3), int(7 * 0.6)) and first.ratios == (0.3, 0.6)
    d = first.to_dict("interaction")
    assert set(d) == {
        "interaction/r0.30",
        "interaction/r0.30_stderr",
        "interaction/r0.60",
        "interaction/r0.60_stderr",
        "interaction/num_forward_passes",
    }
    assert all(isinstance(v, float) for v in d.values())
    assert first.num_forward_passes <= 2 * 2 * 6 * 5 * 4 + 2


def test_dedupe_does_not_change_values(game_and_exact):
    game, _ = game_and_exact
    kwargs = {"num_pairs": None, "num_contexts": 6, "pairs": "uniform", "enumerate_contexts": False}
    orders = [0, 1, 6, 7]
    plain = multi_order_interactions(game, orders, dedupe=False, generator=torch.Generator().manual_seed(6), **kwargs)
    deduped = multi_order_interactions(game, orders, dedupe=True, generator=torch.Generator().manual_seed(6), **kwargs)
    auto = multi_order_interactions(game, orders, generator=torch.Generator().manual_seed(6), **kwargs)
    assert torch.allclose(plain.per_pair, deduped.per_pair, atol=1e-12, rtol=0)
    assert torch.allclose(plain.per_pair, auto.per_pair, atol=1e-12, rtol=0)
    assert plain.num_forward_passes == 2 * 4 * 36 * 6 * 4
    assert deduped.num_forward_passes < plain.num_forward_passes / 10


def test_budget_and_argument_errors(game_and_exact):
    game, _ = game_and_exact
    before = game.forward_passes
    with pytest.raises(ValueError, match="max_forward_passes"):
        multi_order_interactions(game, "reference", num_pairs=10, num_contexts=100, max_forward_passes=10_000)
    assert game.forward_passes == before
    with pytest.raises(ValueError, match="outside"):
        multi_order_interactions(game, [8], num_pairs=2, num_contexts=2)
    with pytest.raises(ValueError, match="num_contexts must be >= 1"):
        multi_order_interactions(game, [1], num_pairs=2, num_contexts=0)
    with pytest.raises(ValueError, match="unknown pair sampler"):
        multi_order_interactions(game, [1], num_pairs=2, num_contexts=2, pairs="random")
    other = InputGame(make_tiny_cnn(), make_images(height=12, width=12), torch.tensor([0, 1]), grid=4)
    with pytest.raises(ValueError, match="same number of images and players"):
        sample_pair_deltas([game, other], [1], num_pairs=2, num_contexts=2)
