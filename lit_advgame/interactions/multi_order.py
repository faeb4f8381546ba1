"""Multi-order interactions ``I^(m)`` by sampling (Ren et al., NeurIPS 2021, Eq. 2; Zhang et al. 2020).

``I^(m)_ij = E_{S ⊆ N\\{i,j}, |S| = m} Δv_ij(S)`` with
``Δv_ij(S) = v(S ∪ {i,j}) - v(S ∪ {i}) - v(S ∪ {j}) + v(S)``, estimated as the reference code does:
``num_pairs`` pairs per image (neighbour pairs by default), ``num_contexts`` uniform contexts per
pair and order, four masked inputs per context. :func:`sample_pair_deltas` is the shared sampling
core: it draws pairs and contexts once and evaluates every given game on the *same* coalitions
(paired estimates of clean vs adversarial inputs). ``I^(m) = E_x E_ij I^(m)_ij``.

Cost: ``B · O · P · T · 4`` masked inputs per game before deduplication (identical coalitions of
an image -- e.g. all contexts at ``m = 0`` or ``m = n-2``, or the shared empty set -- are evaluated
once). The reference recipe (16x16 grid, 200 pairs, 100 contexts) is 80,000 per image and order.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from math import comb

import torch

from lit_advgame.interactions.budget import DEFAULT_MAX_FORWARD_PASSES, check_budget
from lit_advgame.interactions.game import MaskedGame
from lit_advgame.interactions.orders import Orders, OrderSpec, resolve_orders
from lit_advgame.interactions.results import MultiOrderResult
from lit_advgame.interactions.sampling import sample_pairs, sample_subsets
from lit_advgame.interactions.stats import summarize_two_stage
from lit_advgame.utils.checks import check_int

#: at most this many coalition entries (rows x players) are materialised at once
MAX_COALITION_ENTRIES = 1 << 26


@dataclass
class PairDeltaSamples:
    """Raw ``Δv_ij(S)`` samples shared by the pair estimators.

    Attributes:
        orders: the resolved orders.
        num_players: n.
        pairs: ``(B, P, 2)`` pairs ``(i, j)``, ``i < j`` (CPU).
        deltas: ``(G, B, O, P, T)`` float64 ``Δv`` per game, image, order, pair and context.
        exhaustive_pairs: True when every pair of the kind was used (no pair sampling).
        num_forward_passes: per game, the masked inputs evaluated.
    """

    orders: Orders
    num_players: int
    pairs: torch.Tensor
    deltas: torch.Tensor
    exhaustive_pairs: bool
    num_forward_passes: list[int]

    @property
    def num_contexts(self) -> int:
        return self.deltas.shape[-1]


def check_games(games: Sequence[MaskedGame]) -> None:
    """Games evaluated on shared coalitions need the same images count and player map."""
    if len(games) == 0:
        raise ValueError("pass at least one game")
    for game in games:
        if not isinstance(game, MaskedGame):
            raise TypeError(f"games must be MaskedGame instances (InputGame, PerturbationGame); got {type(game).__name__}")
    first = games[0]
    for game in games[1:]:
        if game.num_images != first.num_images or game.num_players != first.num_players:
            raise ValueError(
                "paired games need the same number of images and players; got "
                f"({first.num_images}, {first.num_players}) and ({game.num_images}, {game.num_players})"
            )
        if game.player_map.shape != first.player_map.shape or not torch.equal(
            game.player_map.cpu(), first.player_map.cpu()
        ):
            raise ValueError("paired games must use the same player map")


def pair_context_coalitions(pairs: torch.Tensor, contexts: torch.Tensor) -> torch.Tensor:
    """The four coalitions of each (pair, context): ``S ∪ {i,j}, S ∪ {i}, S ∪ {j}, S``.

    Args:
        pairs: ``(R, 2)`` long; contexts: ``(R, n)`` bool (not containing i or j).

    Returns:
        ``(R, 4, n)`` bool.
    """
    n = contexts.shape[1]
    pairs = pairs.to(contexts.device)
    only_i = torch.nn.functional.one_hot(pairs[:, 0], n).bool()
    only_j = torch.nn.functional.one_hot(pairs[:, 1], n).bool()
    added = torch.stack([only_i | only_j, only_i, only_j, torch.zeros_like(only_i)], dim=1)
    return added | contexts.unsqueeze(1)


def duplicates_likely(num_players: int, order: int, num_rows: int) -> bool:
    """Whether identical coalitions are plausible among ``num_rows`` pair-context coalitions of order m.

    Birthday bound: duplicates need fewer possible sets (contexts ``C(n-2, m)`` of a pair, or sets
    of size ``m .. m+2`` shared across pairs) than about ``num_rows²``. For a 16x16 grid this is
    true only near ``m = 0`` and ``m = n - 2``; elsewhere deduplication would only cost time.
    """
    n, m = num_players, order
    possible = min(comb(n - 2, m), comb(n, m), comb(n, m + 1), comb(n, m + 2))
    return possible <= num_rows * num_rows


def sample_pair_deltas(
    games: MaskedGame | Sequence[MaskedGame],
    orders: OrderSpec = "reference",
    *,
    num_pairs: int | None = 200,
    num_contexts: int = 100,
    pairs: str = "neighbour",
    generator: torch.Generator | None = None,
    max_forward_passes: int | None = DEFAULT_MAX_FORWARD_PASSES,
    dedupe: bool | str = "auto",
) -> PairDeltaSamples:
    """Draw pairs and contexts once and evaluate ``Δv_ij(S)`` on every game with the same coalitions.

    Args:
        games: one game or several games on the same players (e.g. clean and adversarial images).
        orders: preset name, ratios of n or explicit orders (:mod:`~lit_advgame.interactions.orders`).
        num_pairs: pairs per image (``None``: every pair of the kind).
        num_contexts: contexts per pair and order.
        pairs: ``"neighbour"`` (reference) or ``"uniform"``.
        generator: source of all random draws.
        max_forward_passes: refuse before any work when the planned count is larger.
        dedupe: evaluate identical coalitions of an image once: ``True``, ``False`` or ``"auto"``
            (only for orders where duplicates are plausible, see :func:`duplicates_likely`).
    """
    game_list = [games] if isinstance(games, MaskedGame) else list(games)
    check_games(game_list)
    check_int(num_contexts, "num_contexts", minimum=1)
    first = game_list[0]
    n, batch = first.num_players, first.num_images
    resolved = resolve_orders(orders, n)
    pair_ids = sample_pairs(batch, n, num_pairs, kind=pairs, player_map=first.player_map, generator=generator)
    num_p = pair_ids.shape[1]
    planned = len(game_list) * batch * (len(resolved) * num_p * num_contexts * 4 + 1)
    check_budget(planned, max_forward_passes, f"{len(resolved)} orders x {num_p} pairs x {num_contexts} contexts")
    for game in game_list:
        game.resolve_classes()
    deltas = torch.empty(len(game_list), batch, len(resolved), num_p, num_contexts, dtype=torch.float64)
    counts_before = [game.forward_passes for game in game_list]
    rows_per_image = num_p * num_contexts * 4
    block = max(1, min(batch, MAX_COALITION_ENTRIES // max(1, rows_per_image * n)))
    if dedupe not in (True, False, "auto"):
        raise ValueError(f"dedupe must be True, False or 'auto'; got {dedupe!r}")
    for o, m in enumerate(resolved.orders):
        dedupe_order = duplicates_likely(n, m, rows_per_image) if dedupe == "auto" else bool(dedupe)
        for start in range(0, batch, block):
            images = list(range(start, min(start + block, batch)))
            coalitions = []
            for b in images:
                excluded = pair_ids[b].repeat_interleave(num_contexts, dim=0)
                contexts = sample_subsets(excluded, m, n, generator)
                coalitions.append(pair_context_coalitions(excluded, contexts).view(rows_per_image, n))
            stacked = torch.stack(coalitions).to(first.device)
            for g, game in enumerate(game_list):
                values = game.evaluate(stacked, images=images, dedupe=dedupe_order).to(torch.float64)
                v = values.view(len(images), num_p, num_contexts, 4)
                deltas[g, start : start + len(images), o] = (v[..., 0] - v[..., 1] - v[..., 2] + v[..., 3]).cpu()
    forward = [game.forward_passes - before for game, before in zip(game_list, counts_before)]
    return PairDeltaSamples(resolved, n, pair_ids, deltas, num_pairs is None, forward)


def multi_order_from_samples(samples: PairDeltaSamples, game_index: int = 0) -> MultiOrderResult:
    """Summarise the samples of one game into a :class:`MultiOrderResult`."""
    summary = summarize_two_stage(samples.deltas[game_index], samples.exhaustive_pairs)
    return MultiOrderResult(
        orders=samples.orders.orders,
        ratios=samples.orders.ratios,
        num_players=samples.num_players,
        values=summary.values,
        stderr=summary.stderr,
        per_image=summary.per_image,
        per_image_stderr=summary.per_image_stderr,
        per_pair=summary.per_pair,
        per_pair_stderr=summary.per_pair_stderr,
        pairs=samples.pairs,
        num_contexts=samples.num_contexts,
        num_forward_passes=samples.num_forward_passes[game_index],
    )


def multi_order_interactions(
    game: MaskedGame,
    orders: OrderSpec = "reference",
    *,
    num_pairs: int | None = 200,
    num_contexts: int = 100,
    pairs: str = "neighbour",
    generator: torch.Generator | None = None,
    max_forward_passes: int | None = DEFAULT_MAX_FORWARD_PASSES,
    dedupe: bool | str = "auto",
) -> MultiOrderResult:
    """Estimate ``I^(m)`` for each order, per pair, per image and averaged (see :func:`sample_pair_deltas`).

    Defaults follow the reference code: neighbour pairs, 200 pairs, 100 contexts, the
    ``"reference"`` orders. Returns a :class:`~lit_advgame.interactions.results.MultiOrderResult`.
    """
    samples = sample_pair_deltas(
        game,
        orders,
        num_pairs=num_pairs,
        num_contexts=num_contexts,
        pairs=pairs,
        generator=generator,
        max_forward_passes=max_forward_passes,
        dedupe=dedupe,
    )
    return multi_order_from_samples(samples)
