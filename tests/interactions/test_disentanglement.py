"""Disentanglement D^(m): ratio of means and per-pair form against the oracle."""

from __future__ import annotations

import torch

from lit_advgame.interactions import InputGame, disentanglement, exact_interactions
from tests.interactions.helpers import make_images, make_tiny_cnn, synthetic_input_game

ORDERS = [0, 1, 3, 5, 7]


def test_converges_to_the_exact_ratio_of_means():
    model = make_tiny_cnn()
    game = InputGame(model, make_images(), torch.tensor([1, 3]), grid=3)
    exact = exact_interactions(game)
    result = disentanglement(
        game, ORDERS, num_pairs=None, num_contexts=300, pairs="uniform", generator=torch.Generator().manual_seed(0)
    )
    expected = exact.disentanglement_pooled()[ORDERS]
    # |mean| over T contexts is biased up by O(se / sqrt(T)); allow the SE band plus that bias
    assert bool(((result.values - expected).abs() <= 4 * result.stderr + 0.02).all())
    assert torch.allclose(result.values[[0, 4]], expected[[0, 4]], atol=1e-12)  # single-context orders are exact
    assert torch.allclose(result.per_image[:, [0, 4]], exact.disentanglement[:, ORDERS][:, [0, 4]], atol=1e-12)
    assert torch.allclose(
        result.per_pair_form[[0, 4]], exact.disentanglement_per_pair.mean(0)[ORDERS][[0, 4]], atol=1e-12
    )
    assert bool(((result.values > 0) & (result.values <= 1)).all())
    assert set(result.to_dict()) >= {
        "disentanglement/m3",
        "disentanglement/m3_stderr",
        "disentanglement/per_pair_form/m3",
    }


def test_sign_flipping_synthetic_game():
    # Δ_01(S) = +1 if player 2 ∈ S else -1, so for pair (0, 1): |I^(m)| / E|Δ| = |2m/(n-2) - 1| (n = 9)
    fn = lambda s: (s[:, 0] & s[:, 1]).double() * torch.where(s[:, 2], 1.0, -1.0).double()
    game = synthetic_input_game(fn)
    exact = exact_interactions(game)
    result = disentanglement(
        game, ORDERS, num_pairs=None, num_contexts=400, pairs="uniform", generator=torch.Generator().manual_seed(1)
    )
    expected = exact.disentanglement_pooled()[ORDERS]
    assert bool(((result.values - expected).abs() <= 4 * result.stderr + 0.03).all())
    assert torch.allclose(result.values[0], torch.tensor(1.0, dtype=torch.float64))  # m = 0: every component -1
    consistent = synthetic_input_game(lambda s: (s[:, 0] & s[:, 1]).double())
    ones = disentanglement(
        consistent, ORDERS, num_pairs=None, num_contexts=5, pairs="uniform", generator=torch.Generator().manual_seed(2)
    )
    assert torch.allclose(ones.values, torch.ones(5, dtype=torch.float64))
    assert torch.allclose(ones.per_pair_form, torch.ones(5, dtype=torch.float64))
