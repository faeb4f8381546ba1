"""Exact oracle: synthetic games with known interactions, brute force, and the identities."""

from __future__ import annotations

from math import comb

import numpy as np
import pytest
import torch

from lit_advgame.interactions import (
    InputGame,
    PerturbationGame,
    all_coalitions,
    exact_from_values,
    exact_interactions,
)
from tests.interactions.helpers import brute_force_indices, make_images, make_tiny_cnn


def test_all_coalitions_bit_order():
    coalitions = all_coalitions(3)
    assert coalitions.shape == (8, 3)
    assert coalitions[5].tolist() == [True, False, True]  # 5 = 0b101


def test_additive_game_has_no_interactions():
    weights = torch.tensor([0.5, -1.0, 2.0, 0.25, 3.0], dtype=torch.float64)
    exact = exact_interactions(lambda s: s.double() @ weights + 7.0, num_players=5)
    assert torch.allclose(exact.multi_order, torch.zeros_like(exact.multi_order), atol=1e-12)
    assert torch.allclose(exact.shapley_interaction, torch.zeros(1, 5, 5, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(exact.shapley[0], weights)
    assert torch.allclose(exact.multi_order_shapley[0], weights.expand(5, 5))
    assert torch.allclose(exact.utility_sum, torch.zeros_like(exact.utility_sum), atol=1e-12)
    assert torch.allclose(exact.average_interaction, torch.zeros(1, dtype=torch.float64), atol=1e-12)


def test_pair_indicator_game():
    n, p, q = 6, 1, 4
    exact = exact_interactions(lambda s: (s[:, p] & s[:, q]).double(), num_players=n)
    expected = torch.zeros(n, n, dtype=torch.float64)
    expected[p, q] = expected[q, p] = 1.0
    assert torch.allclose(exact.multi_order[0], expected.expand(n - 1, n, n))  # I^(m)_pq = 1 for every m
    assert torch.allclose(exact.shapley_interaction[0], expected)
    assert torch.allclose(exact.shapley[0, [p, q]], torch.tensor([0.5, 0.5], dtype=torch.float64))
    # J^(m) sums over ordered pairs: 2 * w(m) with w(m) = (n-1-m)/(n(n-1)); sum over m = v(N) - v(empty) = 1
    w = torch.tensor([(n - 1 - m) / (n * (n - 1)) for m in range(n - 1)], dtype=torch.float64)
    assert torch.allclose(exact.utility_sum[0], 2 * w)
    assert exact.utility_sum.sum().item() == pytest.approx(1.0)
    assert torch.allclose(exact.disentanglement[0], torch.ones(n - 1, dtype=torch.float64))


def test_unanimity_game_orders():
    # v(S) = 1[T ⊆ S] for T = {0, 2, 3}: I^(m)_ij = P(k ∈ S) = m/(n-2) for i, j ∈ T (k the third member)
    n = 7
    exact = exact_interactions(lambda s: (s[:, 0] & s[:, 2] & s[:, 3]).double(), num_players=n)
    expected = torch.tensor([m / (n - 2) for m in range(n - 1)], dtype=torch.float64)
    for i, j in [(0, 2), (0, 3), (2, 3)]:
        assert torch.allclose(exact.multi_order[0, :, i, j], expected)
    assert torch.allclose(exact.multi_order[0, :, 0, 1], torch.zeros(n - 1, dtype=torch.float64))
    assert torch.allclose(exact.shapley[0, [0, 2, 3]], torch.full((3,), 1 / 3, dtype=torch.float64))


def test_sign_flipping_game_disentanglement():
    # Δ_01(S) = +1 if player 2 ∈ S else -1: I^(m) = 2m/(n-2) - 1, E|Δ| = 1, D^(m) = |2m/(n-2) - 1|
    n = 6
    fn = lambda s: (s[:, 0] & s[:, 1]).double() * torch.where(s[:, 2], 1.0, -1.0).double()
    exact = exact_interactions(fn, num_players=n)
    expected = torch.tensor([2 * m / (n - 2) - 1 for m in range(n - 1)], dtype=torch.float64)
    assert torch.allclose(exact.multi_order[0, :, 0, 1], expected)
    assert torch.allclose(exact.multi_order_abs[0, :, 0, 1], torch.ones(n - 1, dtype=torch.float64))
    ratio = exact.multi_order.abs() / exact.multi_order_abs  # per pair (NaN where E|Δ| = 0)
    assert torch.allclose(ratio[0, :, 0, 1], expected.abs())
    iu = torch.triu_indices(n, n, offset=1)
    pairs_ratio = ratio[0][:, iu[0], iu[1]]
    valid = exact.multi_order_abs[0][:, iu[0], iu[1]] > 0
    per_pair = torch.stack([pairs_ratio[m][valid[m]].mean() for m in range(n - 1)])
    assert torch.allclose(exact.disentanglement_per_pair[0], per_pair)
    numerator = exact.multi_order[0][:, iu[0], iu[1]].abs().mean(1)
    denominator = exact.multi_order_abs[0][:, iu[0], iu[1]].mean(1)
    assert torch.allclose(exact.disentanglement[0], numerator / denominator)


def test_random_game_matches_brute_force():
    n = 6
    values = torch.randn(1 << n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = exact_from_values(values)
    brute = brute_force_indices(values.numpy(), n)
    assert np.allclose(exact.shapley[0].numpy(), brute["shapley"])
    assert np.allclose(exact.multi_order_shapley[0].numpy(), brute["phi_m"])
    assert np.allclose(exact.shapley_interaction[0].numpy(), brute["sii"])
    assert np.allclose(exact.banzhaf_interaction[0].numpy(), brute["bii"])
    assert np.allclose(exact.multi_order[0].numpy(), brute["order"])


def _check_identities(exact):
    n = exact.num_players
    iu = torch.triu_indices(n, n, offset=1)
    # Shapley interaction = mean over orders of I^(m); Banzhaf = binomial average
    assert torch.allclose(exact.shapley_interaction, exact.multi_order.mean(dim=1), atol=1e-12, rtol=0)
    binomial = torch.tensor([comb(n - 2, m) / 2 ** (n - 2) for m in range(n - 1)], dtype=torch.float64)
    assert torch.allclose(
        exact.banzhaf_interaction, torch.einsum("bmij,m->bij", exact.multi_order, binomial), atol=1e-12
    )
    # Shapley value = mean over orders of phi^(m)
    assert torch.allclose(exact.shapley, exact.multi_order_shapley.mean(dim=1), atol=1e-12, rtol=0)
    # efficiency: v(N) - v(∅) = Σ_i [v({i}) - v(∅)] + Σ_m J^(m)  (J over ordered pairs)
    assert torch.allclose(exact.efficiency_residual(), torch.zeros_like(exact.full_value), atol=1e-12)
    # Shapley efficiency
    assert torch.allclose(exact.shapley.sum(1), exact.full_value - exact.empty_value, atol=1e-12)
    # IR paper Eq. 4 / Appendix F: mean_{i<j} SII = 1/(n-1) mean_i [v(N) - v(N\i) - v(i) + v(∅)]
    mean_sii = exact.shapley_interaction[:, iu[0], iu[1]].mean(dim=1)
    assert torch.allclose(mean_sii, exact.average_interaction, atol=1e-12, rtol=0)
    # marginal attribution (supplement B.3): phi^(m+1)_i - phi^(m)_i = mean_{j≠i} I^(m)_ij
    step = exact.multi_order_shapley[:, 1:] - exact.multi_order_shapley[:, :-1]  # (B, n-1, n)
    assert torch.allclose(step, exact.multi_order.sum(dim=3) / (n - 1), atol=1e-12)
    # the per-pair-mean convention of the reference plot is J / (n(n-1))
    assert torch.allclose(exact.utility_per_pair * n * (n - 1), exact.utility_sum, atol=1e-12)


@pytest.mark.parametrize("grid, size, batch", [(3, 9, 2), ((3, 4), 12, 1)])
def test_identities_on_a_tiny_cnn(grid, size, batch):
    model = make_tiny_cnn()
    x = make_images(batch=batch, height=size, width=size)
    game = InputGame(model, x, torch.tensor([1, 3])[:batch], grid=grid, batch_size=512)
    exact = exact_interactions(game)
    n = game.num_players
    assert exact.num_forward_passes == batch * 2**n
    assert exact.multi_order.abs().max() > 1e-4  # a non-trivial game
    _check_identities(exact)
    # the value table is the engine's
    assert torch.allclose(exact.value_table, game.evaluate(all_coalitions(n)).double(), atol=1e-12)


def test_identities_on_a_perturbation_game():
    model = make_tiny_cnn()
    x = make_images()
    delta = 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=x.dtype)
    delta = (x + delta).clamp(0, 1) - x  # x + delta must stay in [0, 1]
    exact = exact_interactions(PerturbationGame(model, x, delta, torch.tensor([1, 3]), grid=3, value="margin_max"))
    _check_identities(exact)


def test_inputs_forms_agree_and_dict():
    values = torch.randn(2, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    from_table = exact_interactions(values)
    from_callable = exact_interactions(lambda s: values, num_players=4)
    assert torch.equal(from_table.multi_order, from_callable.multi_order)
    d = from_table.to_dict()
    assert all(isinstance(v, float) for v in d.values())
    assert set(d) >= {
        "exact/all_pairs_interaction/m0",
        "exact/utility/m2",
        "exact/utility_sum/m2",
        "exact/disentanglement/m1",
        "exact/average_interaction",
    }
    # utility is per pair, as in the sampled results; utility_sum sums over ordered pairs (Eq. 3)
    assert d["exact/utility/m2"] == pytest.approx(float(from_table.utility_per_pair[:, 2].mean()))
    assert d["exact/utility_sum/m2"] == pytest.approx(float(from_table.utility_sum[:, 2].mean()))


def test_exact_errors():
    model = make_tiny_cnn()
    x = make_images(height=10, width=10)
    big = InputGame(model, x, torch.tensor([0, 1]), grid=(5, 4))  # 20 players
    with pytest.raises(ValueError, match="at most 16 players"):
        exact_interactions(big)
    game = InputGame(model, x, torch.tensor([0, 1]), grid=3)
    with pytest.raises(ValueError, match="max_forward_passes"):
        exact_interactions(game, max_forward_passes=1000)
    assert game.forward_passes == 0  # refused before any work
    with pytest.raises(ValueError, match="2\\^n entries"):
        exact_from_values(torch.zeros(12))
    with pytest.raises(ValueError, match="num_players is required"):
        exact_interactions(lambda s: s.sum(1))
    with pytest.raises(ValueError, match="NaN"):
        exact_from_values(torch.full((8,), float("nan")))
