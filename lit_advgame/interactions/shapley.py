"""Shapley values and multi-order Shapley values by sampling.

* :func:`shapley_values`: permutation sampling (Castro et al. 2009): each uniform random order of
  the players gives ``n + 1`` prefix coalitions and one marginal contribution
  ``v(Pre ∪ {i}) - v(Pre)`` for every player, an unbiased sample of ``φ_i`` (Eq. 1 of Ren et al.).
  The empty and full prefixes are shared by all permutations and evaluated once (dedupe).
* :func:`multi_order_shapley`: ``φ^(m)(i) = E_{S ⊆ N\\{i}, |S| = m} [v(S ∪ {i}) - v(S)]``
  (Ren et al., supplement B.2, Eq. 10), with uniform contexts; ``φ_i = (1/n) Σ_{m=0}^{n-1} φ^(m)(i)``.
"""
from __future__ import annotations

from math import comb

import torch

from lit_advgame.interactions.budget import DEFAULT_MAX_FORWARD_PASSES, check_budget
from lit_advgame.interactions.game import MaskedGame
from lit_advgame.interactions.multi_order import MAX_COALITION_ENTRIES
from lit_advgame.interactions.orders import OrderSpec, resolve_orders
from lit_advgame.interactions.results import MultiOrderShapleyResult, ShapleyResult
from lit_advgame.interactions.sampling import (
    sample_permutations,
    sample_players,
    sample_subsets,
)
from lit_advgame.interactions.stats import mean_and_stderr, summarize_two_stage
from lit_advgame.utils.checks import check_int


def shapley_values(
    game: MaskedGame,
    *,
    num_permutations: int = 100,
    generator: torch.Generator | None = None,
    max_forward_passes: int | None = DEFAULT_MAX_FORWARD_PASSES,
    dedupe: bool = True,
) -> ShapleyResult:
    """Permutation-sampling Shapley values ``(B, n)`` with per-player standard errors.

    Cost: at most ``B · num_permutations · (n + 1)`` masked inputs (minus shared prefixes).
    """
    if not isinstance(game, MaskedGame):
        raise TypeError(f"game must be a MaskedGame; got {type(game).__name__}")
    check_int(num_permutations, "num_permutations", minimum=1)
    n, batch = game.num_players, game.num_images
    check_budget(batch * num_permutations * (n + 1), max_forward_passes, f"{num_permutations} permutations of {n} players")
    before = game.forward_passes
    contributions = torch.empty(batch, num_permutations, n, dtype=torch.float64)
    sizes = torch.arange(n + 1).view(1, n + 1, 1)
    for b in range(batch):
        permutations = sample_permutations(1, num_permutations, n, generator)[0].cpu()  # (T, n)
        ranks = permutations.argsort(dim=1)  # position of each player
        prefixes = ranks.unsqueeze(1) < sizes  # (T, n+1, n)
        values = game.evaluate(prefixes.view(1, -1, n).to(game.device), images=[b], dedupe=dedupe)
        values = values.view(num_permutations, n + 1).to(torch.float64).cpu()
        steps = values[:, 1:] - values[:, :-1]  # marginal of player permutations[:, k]
        contributions[b].scatter_(1, permutations, steps)
    mean, stderr = mean_and_stderr(contributions, dim=1)
    return ShapleyResult(mean, stderr, num_permutations, game.forward_passes - before)


def multi_order_shapley(
    game: MaskedGame,
    orders: OrderSpec = "reference",
    *,
    num_contexts: int = 100,
    num_players: int | None = None,
    generator: torch.Generator | None = None,
    max_forward_passes: int | None = DEFAULT_MAX_FORWARD_PASSES,
    dedupe: bool | str = "auto",
) -> MultiOrderShapleyResult:
    """Estimate ``φ^(m)(i)`` for orders in ``[0, n-1]`` (ratios map to ``m = int((n-1) r)``).

    Args:
        game: the game.
        orders: preset, ratios or explicit orders.
        num_contexts: contexts per player and order.
        num_players: players per image drawn without replacement (``None``: all players).
        dedupe: ``True``, ``False`` or ``"auto"`` (only where duplicate coalitions are plausible).
    """
    if not isinstance(game, MaskedGame):
        raise TypeError(f"game must be a MaskedGame; got {type(game).__name__}")
    check_int(num_contexts, "num_contexts", minimum=1)
    n, batch = game.num_players, game.num_images
    resolved = resolve_orders(orders, n, shapley=True)
    if num_players is None:
        players = torch.arange(n).expand(batch, n).contiguous()
    else:
        check_int(num_players, "num_players", minimum=1, maximum=n)
        players = sample_players(batch, num_players, n, generator).cpu()
    k = players.shape[1]
    check_budget(batch * len(resolved) * k * num_contexts * 2, max_forward_passes, f"{len(resolved)} orders x {k} players")
    before = game.forward_passes
    deltas = torch.empty(batch, len(resolved), k, num_contexts, dtype=torch.float64)
    rows_per_image = k * num_contexts * 2
    block = max(1, min(batch, MAX_COALITION_ENTRIES // max(1, rows_per_image * n)))
    for o, m in enumerate(resolved.orders):
        if dedupe == "auto":
            possible = min(comb(n - 1, m), comb(n, m), comb(n, m + 1))
            dedupe_order = possible <= rows_per_image * rows_per_image
        else:
            dedupe_order = bool(dedupe)
        for start in range(0, batch, block):
            images = list(range(start, min(start + block, batch)))
            coalitions = []
            for b in images:
                excluded = players[b].repeat_interleave(num_contexts).view(-1, 1)
                contexts = sample_subsets(excluded, m, n, generator)
                pair = contexts.unsqueeze(1).repeat(1, 2, 1)
                pair[torch.arange(pair.shape[0]), 0, excluded[:, 0].to(pair.device)] = True
                coalitions.append(pair.view(rows_per_image, n))
            values = game.evaluate(torch.stack(coalitions).to(game.device), images=images, dedupe=dedupe_order)
            v = values.to(torch.float64).cpu().view(len(images), k, num_contexts, 2)
            deltas[start : start + len(images), o] = v[..., 0] - v[..., 1]
    summary = summarize_two_stage(deltas, exhaustive_pairs=num_players is None)
    return MultiOrderShapleyResult(
        orders=resolved.orders,
        ratios=resolved.ratios,
        num_players=n,
        players=players,
        values=summary.per_pair,
        stderr=summary.per_pair_stderr,
        mean_over_players=summary.values,
        mean_over_players_stderr=summary.stderr,
        num_contexts=num_contexts,
        num_forward_passes=game.forward_passes - before,
    )
