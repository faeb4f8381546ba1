"""Shapley values and multi-order Shapley values by sampling."""
from __future__ import annotations

import pytest
import torch

from lit_advgame.interactions import (
    InputGame,
    exact_interactions,
    multi_order_shapley,
    shapley_values,
)
from tests.interactions.helpers import make_images, make_tiny_cnn


@pytest.fixture(scope="module")
def game_and_exact():
    game = InputGame(make_tiny_cnn(), make_images(), torch.tensor([1, 3]), grid=3)
    return game, exact_interactions(game)


def test_permutation_shapley_converges(game_and_exact):
    game, exact = game_and_exact
    small = shapley_values(game, num_permutations=8, generator=torch.Generator().manual_seed(0))
    large = shapley_values(game, num_permutations=400, generator=torch.Generator().manual_seed(0))
    assert bool(((large.values - exact.shapley).abs() <= 4 * large.stderr + 1e-12).all())
    assert (large.values - exact.shapley).abs().mean() < 0.35 * (small.values - exact.shapley).abs().mean()
    # every permutation satisfies efficiency, hence so does the estimate
    assert torch.allclose(large.values.sum(1), exact.full_value - exact.empty_value, atol=1e-10)
    assert large.num_forward_passes <= 2 * 400 * 10
    again = shapley_values(game, num_permutations=8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.values, small.values)
    assert "shapley/player0" in small.to_dict() and "shapley/num_forward_passes" in small.to_dict()


def test_multi_order_shapley_converges(game_and_exact):
    game, exact = game_and_exact
    orders = [0, 2, 4, 7, 8]
    result = multi_order_shapley(game, orders, num_contexts=100, generator=torch.Generator().manual_seed(1))
    expected = exact.multi_order_shapley[:, orders]  # (B, O, n)
    assert result.values.shape == (2, 5, 9)
    assert bool(((result.values - expected).abs() <= 4 * result.stderr + 1e-12).all())
    # m = 0 and m = n-1 have a single context: v({i}) - v(∅) and v(N) - v(N \\ {i})
    assert torch.allclose(result.values[:, 0], exact.singleton_values - exact.empty_value[:, None], atol=1e-12)
    assert torch.allclose(result.values[:, 4], expected[:, 4], atol=1e-12)
    assert bool(((result.mean_over_players - expected.mean((0, 2))).abs() <= 4 * result.mean_over_players_stderr + 1e-12).all())
    sampled = multi_order_shapley(game, [0.5], num_contexts=20, num_players=4, generator=torch.Generator().manual_seed(2))
    assert sampled.players.shape == (2, 4) and sampled.orders == (4,)
    with pytest.raises(ValueError, match="outside"):
        multi_order_shapley(game, [9], num_contexts=2)
