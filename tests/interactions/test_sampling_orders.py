"""Orders (ratios -> m) and the seeded samplers."""

from __future__ import annotations

from math import comb

import pytest
import torch

from lit_advgame.interactions import (
    ORDER_PRESETS,
    grid_player_map,
    neighbour_pairs,
    resolve_orders,
    sample_groups_with_replacement,
    sample_pairs,
    sample_players,
    sample_subsets,
)


def test_reference_orders_for_a_16x16_grid():
    orders = resolve_orders("reference", 256)
    assert orders.ratios == (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)
    assert orders.orders == tuple(int(254 * r) for r in orders.ratios)
    assert orders.orders[0] == 25 and orders.orders[-1] == 241
    assert resolve_orders("reference_code", 256).orders[-1] == 254  # r = 1 is the full context n - 2
    assert resolve_orders("with_zero", 256).orders[0] == 0
    assert len(resolve_orders("fine", 256)) == 20 and ORDER_PRESETS["fine"][1] == 0.05
    assert resolve_orders([0, 3, 7], 9).orders == (0, 3, 7) and resolve_orders([0, 3, 7], 9).ratios is None
    assert resolve_orders([0.5], 9).labels == ("r0.50",) and resolve_orders([3, 3], 9).labels == ("m3", "m3_1")
    assert resolve_orders([1.0], 9, shapley=True).orders == (8,)


@pytest.mark.parametrize(
    "orders, match",
    [
        ([8], r"outside \[0, n-2\] = \[0, 7\]"),
        ([-1], "outside"),
        ([1.5], r"outside \[0, 1\]"),
        ("finest", "unknown order preset"),
        ([], "non-empty"),
        ([True], "ints"),
    ],
)
def test_bad_orders(orders, match):
    with pytest.raises((ValueError, TypeError), match=match):
        resolve_orders(orders, 9)


def test_uniform_pairs_are_distinct_and_seeded():
    pairs = sample_pairs(3, 9, 20, kind="uniform", generator=torch.Generator().manual_seed(0))
    assert pairs.shape == (3, 20, 2)
    for image in pairs:
        assert bool((image[:, 0] < image[:, 1]).all())
        assert len({tuple(p) for p in image.tolist()}) == 20
    again = sample_pairs(3, 9, 20, kind="uniform", generator=torch.Generator().manual_seed(0))
    assert torch.equal(pairs, again)
    assert not torch.equal(pairs, sample_pairs(3, 9, 20, kind="uniform", generator=torch.Generator().manual_seed(1)))
    with pytest.raises(ValueError, match="exceeds the 36 distinct"):
        sample_pairs(1, 9, 37, kind="uniform")


def test_neighbour_pairs_are_adjacent_distinct_and_cover_all():
    pm = grid_player_map(12, 12, 4)
    allowed = {tuple(p) for p in neighbour_pairs(pm).tolist()}
    pairs = sample_pairs(2, 16, 30, kind="neighbour", player_map=pm, generator=torch.Generator().manual_seed(0))
    for image in pairs:
        drawn = [tuple(p) for p in image.tolist()]
        assert set(drawn) <= allowed and len(set(drawn)) == 30
    every = sample_pairs(1, 16, None, kind="neighbour", player_map=pm)
    assert {tuple(p) for p in every[0].tolist()} == allowed
    with pytest.raises(ValueError, match="neighbour pairs"):
        sample_pairs(1, 16, len(allowed) + 1, kind="neighbour", player_map=pm)
    # every neighbour pair is reachable: with many draws all of them show up
    many = sample_pairs(
        1, 16, len(allowed), kind="neighbour", player_map=pm, generator=torch.Generator().manual_seed(1)
    )
    assert {tuple(p) for p in many[0].tolist()} == allowed


def test_subsets_have_the_right_size_exclude_players_and_are_uniform():
    n, m = 6, 2
    excluded = torch.tensor([[0, 3]]).expand(6000, 2)
    subsets = sample_subsets(excluded, m, n, torch.Generator().manual_seed(0))
    assert bool((subsets.sum(1) == m).all()) and not subsets[:, [0, 3]].any()
    # uniform over the C(4, 2) = 6 subsets of {1, 2, 4, 5}
    codes = (subsets.long() * (2 ** torch.arange(n))).sum(1)
    counts = torch.bincount(codes, minlength=64)
    counts = counts[counts > 0].double()
    assert counts.numel() == comb(4, 2)
    expected = 6000 / 6
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 20.5  # 99.9% quantile of chi2(5)
    large = sample_subsets(excluded[:100], 4, n, torch.Generator().manual_seed(0))
    assert bool((large.sum(1) == 4).all()) and not large[:, [0, 3]].any()
    assert not sample_subsets(excluded[:5], 0, n).any()


def test_groups_and_players():
    groups = sample_groups_with_replacement(2, 5, 4, 9, torch.Generator().manual_seed(0))
    assert groups.shape == (2, 5, 9) and bool((groups.sum(2) <= 4).all()) and bool((groups.sum(2) >= 1).all())
    players = sample_players(3, 4, 9, torch.Generator().manual_seed(0))
    assert players.shape == (3, 4) and all(len(set(row)) == 4 for row in players.tolist())
