"""Perturbation components (Wang et al., ICCV 2021, supplement C) and their analysis."""

from __future__ import annotations

import logging

import pytest
import torch

from lit_advgame.attributions import (
    ComponentSettings,
    TaylorRewardApproximator,
    component_effects,
    component_figure,
    extract_components,
    foreground_mask_from_image,
    foreground_share,
)
from lit_advgame.attributions.components import first_step_cost
from lit_advgame.interactions import PerturbationGame
from tests.attributions.games import LEVEL, PolynomialModel, polynomial_game

GRID = 8


def block(row: int, col: int) -> tuple[int, ...]:
    """The 2 x 2 players with top-left player (row, col) on the 8 x 8 player grid."""
    return tuple((row + i) * GRID + col + j for i in range(2) for j in range(2))


#: four planted AND blocks (z = Σ_b Π_{i∈b} w_i), apart from each other; the 48 other players are dummies
BLOCKS = [block(1, 1), block(1, 5), block(5, 2), block(4, 5)]


def planted_game():
    return polynomial_game({b: 1.0 for b in BLOCKS}, grid=GRID, superpixel=1)


def settings(**overrides) -> ComponentSettings:
    estimator = TaylorRewardApproximator(num_subplayers=4, rule="removal")  # K = 4: fast; "removal": low variance
    options = {"q": 4, "patch_grid": 1, "max_size": 4, "singleton": "members_absent", "estimator": estimator}
    return ComponentSettings(**{**options, "random_state": 0, **overrides})


def test_first_step_recovers_planted_interacting_blocks(caplog):
    caplog.set_level(logging.INFO)
    result = extract_components(planted_game(), settings())
    # the announced cost is the cost (one step only: max_size = q)
    assert result.num_forward_passes == first_step_cost((GRID, GRID), settings())
    assert f"{result.num_forward_passes:,} masked inputs" in caplog.text
    found = {tuple(sorted(c.tolist())) for c in result.components(0)}
    assert set(BLOCKS) <= found
    # each planted block has I[S] = a(S) = 1 (members absent; Taylor with K=4 overshoots by ~6 %), the top ranks
    assert result.steps == [[len(found)]]
    assert sorted(result.interactions[0].tolist(), reverse=True)[:4] == pytest.approx([1.0] * 4, abs=0.1)


def test_later_steps_merge_whole_components_up_to_max_size():
    result = extract_components(planted_game(), settings(patch_grid=2, max_size=16))
    steps = result.steps[0]
    assert len(steps) == 2 and steps[1] >= 1
    for component in result.components(0):
        assert component.numel() == 16
        players = set(component.tolist())
        # whole blocks: a component cuts no planted block
        assert all(set(b) <= players or not set(b) & players for b in BLOCKS)
    assert result.component_map.shape == (1, GRID * GRID)


def test_component_effects_tell_true_class_decrease_from_target_increase():
    # block A only lowers the true logit, block B only raises the target logit
    a, b = BLOCKS[0], BLOCKS[1]
    game = polynomial_game({b: 1.0}, grid=GRID, superpixel=1, true_terms={a: -3.0})
    component_map = torch.full((1, GRID * GRID), -1)
    component_map[0, list(a)], component_map[0, list(b)] = 0, 1
    effects = component_effects(game, component_map)
    assert torch.allclose(effects.delta_true[0], torch.tensor([3.0, 0.0], dtype=torch.float64))
    assert torch.allclose(effects.delta_target[0], torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert effects.decreases_true[0].tolist() == [True, False]
    assert effects.share_decreasing_true() == 0.5
    figure = component_figure(
        game.absent[0], game.delta[0], game.player_map, component_map[0], effects.decreases_true[0]
    )
    colours = figure.axes[2].images[0].get_array()
    (row, col), corner = divmod(a[0], GRID), (0, 0)
    assert colours[row, col, 0] > colours[row, col, 2]  # block A decreases the true class: red
    row, col = divmod(b[0], GRID)
    assert colours[row, col, 2] > colours[row, col, 0]  # block B increases the target: blue
    assert colours[corner].tolist() == [1.0, 1.0, 1.0]  # no component: white
    with pytest.raises(ValueError, match="one flag per component"):
        component_figure(game.absent[0], game.delta[0], game.player_map, component_map[0], torch.tensor([True]))


def test_foreground_share_counts_pixels_of_each_component():
    game = planted_game()
    component_map = torch.full((1, GRID * GRID), -1)
    component_map[0, list(BLOCKS[0])], component_map[0, list(BLOCKS[1])] = 0, 1
    image = torch.zeros(1, 1, GRID, GRID)
    image[..., :, :4] = 0.9  # the left half is the digit
    mask = foreground_mask_from_image(image, threshold=0.5)
    shares = foreground_share(component_map, game.player_map, mask)
    assert shares[0].tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="needs a foreground mask"):
        foreground_share(component_map, game.player_map, None)
    with pytest.raises(ValueError, match="threshold must be a fraction"):
        foreground_mask_from_image(image, threshold=1.5)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"q": 1}, "q must be"),
        ({"first_keep": 1.5}, "first_keep must be a fraction in"),
        ({"keep": -0.1}, "keep must be a fraction in"),
        ({"coverage": 2}, "coverage must be a fraction in"),
        ({"max_size": 2}, "max_size must be"),
        ({"groups_per_round": 0}, "groups_per_round must be"),
        ({"singleton": "alone"}, "singleton"),
    ],
)
def test_bad_settings_name_the_argument(overrides, match):
    with pytest.raises(ValueError, match=match):
        settings(**overrides)
    with pytest.raises(TypeError, match="estimator must be a TaylorRewardApproximator"):
        settings(estimator="taylor")


def test_components_need_a_grid_game():
    model = PolynomialModel(4, 2, {(0, 1): 1.0}).double()
    x = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    player_map = torch.tensor([[0, 1, 0, 1]] * 4)  # stripes: not a grid
    game = PerturbationGame(
        model,
        x,
        torch.full_like(x, LEVEL),
        torch.tensor([0]),
        player_map=player_map,
        value="target_minus_true",
        target=torch.tensor([1]),
    )
    with pytest.raises(ValueError, match="players form a grid"):
        extract_components(game, settings())
    with pytest.raises(ValueError, match="patch_grid=16 has more patches"):
        extract_components(planted_game(), settings(patch_grid=16))


def test_full_game_singletons_do_not_rank_the_planted_blocks_first():
    # under "full_game" interactions inside a candidate cancel (I[block] = 0): windows that cut blocks rank first
    result = extract_components(planted_game(), settings(singleton="full_game"))
    assert result.num_forward_passes == first_step_cost((GRID, GRID), settings(singleton="full_game"))
    found = {tuple(sorted(c.tolist())) for c in result.components(0)}
    assert not set(BLOCKS) <= found
    assert float(result.interactions[0].abs().max()) > 0.2
