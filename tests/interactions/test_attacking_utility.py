"""ΔI^(m), ΔJ^(m) and shares: paired estimates against the oracle."""

from __future__ import annotations

import pytest
import torch

from lit_advgame.interactions import (
    InputGame,
    PairSampling,
    disentanglement,
    disentanglement_from_samples,
    exact_interactions,
    interaction_change,
    interaction_change_from_samples,
    multi_order_interactions,
)
from tests.interactions.helpers import make_images, make_tiny_cnn

ORDERS = [0, 1, 2, 4, 6, 7]


@pytest.fixture(scope="module")
def games():
    model = make_tiny_cnn()
    x = make_images()
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(9), dtype=x.dtype)
    x_adv = (x + 0.3 * (noise - 0.5)).clamp(0, 1)
    y = torch.tensor([1, 3])
    clean, adv = InputGame(model, x, y, grid=3), InputGame(model, x_adv, y, grid=3)
    return clean, adv, exact_interactions(clean), exact_interactions(adv)


def test_same_pairs_and_contexts_for_both_inputs(games):
    clean, adv, _, _ = games
    kwargs = {"num_pairs": 5, "num_contexts": 4}
    change = interaction_change(clean, adv, ORDERS, generator=torch.Generator().manual_seed(0), **kwargs)
    alone_clean = multi_order_interactions(clean, ORDERS, generator=torch.Generator().manual_seed(0), **kwargs)
    alone_adv = multi_order_interactions(adv, ORDERS, generator=torch.Generator().manual_seed(0), **kwargs)
    # the paired run draws exactly what each single run draws
    assert torch.equal(change.clean.pairs, alone_clean.pairs) and torch.equal(change.adversarial.pairs, alone_adv.pairs)
    assert torch.allclose(change.clean.per_pair, alone_clean.per_pair, atol=1e-12)
    assert torch.allclose(change.adversarial.per_pair, alone_adv.per_pair, atol=1e-12)
    assert torch.allclose(change.per_pair, alone_clean.per_pair - alone_adv.per_pair, atol=1e-12)
    # identical inputs: the paired difference is exactly zero, with zero standard error
    same = interaction_change(clean, clean, ORDERS, generator=torch.Generator().manual_seed(0), **kwargs)
    assert torch.equal(same.values, torch.zeros_like(same.values))
    assert torch.equal(same.stderr, torch.zeros_like(same.stderr))


def test_change_from_shared_samples_equals_the_estimator_and_gives_d_for_free(games):
    """One draw of samples on (clean, adv) gives ΔI^(m) as interaction_change and D^(m) as disentanglement."""
    clean, adv, _, _ = games
    kwargs = {"num_pairs": 5, "num_contexts": 4}
    samples = PairSampling(orders=ORDERS, random_state=0, **kwargs).sample([clean, adv])
    shared = interaction_change_from_samples(samples)
    change = interaction_change(clean, adv, ORDERS, generator=torch.Generator().manual_seed(0), **kwargs)
    for name in ("values", "stderr", "per_image", "per_pair", "utility", "utility_stderr", "utility_sum", "share"):
        assert torch.equal(getattr(shared, name), getattr(change, name)), name
    assert torch.equal(shared.clean.values, change.clean.values)
    assert torch.equal(shared.adversarial.values, change.adversarial.values)
    # the games swapped: the change flips sign, its shares stay
    swapped = interaction_change_from_samples(samples, clean_index=1, adversarial_index=0)
    assert torch.equal(swapped.values, -change.values) and torch.equal(swapped.share, change.share)
    alone = disentanglement(clean, ORDERS, generator=torch.Generator().manual_seed(0), **kwargs)
    from_samples = disentanglement_from_samples(samples, 0)
    assert torch.equal(from_samples.values, alone.values) and torch.equal(from_samples.stderr, alone.stderr)


def test_change_and_utility_converge_to_the_oracle(games):
    clean, adv, exact_clean, exact_adv = games
    change = interaction_change(
        clean, adv, ORDERS, num_pairs=None, num_contexts=80, pairs="uniform", generator=torch.Generator().manual_seed(1)
    )
    n = 9
    exact_delta = (exact_clean.all_pairs_interaction - exact_adv.all_pairs_interaction)[:, ORDERS]
    assert bool(((change.per_image - exact_delta).abs() <= 4 * change.per_image_stderr + 1e-12).all())
    weights = torch.tensor([(n - 1 - m) / (n * (n - 1)) for m in ORDERS], dtype=torch.float64)
    assert torch.allclose(change.weights, weights)
    assert torch.allclose(change.utility, weights * change.values)
    # with all pairs, the ordered-pair sum estimates the exact ΔJ^(m) of the efficiency decomposition
    exact_utility = (exact_clean.utility_sum - exact_adv.utility_sum).mean(0)[ORDERS]
    assert bool(((change.utility_sum - exact_utility).abs() <= 4 * n * (n - 1) * change.utility_stderr + 1e-12).all())
    assert torch.allclose(change.share.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert bool((change.share >= 0).all())
    assert torch.allclose(change.share, change.values.abs() / change.values.abs().sum())
    d = change.to_dict("interaction")
    assert "interaction/delta/m4" in d and "interaction/utility/m4_stderr" in d and "interaction/share/m0" in d
    assert (
        d["interaction/num_forward_passes"] == change.clean.num_forward_passes + change.adversarial.num_forward_passes
    )


def test_efficiency_decomposition_of_the_attack_on_the_oracle(games):
    _, _, exact_clean, exact_adv = games
    # Eq. 3: Δv(N) = Δv(∅) + Σ_i Δφ^(0)(i) + Σ_m ΔJ^(m)
    delta_full = exact_clean.full_value - exact_adv.full_value
    delta_empty = exact_clean.empty_value - exact_adv.empty_value
    delta_phi0 = (
        (exact_clean.singleton_values - exact_clean.empty_value[:, None])
        - (exact_adv.singleton_values - exact_adv.empty_value[:, None])
    ).sum(1)
    delta_j = (exact_clean.utility_sum - exact_adv.utility_sum).sum(1)
    assert torch.allclose(delta_full, delta_empty + delta_phi0 + delta_j, atol=1e-12)
