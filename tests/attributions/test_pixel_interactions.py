"""Perturbation-pixel rewards and interactions (Wang et al., ICCV 2021, Eq. 5–9) against the exact oracle."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from lit_advgame.attributions import (
    TaylorRewardApproximator,
    coalition_interactions,
    group_rewards,
    superpixel_game,
)
from tests.attributions.games import polynomial_game

#: a game with pair, triple, single and squared (non-multilinear) terms: strong interactions
TERMS = {(0, 1): 1.0, (2,): 0.5, (1, 2, 3): 2.0, (0, 0): 1.0}


def small_cnn_game(eps: float = 0.25) -> object:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 64, 3)).double()
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64) * 0.5 + 0.25
    delta = (torch.rand_like(x) * 2 - 1) * eps
    return superpixel_game(model, x, delta, torch.tensor([0, 1]), torch.tensor([2, 2]), superpixel=4)


def test_superpixel_game_is_the_target_minus_true_perturbation_game():
    game = small_cnn_game()
    assert game.num_players == 4 and game.value.name == "target_minus_true"
    values = game.evaluate(torch.tensor([[True] * 4, [False] * 4]))
    with torch.no_grad():
        adv, clean = game.model(game.absent + game.delta), game.model(game.absent)
    assert torch.allclose(values[:, 0], adv[:, 2] - adv.gather(1, game.labels.view(-1, 1))[:, 0])
    assert torch.allclose(values[:, 1], clean[:, 2] - clean.gather(1, game.labels.view(-1, 1))[:, 0])


@pytest.mark.parametrize("rule", ["reference", "trapezoid", "removal"])
def test_taylor_approximation_matches_the_exact_shapley_values_of_a_small_cnn(rule):
    # measured (2-image 8x8 tanh CNN, |δ| <= 0.25, 4 players, K=10, T=30): max relative error 0.0004-0.0005
    # for the three rules (this net is nearly linear in δ); the bound below is 0.005 of the largest |φ|
    game = small_cnn_game()
    exact = group_rewards(game, torch.arange(4), estimator="exact").per_image
    approx = group_rewards(game, torch.arange(4), estimator="taylor", rule=rule, num_permutations=30, random_state=0)
    error = (approx.per_image - exact).abs().max() / exact.abs().max()
    print(f"rule={rule}: relative approximation error {error:.5f}")
    assert error < 0.005
    assert approx.num_forward_passes == 2 * 30 * (40 + (rule != "reference"))


def test_taylor_approximation_on_a_strongly_interacting_game():
    # φ = (1.5, 7/6, 7/6, 2/3); measured with K=10, T=200: max error 0.047 (reference: the left Riemann sum loses
    # ~1/K of z(N) − z(∅) = 4.5), 0.016 (trapezoid), 0.023 (removal, all Monte Carlo: within 1 standard error)
    game = polynomial_game(TERMS)
    exact = group_rewards(game, torch.arange(4), estimator="exact").per_image
    assert torch.allclose(exact, torch.tensor([[1.5, 7 / 6, 7 / 6, 2 / 3]], dtype=torch.float64))
    options = {"estimator": "taylor", "num_permutations": 200, "random_state": 0}
    errors = {}
    for rule in ("reference", "trapezoid", "removal"):
        result = group_rewards(game, torch.arange(4), rule=rule, **options)
        errors[rule] = float((result.per_image - exact).abs().max())
        if rule == "removal":  # Eq. 7 with the step's trapezoid: efficiency holds for every order
            assert result.per_image.sum() == pytest.approx(4.5, abs=1e-9)
            assert bool(((result.per_image - exact).abs() <= 4 * result.per_image_stderr).all())
    print("max approximation errors:", errors)
    assert errors["reference"] < 0.08 and errors["trapezoid"] < 0.04 and errors["removal"] < 0.06


def test_removal_rule_is_unbiased_for_multilinear_games():
    game = polynomial_game({(0, 1): 1.0, (2,): 0.5, (1, 2, 3): 2.0})
    exact = group_rewards(game, torch.arange(4), estimator="exact").per_image
    approx = group_rewards(
        game, torch.arange(4), estimator="taylor", rule="removal", num_permutations=200, random_state=1
    )
    assert bool(((approx.per_image - exact).abs() <= 4 * approx.per_image_stderr + 1e-12).all())


def test_permutation_estimator_agrees_with_exact():
    game = polynomial_game(TERMS)
    exact = group_rewards(game, torch.arange(4), estimator="exact").per_image
    sampled = group_rewards(game, torch.arange(4), estimator="permutation", num_permutations=300, random_state=0)
    assert bool(((sampled.per_image - exact).abs() <= 4 * sampled.per_image_stderr + 1e-12).all())


def test_merged_and_outside_groups_keep_efficiency():
    game = polynomial_game(TERMS)
    full, empty = game.evaluate(torch.tensor([[True] * 4, [False] * 4]))[0].double()
    merged = group_rewards(game, torch.tensor([0, 0, 1, 2]), estimator="exact").per_image
    assert merged.shape == (1, 3) and merged.sum() == pytest.approx(float(full - empty))
    # players 2 and 3 outside the game, their perturbation kept (1) or removed (0)
    kept = group_rewards(game, torch.tensor([0, 1, -1, -1]), 1.0, estimator="exact").per_image
    removed = group_rewards(game, torch.tensor([0, 1, -1, -1]), 0.0, estimator="exact").per_image
    with_23 = game.evaluate(torch.tensor([[True] * 4, [False, False, True, True]]))[0].double()
    assert kept.sum() == pytest.approx(float(with_23[0] - with_23[1]))
    assert removed.sum() == pytest.approx(float(full.new_tensor(2.0)))  # w0 w1 + w0²: 1 + 1
    taylor = group_rewards(game, torch.tensor([0, 1, -1, -1]), 0.0, rule="removal", num_permutations=50)
    assert taylor.per_image.sum() == pytest.approx(2.0, abs=1e-9)


def harsanyi_interaction(dividends: dict[tuple[int, ...], float], coalition: set[int], singleton: str) -> float:
    """The closed forms of coalition_interactions' docstring, from the Harsanyi dividends a(T)."""
    total = 0.0
    for players, a in dividends.items():
        t, inside = set(players), len(set(players) & coalition)
        if inside < 2:
            continue
        merged = a / (len(t - coalition) + 1)
        total += merged - (a * inside / len(t) if singleton == "full_game" else 0.0)
    return total


@pytest.mark.parametrize("singleton", ["full_game", "members_absent"])
def test_interaction_closed_forms(singleton):
    # a pure AND of {0, 1}: I = 0 in the full game, +1 with the other member absent
    and_game = polynomial_game({(0, 1): 1.0})
    pair = torch.tensor([[True, True, False, False]])
    exact = coalition_interactions(and_game, pair, singleton=singleton, estimator="exact")
    assert float(exact.values[0]) == pytest.approx(0.0 if singleton == "full_game" else 1.0, abs=1e-12)
    taylor = coalition_interactions(and_game, pair, singleton=singleton, rule="removal", num_permutations=20)
    assert float(taylor.values[0]) == pytest.approx(float(exact.values[0]), abs=0.02)
    # a game of several dividends (multilinear): every coalition of 2 or 3 players against the closed form
    dividends = {(0, 1): 1.0, (2,): 0.5, (1, 2, 3): 2.0, (0, 2, 3): -1.5, (0, 1, 2, 3): 0.75}
    game = polynomial_game(dividends)
    sets = [set(c) for size in (2, 3) for c in itertools.combinations(range(4), size)]
    coalitions = torch.tensor([[i in s for i in range(4)] for s in sets])
    result = coalition_interactions(game, coalitions, singleton=singleton, estimator="exact")
    expected = torch.tensor([harsanyi_interaction(dividends, s, singleton) for s in sets], dtype=torch.float64)
    assert torch.allclose(result.values, expected, atol=1e-12)
    assert torch.allclose(result.per_image, result.merged_reward - result.singleton_sum)


def test_bad_input_names_the_argument():
    game = polynomial_game(TERMS)
    x = torch.zeros(1, 1, 6, 6)
    with pytest.raises(ValueError, match="superpixel=4 must divide"):
        superpixel_game(nn.Flatten(), x, x, torch.tensor([0]), torch.tensor([1]))
    with pytest.raises(ValueError, match="superpixel"):
        superpixel_game(nn.Flatten(), x, x, torch.tensor([0]), torch.tensor([1]), superpixel=0)
    with pytest.raises(ValueError, match="groups must have shape"):
        group_rewards(game, torch.arange(3))
    with pytest.raises(ValueError, match="groups ids must be >= -1"):
        group_rewards(game, torch.tensor([0, 1, -2, 0]))
    with pytest.raises(ValueError, match="outside must be a weight in"):
        group_rewards(game, torch.tensor([0, 1, -1, 0]), 1.5)
    with pytest.raises(ValueError, match="outside must be a float, \\(n,\\) or \\(B, n\\)"):
        group_rewards(game, torch.tensor([0, 1, -1, 0]), torch.ones(3))
    with pytest.raises(ValueError, match="outside must be 0 or 1"):
        group_rewards(game, torch.tensor([0, 1, -1, 0]), 0.5, estimator="exact")
    with pytest.raises(ValueError, match="estimator"):
        group_rewards(game, torch.arange(4), estimator="shap")
    with pytest.raises(ValueError, match="rule"):
        TaylorRewardApproximator(rule="midpoint")
    with pytest.raises(ValueError, match="num_subplayers"):
        TaylorRewardApproximator(num_subplayers=0)
    with pytest.raises(ValueError, match="max_forward_passes"):
        TaylorRewardApproximator(max_forward_passes=10).approximate(game, torch.arange(4))
    with pytest.raises(ValueError, match="at least 2 players"):
        coalition_interactions(game, torch.tensor([[True, False, False, False]]))
    with pytest.raises(ValueError, match="singleton"):
        coalition_interactions(game, torch.tensor([[True, True, False, False]]), singleton="alone")
    with pytest.raises(TypeError, match="PerturbationGame"):
        group_rewards(object(), torch.arange(4))  # type: ignore[arg-type]
