"""Regional attributions to the attacking cost: the grid, the cost game and its Shapley estimators."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from lit_advgame.attributions import (
    CostGame,
    ExactRegionalShapley,
    LinfCostAttack,
    PermutationRegionalShapley,
    RegionGrid,
    StratifiedRegionalShapley,
    attribution_iou,
    regional_attributions,
    regional_magnitudes,
)
from lit_advgame.attributions.regional import stratified_coalitions
from lit_advgame.interactions.exact import all_coalitions
from tests.attributions.helpers import FormulaLinfAttack, TwoClassLinear

SIZE = 8  # 8x8 images, beta = 1/3: a 1-px border around 6x6 px of 3x3 regions of 2x2 px


def _linear(weights: torch.Tensor | None = None, margin: float = 1.0):
    x = torch.full((1, 1, SIZE, SIZE), 0.5)
    model = TwoClassLinear(x, margin=margin, weights=weights)
    return x, model


def _formula_game(model, x, **options) -> CostGame:
    attack = FormulaLinfAttack(g=model.g, margin=1.0, fails=options.pop("fails", None))
    return CostGame(model, x, torch.tensor([0]), attack, num_regions=3, beta=1 / 3, **options)


def _structured_weights() -> torch.Tensor:
    """|g| = 1 on the border, 2 in regions 0 and 2, 0 in region 4 (a dummy), random elsewhere."""
    grid = RegionGrid(SIZE, SIZE, 3, 1 / 3)
    player = grid.player_map
    g = torch.rand(SIZE, SIZE, generator=torch.Generator().manual_seed(3)) + 0.5
    g[player < 0] = 1.0
    g[(player == 0) | (player == 2)] = 2.0
    g[player == 4] = 0.0
    return torch.stack([g.flatten(), torch.zeros(SIZE * SIZE)])


def test_the_reference_grid_and_its_masks():
    grid = RegionGrid(112, 112)
    assert grid.border == (8, 8) and grid.region_size == (12, 12) and grid.num_players == 64
    small = RegionGrid(SIZE, SIZE, 3, 1 / 3)
    player = small.player_map
    assert (player == -1).sum() == SIZE * SIZE - 36 and bool((player[1:7, 1:7].unique() == torch.arange(9)).all())
    masks = small.masks(all_coalitions(9)[[0, 1, 511]])
    assert bool((masks[0] == (player < 0)).all())  # ∅: the border only
    assert bool((masks[1] == ((player < 0) | (player == 0))).all())
    assert bool(masks[2].all())
    none = RegionGrid(6, 6, 3, 0.0)  # the no-border variant
    assert none.border == (0, 0) and bool((none.player_map >= 0).all())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(height=28, width=28, num_regions=5), "num_regions=5 does not divide the 24x24 inner part"),
        (dict(height=28, width=28, num_regions=8, beta=-0.1), "beta .* must be a finite number >= 0"),
        (dict(height=8, width=8, num_regions=2, beta=0.01), "beta=0.01 gives a border of 0 px"),
        (dict(height=8, width=8, num_regions=1, beta=0.0), "num_regions must be >= 2"),
        (dict(height=8, width=8, num_regions=2, beta=math.nan), "beta"),
    ],
)
def test_bad_grids_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RegionGrid(**kwargs)


def test_exact_attributions_satisfy_efficiency_symmetry_and_dummy():
    x, model = _linear(_structured_weights())
    result = ExactRegionalShapley().approximate(_formula_game(model, x))
    phi = result.per_image[0]
    assert result.num_attacks == 512 and float(result.failure_rate) == 0.0
    torch.testing.assert_close(phi.sum(), result.cost_full[0] - result.cost_empty[0])  # Eq. 3
    assert abs(float(result.efficiency_residual)) < 1e-12
    assert float(result.cost_full[0] - result.cost_empty[0]) < 0  # more regions, lower cost: every φ <= 0
    assert bool((phi <= 1e-15).all())
    torch.testing.assert_close(phi[0], phi[2])  # symmetric regions
    assert float(phi[4]) == 0.0  # a dummy region (g = 0 there)
    torch.testing.assert_close(result.importance[0], -phi.view(3, 3))
    assert bool((result.per_image_stderr == 0).all())


def test_exact_attributions_of_the_bim_costs_satisfy_efficiency_and_dummy():
    x, model = _linear(_structured_weights() * 0.2, margin=1.0)
    attack = LinfCostAttack(
        search="bisection", eps_step=1 / 64, max_level=63, step_size=1 / 64, steps=64, batch_size=512
    )
    game = CostGame(model, x, torch.tensor([0]), attack, num_regions=3, beta=1 / 3)
    result = ExactRegionalShapley().approximate(game)
    assert float(result.failure_rate) == 0.0
    assert abs(float(result.efficiency_residual)) < 1e-12
    assert float(result.per_image[0, 4]) == 0.0  # BIM's sign step is 0 where g = 0: the same cost with or without it
    formula = ExactRegionalShapley().approximate(_formula_game(model, x))
    # the BIM cost is the formula's cost rounded up to the grid: attributions within a grid step
    assert float((result.per_image - formula.per_image).abs().max()) <= 1 / 64


@pytest.mark.parametrize(
    "estimator",
    [
        PermutationRegionalShapley(num_permutations=40, random_state=0),
        StratifiedRegionalShapley(samples_per_size=24, chain_sizes=3, random_state=0),
    ],
)
def test_sampled_estimators_agree_with_exact_within_their_standard_errors(estimator):
    x, model = _linear()
    game = _formula_game(model, x)
    exact = ExactRegionalShapley().approximate(game)
    sampled = estimator.approximate(game)
    assert bool((sampled.per_image_stderr > 0).all())
    z = (sampled.per_image - exact.per_image) / sampled.per_image_stderr
    assert float(z.abs().max()) < 4.0
    again = type(estimator)(**vars(estimator)).approximate(_formula_game(model, x))
    torch.testing.assert_close(again.per_image, sampled.per_image)  # an int random_state is reproducible
    if isinstance(estimator, PermutationRegionalShapley):
        assert abs(float(sampled.efficiency_residual)) < 1e-12  # every permutation adds up exactly


def test_the_reference_coalitions_have_every_size_and_the_chains():
    rows = stratified_coalitions(9, 9, 3, torch.Generator().manual_seed(0))
    sizes = rows.sum(dim=1)
    assert rows.shape == (8 * 9 + 2, 9)
    assert sizes.bincount().tolist() == [1] + [9] * 8 + [1]
    singletons = rows[sizes == 1]
    assert bool((singletons.float().argmax(dim=1) == torch.arange(9)).all())  # chain i starts with region i
    removed = (~rows[sizes == 8]).float().argmax(dim=1)
    assert bool((removed == torch.arange(9)).all())  # at k = n-1, sample i removes region i
    grown = rows[sizes == 2]
    assert bool((grown >= singletons).all())  # chains: each size-2 subset extends its size-1 subset


def _fails_with_region_4_without_region_0(mask: torch.Tensor) -> torch.Tensor:
    """Fails on the coalitions of at most 5 regions with regions 4 and 8 but without 0 and 1 (26 of 512)."""
    player = RegionGrid(SIZE, SIZE, 3, 1 / 3).player_map
    has = [mask[:, 0, player == region].all(dim=1) for region in range(9)]
    size = sum(h.long() for h in has)
    return has[4] & has[8] & ~has[0] & ~has[1] & (size <= 5)


def test_failures_are_capped_dropped_or_resampled_never_averaged_as_a_sentinel():
    x, model = _linear()
    capped = ExactRegionalShapley().approximate(_formula_game(model, x, fails=_fails_with_region_4_without_region_0))
    assert float(capped.failure_rate) == pytest.approx(26 / 512)
    assert abs(float(capped.efficiency_residual)) < 1e-12 and bool(torch.isfinite(capped.per_image).all())
    clean = ExactRegionalShapley().approximate(_formula_game(model, x))
    assert float(capped.per_image[0, 4]) > float(clean.per_image[0, 4])  # capped at cost(∅): region 4 looks less useful
    with pytest.raises(ValueError, match="cannot drop them: use on_failure='cap'"):
        ExactRegionalShapley().approximate(
            _formula_game(model, x, fails=_fails_with_region_4_without_region_0, on_failure="drop")
        )
    for on_failure in ("drop", "resample"):
        for estimator in (
            PermutationRegionalShapley(num_permutations=20, random_state=1),
            StratifiedRegionalShapley(samples_per_size=16, chain_sizes=3, random_state=1),
        ):
            game = _formula_game(model, x, fails=_fails_with_region_4_without_region_0, on_failure=on_failure)
            result = estimator.approximate(game)
            assert bool(torch.isfinite(result.per_image).all())
            assert float(result.failure_rate) > 0 and result.on_failure == on_failure
            assert int(result.num_dropped[0]) > 0 or on_failure == "resample"
            assert float(result.per_image.abs().max()) < 1.0  # no 1e5-like sentinel anywhere


def test_resample_drops_fewer_samples_than_drop():
    x, model = _linear()
    counts = {}
    for on_failure in ("drop", "resample"):
        game = _formula_game(model, x, fails=_fails_with_region_4_without_region_0, on_failure=on_failure)
        counts[on_failure] = int(PermutationRegionalShapley(20, random_state=2).approximate(game).num_dropped[0])
    assert counts["resample"] < counts["drop"]


def test_no_border_needs_a_cap_cost():
    x = torch.full((1, 1, 6, 6), 0.5)
    model = TwoClassLinear(x, margin=1.0)
    attack = FormulaLinfAttack(g=model.g, margin=1.0)
    game = CostGame(model, x, torch.tensor([0]), attack, num_regions=3, beta=0.0)
    with pytest.raises(ValueError, match=r"cost\(∅\) is undefined .* beta=0 has no border.*cap_cost="):
        ExactRegionalShapley().approximate(game)
    game = CostGame(model, x, torch.tensor([0]), attack, num_regions=3, beta=0.0, cap_cost=5.0)
    result = ExactRegionalShapley().approximate(game)
    assert float(result.cost_empty[0]) == 5.0 and abs(float(result.efficiency_residual)) < 1e-12


def test_regional_attributions_runs_the_batched_attacks_on_several_images(caplog):
    x = torch.full((2, 1, SIZE, SIZE), 0.5)
    x[1] = 0.4
    model = TwoClassLinear(x[:1], margin=0.5)
    with caplog.at_level("INFO", logger="lit_advgame.attributions.regional"):
        result = regional_attributions(
            model,
            x,
            torch.tensor([0, 0]),
            norm="linf",
            estimator="permutation",
            num_regions=3,
            beta=1 / 3,
            attack_options=dict(search="bisection", eps_step=1 / 64, max_level=63, step_size=1 / 64, steps=64),
            num_permutations=4,
            random_state=0,
        )
    assert "restricted linf attacks" in caplog.text and "gradient steps" in caplog.text  # announced first
    assert result.per_image.shape == (2, 9) and result.values.shape == (9,) and result.norm == "linf"
    assert bool(torch.isfinite(result.per_image).all()) and float(result.efficiency_residual.abs().max()) < 1e-12


def test_bad_settings_name_the_argument():
    x, model = _linear()
    with pytest.raises(ValueError, match="unknown on_failure 'skip'"):
        _formula_game(model, x, on_failure="skip")
    with pytest.raises(ValueError, match="unknown estimator 'kernel'"):
        regional_attributions(model, x, torch.tensor([0]), estimator="kernel")
    with pytest.raises(ValueError, match="cap_cost must be a finite number >= 0"):
        _formula_game(model, x, cap_cost=-1.0)
    with pytest.raises(ValueError, match="max_attacks=100"):
        ExactRegionalShapley(max_attacks=100).approximate(_formula_game(model, x))
    with pytest.raises(ValueError, match="num_permutations must be >= 2"):
        PermutationRegionalShapley(num_permutations=1)
    with pytest.raises(TypeError, match="game must be a CostGame"):
        StratifiedRegionalShapley().approximate(object())
    with pytest.raises(ValueError, match="grid is for 112x112 images"):
        CostGame(model, x, torch.tensor([0]), "linf", grid=RegionGrid(112, 112))


def test_regional_magnitudes_and_the_iou_of_table_1():
    grid = RegionGrid(SIZE, SIZE, 3, 1 / 3)
    delta = torch.zeros(1, 2, SIZE, SIZE)
    delta[0, 0, 0, :] = 5.0  # the border does not count
    delta[0, 0, 1, 1] = 3.0  # region 0: sqrt(3² + 4²) = 5
    delta[0, 1, 2, 2] = 4.0
    delta[0, 1, 6, 6] = -2.0  # region 8
    magnitudes = regional_magnitudes(delta, grid)
    expected = torch.zeros(1, 3, 3, dtype=torch.float64)
    expected[0, 0, 0], expected[0, 2, 2] = 5.0, 2.0
    torch.testing.assert_close(magnitudes, expected)
    maps = torch.rand(2, 3, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(attribution_iou(maps, 3 * maps + 1), torch.ones(2, dtype=torch.float64))
    a = torch.tensor([[[0.0, 1.0], [0.5, 0.5]]])
    b = torch.tensor([[[0.0, 0.5], [1.0, 0.5]]])
    # normalised maps are themselves: Σmin = 0 + 0.5 + 0.5 + 0.5, Σmax = 0 + 1 + 1 + 0.5
    torch.testing.assert_close(attribution_iou(a, b), torch.tensor([1.5 / 2.5], dtype=torch.float64))
    torch.testing.assert_close(attribution_iou(a * 0, b * 0 + 2), torch.ones(1, dtype=torch.float64))
    with pytest.raises(ValueError, match="the two maps must have the same shape"):
        attribution_iou(a, b[:, :1])
    with pytest.raises(ValueError, match=r"delta must have shape \(B, C, 8, 8\)"):
        regional_magnitudes(torch.zeros(1, 1, 6, 6), grid)


CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints" / "digits_small_cnn.pt"


@pytest.mark.skipif(not CHECKPOINT.is_file(), reason="checkpoints/ not built (scripts/make_checkpoints.sh)")
def test_the_table_1_script_runs_on_digits_at_a_tiny_size(tmp_path, capsys):
    path = Path(__file__).resolve().parents[2] / "scripts" / "regional_attributions_table.py"
    spec = importlib.util.spec_from_file_location("regional_attributions_table", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    args = ["--num-images", "1", "--num-regions", "2", "--samples-per-size", "8", "--chain-sizes", "2"]
    out = script.main([*args, "--l2-steps", "50", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "results.json").read_text())["num_images"] == 1
    for name in ("attributions", "magnitudes"):
        assert 0.0 <= out["iou"][name]["mean"] <= 1.0
    assert "L2 vs L∞ attributions" in capsys.readouterr().out
