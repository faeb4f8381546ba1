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
    assert bool(((large.per_image - exact.shapley).abs() <= 4 * large.per_image_stderr + 1e-12).all())
    assert (large.per_image - exact.shapley).abs().mean() < 0.35 * (small.per_image - exact.shapley).abs().mean()
    # values: the mean over images (like every result's values), with the combined standard error
    assert torch.allclose(large.values, large.per_image.mean(0), atol=0)
    assert bool(((large.values - exact.shapley.mean(0)).abs() <= 4 * large.stderr + 1e-12).all())
    # every permutation satisfies efficiency, hence so does the estimate
    assert torch.allclose(large.per_image.sum(1), exact.full_value - exact.empty_value, atol=1e-10)
    assert large.num_forward_passes <= 2 * 400 * 10
    again = shapley_values(game, num_permutations=8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.per_image, small.per_image)
    assert "shapley/player0" in small.to_dict() and "shapley/num_forward_passes" in small.to_dict()


def test_multi_order_shapley_converges(game_and_exact):
    game, exact = game_and_exact
    orders = [0, 2, 4, 7, 8]
    # 20 < C(8, m) for m = 2, 4 (28, 70): sampled; m = 0, 7, 8 have at most 8 contexts: enumerated
    result = multi_order_shapley(game, orders, num_contexts=20, generator=torch.Generator().manual_seed(1))
    expected = exact.multi_order_shapley[:, orders]  # (B, O, n)
    assert result.per_player.shape == (2, 5, 9) and result.values.shape == (5,) and result.per_image.shape == (2, 5)
    assert bool(((result.per_player - expected).abs() <= 4 * result.per_player_stderr + 1e-12).all())
    assert bool((result.per_player_stderr[:, 1:3] > 0).all())
    # m = 0 and m = n-1 have a single context: v({i}) - v(∅) and v(N) - v(N \\ {i})
    assert torch.allclose(result.per_player[:, 0], exact.singleton_values - exact.empty_value[:, None], atol=1e-12)
    assert torch.allclose(result.per_player[:, 3:], expected[:, 3:], atol=1e-12)  # enumerated: exact
    assert torch.equal(result.per_player_stderr[:, [0, 3, 4]], torch.zeros(2, 3, 9, dtype=torch.float64))
    assert bool(((result.values - expected.mean((0, 2))).abs() <= 4 * result.stderr + 1e-12).all())
    with pytest.warns(DeprecationWarning, match="values"):
        assert torch.equal(result.mean_over_players, result.values)
    with pytest.warns(DeprecationWarning, match="num_sampled_players"):
        old = multi_order_shapley(
            game, [0.5], num_contexts=20, num_players=4, generator=torch.Generator().manual_seed(2)
        )
    sampled = multi_order_shapley(
        game, [0.5], num_contexts=20, num_sampled_players=4, generator=torch.Generator().manual_seed(2)
    )
    assert torch.equal(old.per_player, sampled.per_player)
    assert sampled.players.shape == (2, 4) and sampled.orders == (4,)
    with pytest.raises(ValueError, match="outside"):
        multi_order_shapley(game, [9], num_contexts=2)
