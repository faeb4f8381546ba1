"""Players: grid maps (remainder spread), user maps, neighbour pairs."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from lit_advgame.interactions import (
    grid_player_map,
    neighbour_pairs,
    player_adjacency,
    resolve_player_map,
    validate_player_map,
)


def test_grid_spreads_remainder_over_first_cells():
    pm = grid_player_map(7, 10, (3, 4))
    assert pm.shape == (7, 10) and pm.dtype == torch.long
    # rows: 7 = 3 + 2 + 2; columns: 10 = 3 + 3 + 2 + 2 (first bands one pixel larger)
    row_sizes = [int((pm[:, 0] == 4 * band).sum()) for band in range(3)]
    col_sizes = [int((pm[0] == band).sum()) for band in range(4)]
    assert row_sizes == [3, 2, 2] and col_sizes == [3, 3, 2, 2]
    counts = torch.bincount(pm.flatten(), minlength=12).view(3, 4)
    assert torch.equal(counts, torch.tensor(row_sizes)[:, None] * torch.tensor(col_sizes)[None, :])
    assert pm[0, 0] == 0 and pm[0, -1] == 3 and pm[-1, 0] == 8 and pm[-1, -1] == 11  # row-major ids


def test_divisible_grid_matches_reference_nearest_upsampling():
    # the reference builds a 16x16 mask and upsamples it with nearest interpolation
    ids = torch.arange(16.0).view(1, 1, 4, 4)
    expected = F.interpolate(ids, size=(12, 12), mode="nearest").long()[0, 0]
    assert torch.equal(grid_player_map(12, 12, 4), expected)


@pytest.mark.parametrize("grid", [10, (3, 9), (9, 3)])
def test_grid_larger_than_image_is_rejected(grid):
    with pytest.raises(ValueError, match=r"grid .* larger than the image \(8x8"):
        grid_player_map(8, 8, grid)


@pytest.mark.parametrize("grid, error", [(0, ValueError), (True, TypeError), (2.5, TypeError), ((2, 2, 2), TypeError)])
def test_bad_grid_values(grid, error):
    with pytest.raises(error, match="grid"):
        grid_player_map(8, 8, grid)


def test_validate_player_map():
    good = torch.tensor([[0, 0, 1], [2, 2, 1]])
    assert validate_player_map(good, 2, 3) == 3
    with pytest.raises(ValueError, match="shape"):
        validate_player_map(good, 3, 3)
    with pytest.raises(TypeError, match="integer"):
        validate_player_map(good.float(), 2, 3)
    with pytest.raises(ValueError, match="missing"):
        validate_player_map(torch.tensor([[0, 0, 3], [2, 2, 3]]), 2, 3)
    with pytest.raises(ValueError, match="start at 0"):
        validate_player_map(good - 1, 2, 3)
    pm, n = resolve_player_map(2, 3, grid=5, player_map=good)  # an explicit map wins over the grid
    assert n == 3 and torch.equal(pm, good)
    with pytest.raises(ValueError, match="pass grid"):
        resolve_player_map(2, 3)


def test_neighbour_pairs_are_the_8_neighbourhood_of_the_grid():
    rows, cols = 3, 4
    pm = grid_player_map(9, 11, (rows, cols))
    expected = set()
    for a, b in itertools.combinations(range(rows * cols), 2):
        (ra, ca), (rb, cb) = divmod(a, cols), divmod(b, cols)
        if max(abs(ra - rb), abs(ca - cb)) == 1:
            expected.add((a, b))
    pairs = neighbour_pairs(pm)
    assert {tuple(p) for p in pairs.tolist()} == expected
    assert len(pairs) == len(expected) and bool((pairs[:, 0] < pairs[:, 1]).all())


def test_adjacency_of_a_custom_map():
    stripes = torch.tensor([[0, 0, 1, 2, 2]] * 3)
    adjacency = player_adjacency(stripes)
    assert adjacency.tolist() == [[False, True, False], [True, False, True], [False, True, False]]
