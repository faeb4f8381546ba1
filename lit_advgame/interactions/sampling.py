"""Seeded samplers for pairs, contexts, players, groups and permutations.

All draws come from a ``torch.Generator`` (or the global RNG when ``None``) and are made on the
generator's device (CPU by default) before being moved to the game's device, so a seed gives
the same draws on every device. Per-image draws are made image by image in a fixed order, so
results do not depend on how images are grouped for evaluation.

Pairs (Ren et al., NeurIPS 2021 code, ``gene_pairs.py``):

* ``"uniform"``: distinct unordered pairs ``i < j`` drawn uniformly without replacement.
* ``"neighbour"`` (the reference): ``i`` uniform over players, ``j`` uniform over the players
  adjacent to ``i`` (8-neighbourhood on a grid; touching pixels for a general map), unordered,
  distinct, rejecting repeats. The reference clips a random 3x3 offset at the border and rejects
  ``i = j``, which favours border neighbours slightly; here ``j`` is uniform over true neighbours.
* ``num_pairs=None``: every pair of the kind, in row-major order (exhaustive, no randomness).

Contexts: ``S`` uniform among the ``m``-subsets of ``N \\ {i, j}`` (``np.random.choice(..,
replace=False)`` in the reference), independently for each (pair, context, order): the ``m``
smallest of ``n`` iid float64 keys, with the excluded players' keys set above all others.
When there are no more ``m``-subsets than contexts asked for, :func:`enumerate_subsets` lists
every one of them once instead (exact, no sampling).
"""

from __future__ import annotations

import itertools

import torch

from lit_advgame.interactions.players import neighbour_pairs, player_adjacency
from lit_advgame.utils.checks import check_int
from lit_advgame.vocabulary import PAIR_KINDS


def _gen_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _rand(
    shape: tuple[int, ...], generator: torch.Generator | None, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    return torch.rand(shape, generator=generator, dtype=dtype, device=_gen_device(generator))


def all_pairs(num_players: int) -> torch.Tensor:
    """All unordered pairs ``i < j`` as a ``(n(n-1)/2, 2)`` long tensor in row-major order."""
    return torch.triu_indices(num_players, num_players, offset=1).t().contiguous()


def _pairs_uniform(num_players: int, num_pairs: int, generator: torch.Generator | None) -> torch.Tensor:
    total = num_players * (num_players - 1) // 2
    if total <= 1 << 22:
        pick = torch.randperm(total, generator=generator, device=_gen_device(generator))[:num_pairs].cpu()
        return all_pairs(num_players)[pick]
    chosen: dict[tuple[int, int], None] = {}
    while len(chosen) < num_pairs:
        draws = torch.randint(0, num_players, (2 * num_pairs, 2), generator=generator, device=_gen_device(generator))
        for a, b in draws.tolist():
            if a != b:
                chosen.setdefault((min(a, b), max(a, b)), None)
                if len(chosen) == num_pairs:
                    break
    return torch.tensor(list(chosen), dtype=torch.long)


def _pairs_neighbour(
    neighbours: torch.Tensor, degree: torch.Tensor, num_pairs: int, generator: torch.Generator | None
) -> torch.Tensor:
    n = degree.shape[0]
    chosen: dict[tuple[int, int], None] = {}
    while len(chosen) < num_pairs:
        count = 2 * num_pairs + 8
        i = torch.randint(0, n, (count,), generator=generator, device=_gen_device(generator)).cpu()
        u = _rand((count,), generator).cpu()
        pick = torch.clamp((u * degree[i]).long(), max=neighbours.shape[1] - 1)
        j = neighbours[i, pick]
        for a, b in zip(i.tolist(), j.tolist()):
            chosen.setdefault((min(a, b), max(a, b)), None)
            if len(chosen) == num_pairs:
                break
    return torch.tensor(list(chosen), dtype=torch.long)


def sample_pairs(
    num_images: int,
    num_players: int,
    num_pairs: int | None,
    *,
    kind: str = "neighbour",
    player_map: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pairs per image, ``(B, P, 2)`` long (CPU), each row ``(i, j)`` with ``i < j``.

    ``kind="neighbour"`` needs the ``player_map`` (to know which players touch).
    ``num_pairs=None`` returns every pair of the kind for every image.
    """
    if kind not in PAIR_KINDS:
        raise ValueError(f"unknown pair sampler {kind!r}; choose one of {', '.join(PAIR_KINDS)}")
    if num_players < 2:
        raise ValueError(f"pairs need at least 2 players; the game has {num_players}")
    if kind == "uniform":
        available = num_players * (num_players - 1) // 2
    else:
        if player_map is None:
            raise ValueError('pairs="neighbour" needs the player map of the game')
        exhaustive = neighbour_pairs(player_map, num_players)
        available = exhaustive.shape[0]
        if available == 0:
            raise ValueError("no two players touch in this player map, so there are no neighbour pairs")
    if num_pairs is None:
        pairs = all_pairs(num_players) if kind == "uniform" else exhaustive
        return pairs.unsqueeze(0).expand(num_images, -1, -1).contiguous()
    check_int(num_pairs, "num_pairs", minimum=1)
    if num_pairs > available:
        raise ValueError(
            f"num_pairs={num_pairs} exceeds the {available} distinct {kind} pairs of {num_players} players; "
            "use fewer pairs or num_pairs=None for all of them"
        )
    if kind == "uniform":
        return torch.stack([_pairs_uniform(num_players, num_pairs, generator) for _ in range(num_images)])
    adjacency = player_adjacency(player_map, num_players)
    degree = adjacency.sum(dim=1)
    # neighbours of each player first (ascending ids), padding after: a stable sort of the rows
    order = adjacency.to(torch.int8).argsort(dim=1, descending=True, stable=True)
    neighbours = order[:, : max(1, int(degree.max()))]
    if not bool((degree > 0).all()):
        raise ValueError("every player needs at least one neighbour for neighbour pairs (isolated players found)")
    return torch.stack([_pairs_neighbour(neighbours, degree, num_pairs, generator) for _ in range(num_images)])


def sample_subsets(
    excluded: torch.Tensor, size: int, num_players: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Uniform random ``size``-subsets of ``N`` minus the players ``excluded[r]`` for every row ``r``.

    Args:
        excluded: ``(R, e)`` long player ids to leave out of row ``r`` (distinct within a row).
        size: subset size ``m`` (``0 <= m <= n - e``).

    Returns:
        ``(R, n)`` boolean membership matrix (on the generator's device).
    """
    rows, num_excluded = excluded.shape
    if not 0 <= size <= num_players - num_excluded:
        raise ValueError(f"subset size {size} is outside [0, {num_players - num_excluded}]")
    device = _gen_device(generator)
    member = torch.zeros(rows, num_players, dtype=torch.bool, device=device)
    keys = _rand((rows, num_players), generator)
    if size == 0 or rows == 0:
        return member
    keys.scatter_(1, excluded.to(device), 2.0)
    if size == num_players - num_excluded:
        return keys < 2.0
    if size <= (num_players - num_excluded) // 2:
        chosen = torch.topk(keys, size, dim=1, largest=False, sorted=False).indices
        return member.scatter_(1, chosen, True)
    # large subsets: draw the complement within N \ excluded (keys of excluded players stay largest)
    dropped = torch.topk(keys, num_players - size, dim=1, largest=True, sorted=False).indices
    member.fill_(True)
    return member.scatter_(1, dropped, False)


def enumerate_subsets(excluded: torch.Tensor, size: int, num_players: int) -> torch.Tensor:
    """Every ``size``-subset of ``N`` minus the players ``excluded[r]``, for every row ``r``.

    Args:
        excluded: ``(R, e)`` long player ids to leave out of row ``r`` (distinct within a row).
        size: subset size ``m`` (``0 <= m <= n - e``).

    Returns:
        ``(R, C, n)`` boolean membership with ``C = comb(n - e, m)`` subsets per row, in the
        lexicographic order of :func:`itertools.combinations` over the remaining players (ascending ids).
    """
    rows, num_excluded = excluded.shape
    free = num_players - num_excluded
    if not 0 <= size <= free:
        raise ValueError(f"subset size {size} is outside [0, {free}]")
    keep = torch.ones(rows, num_players, dtype=torch.bool)
    keep.scatter_(1, excluded.cpu().long(), False)
    others = torch.nonzero(keep)[:, 1].view(rows, free)  # remaining players of each row, ascending
    combos = torch.tensor(list(itertools.combinations(range(free), size)), dtype=torch.long)
    combos = combos.view(len(combos), size)
    chosen = others[:, combos]  # (R, C, m)
    member = torch.zeros(rows, combos.shape[0], num_players, dtype=torch.bool)
    return member.scatter_(2, chosen, True)


def sample_groups_with_replacement(
    num_images: int, num_groups: int, group_size: int, num_players: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """IR reference sampler: ``num_groups`` groups of ``group_size`` cell ids drawn uniformly **with
    replacement** (``np.random.randint``), so a group holds at most ``group_size`` distinct cells.

    Returns ``(B, K, n)`` boolean membership.
    """
    device = _gen_device(generator)
    ids = torch.randint(0, num_players, (num_images, num_groups, group_size), generator=generator, device=device)
    member = torch.zeros(num_images, num_groups, num_players, dtype=torch.bool, device=device)
    return member.scatter_(2, ids, True)


def sample_players(
    num_images: int, num_players_drawn: int, num_players: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Distinct players drawn uniformly without replacement per image, ``(B, k)`` long."""
    keys = _rand((num_images, num_players), generator)
    return torch.topk(keys, num_players_drawn, dim=1, largest=False, sorted=True).indices


def sample_permutations(
    num_images: int, num_permutations: int, num_players: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Uniform random permutations of the players, ``(B, T, n)`` long."""
    return _rand((num_images, num_permutations, num_players), generator).argsort(dim=2)
