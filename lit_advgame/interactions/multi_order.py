"""Multi-order interactions ``I^(m)`` by sampling (Ren et al., NeurIPS 2021, Eq. 2; Zhang et al. 2020).

``I^(m)_ij = E_{S ⊆ N\\{i,j}, |S| = m} Δv_ij(S)`` with
``Δv_ij(S) = v(S ∪ {i,j}) - v(S ∪ {i}) - v(S ∪ {j}) + v(S)``, estimated as the reference code does:
``num_pairs`` pairs per image (neighbour pairs by default), ``num_contexts`` uniform contexts per
pair and order, four masked inputs per context; an order with no more than ``num_contexts``
possible contexts (``C(n-2, m)``, e.g. ``m = 0`` or ``m = n-2``) uses each of them once instead
(exact per-pair values). :class:`PairSampling` is the shared sampling core (settings, budget and
random state; :func:`sample_pair_deltas` its functional form): it draws pairs and contexts once and
evaluates every given game on the *same* coalitions (paired estimates of clean vs adversarial
inputs). ``I^(m) = E_x E_ij I^(m)_ij``.

Cost: ``B · P · 4 · Σ_m T_m`` masked inputs per game (``T_m = min(T, C(n-2, m))`` contexts) before
deduplication (identical coalitions of an image, e.g. the sets shared by pairs at ``m = 0``, are
evaluated once). The reference recipe (16x16 grid, 200 pairs, 100 contexts) is 80,000 per image
and order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from math import comb
from typing import Any

import torch

from lit_advgame.interactions.budget import DEFAULT_MAX_FORWARD_PASSES, check_budget
from lit_advgame.interactions.game import MaskedGame
from lit_advgame.interactions.options import build_approximator
from lit_advgame.interactions.orders import Orders, OrderSpec, resolve_orders
from lit_advgame.interactions.results import MultiOrderResult
from lit_advgame.interactions.sampling import (
    PAIR_KINDS,
    enumerate_subsets,
    sample_pairs,
    sample_subsets,
)
from lit_advgame.interactions.stats import summarize_two_stage
from lit_advgame.utils.checks import check_int
from lit_advgame.utils.seeding import make_generator

#: at most this many coalition entries (rows x players) are materialised at once
MAX_COALITION_ENTRIES = 1 << 26


@dataclass
class PairDeltaSamples:
    """Raw ``Δv_ij(S)`` samples shared by the pair estimators.

    Attributes:
        orders: the resolved orders.
        num_players: n.
        pairs: ``(B, P, 2)`` pairs ``(i, j)``, ``i < j`` (CPU).
        deltas: ``(G, B, O, P, T)`` float64 ``Δv`` per game, image, order, pair and context; an
            enumerated order fills its first ``C(n-2, m)`` contexts and holds NaN after them.
        exhaustive_pairs: True when every pair of the kind was used (no pair sampling).
        num_forward_passes: per game, the masked inputs evaluated.
        pair_kind: ``"neighbour"`` or ``"uniform"``: which pairs the means run over.
        enumerated: per order, True when every context was used once (exact per-pair values).
        value_scale: ``(G, B)`` largest ``|v(S)|`` evaluated per game and image (the scale of the
            rounding noise of ``Δv``); value_dtype: dtype the values were computed in.
    """

    orders: Orders
    num_players: int
    pairs: torch.Tensor
    deltas: torch.Tensor
    exhaustive_pairs: bool
    num_forward_passes: list[int]
    pair_kind: str = "neighbour"
    enumerated: tuple[bool, ...] = ()
    value_scale: torch.Tensor | None = None
    value_dtype: torch.dtype = torch.float64

    @property
    def num_contexts(self) -> int:
        return self.deltas.shape[-1]

    @property
    def contexts_per_order(self) -> tuple[int, ...]:
        """Contexts actually used per order: ``C(n-2, m)`` where enumerated, else ``num_contexts``."""
        flags = self.enumerated or (False,) * len(self.orders)
        return tuple(
            comb(self.num_players - 2, m) if e else self.num_contexts for m, e in zip(self.orders.orders, flags)
        )


def check_games(games: Sequence[MaskedGame]) -> None:
    """Games evaluated on shared coalitions need the same images count and player map."""
    if len(games) == 0:
        raise ValueError("pass at least one game")
    for game in games:
        if not isinstance(game, MaskedGame):
            raise TypeError(
                f"games must be MaskedGame instances (InputGame, PerturbationGame); got {type(game).__name__}"
            )
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


def unit_context_coalitions(units: torch.Tensor, contexts: torch.Tensor) -> torch.Tensor:
    """The ``2^e`` coalitions ``S ∪ T``, ``T ⊆ U``, of each (unit ``U``, context ``S``), largest ``T`` first.

    Args:
        units: ``(R, e)`` long, ``e`` = 1 (a player ``i``: ``S ∪ {i}, S``) or 2 (a pair ``(i, j)``:
            ``S ∪ {i,j}, S ∪ {i}, S ∪ {j}, S``); contexts: ``(R, n)`` bool (not containing the unit).

    Returns:
        ``(R, 2^e, n)`` bool. The signed sum with :func:`unit_signs` is the marginal contribution
        (``e = 1``) or ``Δv_ij(S)`` (``e = 2``).
    """
    n = contexts.shape[1]
    onehots = torch.nn.functional.one_hot(units.to(contexts.device), n).bool()  # (R, e, n)
    added = [torch.zeros_like(contexts)]
    for k in range(units.shape[1] - 1, -1, -1):  # subsets of the unit, built so the full unit comes first
        added = [a | onehots[:, k] for a in added] + added
    return torch.stack(added, dim=1) | contexts.unsqueeze(1)


def unit_signs(unit_size: int) -> torch.Tensor:
    """``(-1)^(e - |T|)`` for the coalitions of :func:`unit_context_coalitions` (float64, ``(2^e,)``)."""
    # row k of unit_context_coalitions leaves out the unit members whose bits are set in k
    dropped = torch.tensor([k.bit_count() for k in range(1 << unit_size)])
    return torch.where(dropped % 2 == 0, 1.0, -1.0).to(torch.float64)


def signed_sum(values: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """``Σ_k signs[k] · values[..., k]`` summed left to right (``v0 - v1 - v2 + v3`` exactly as written)."""
    total = values[..., 0] * signs[0]
    for k in range(1, signs.shape[0]):
        total = total + signs[k] * values[..., k]
    return total


def pair_context_coalitions(pairs: torch.Tensor, contexts: torch.Tensor) -> torch.Tensor:
    """The four coalitions of each (pair, context): ``S ∪ {i,j}, S ∪ {i}, S ∪ {j}, S``.

    Args:
        pairs: ``(R, 2)`` long; contexts: ``(R, n)`` bool (not containing i or j).

    Returns:
        ``(R, 4, n)`` bool.
    """
    return unit_context_coalitions(pairs, contexts)


def duplicates_likely(num_players: int, order: int, num_rows: int, unit_size: int = 2) -> bool:
    """Whether identical coalitions are plausible among ``num_rows`` unit-context coalitions of order m.

    Birthday bound: duplicates need fewer possible sets (contexts ``C(n-e, m)`` of a unit of ``e``
    players, or sets of size ``m .. m+e`` shared across units) than about ``num_rows²``. For a
    16x16 grid this is true only near ``m = 0`` and ``m = n - e``; elsewhere deduplication would
    only cost time.
    """
    n, m = num_players, order
    possible = min([comb(n - unit_size, m)] + [comb(n, m + k) for k in range(unit_size + 1)])
    return possible <= num_rows * num_rows


@dataclass
class ContextTerms:
    """Signed context terms of every game: ``(G, B, O, K, T)`` float64 (NaN after an enumerated order's contexts)."""

    terms: torch.Tensor
    enumerated: tuple[bool, ...]
    value_scale: torch.Tensor
    value_dtype: torch.dtype
    num_forward_passes: list[int]


def context_counts(
    num_players: int, unit_size: int, orders: Sequence[int], num_contexts: int, enumerate_contexts: bool
) -> tuple[tuple[bool, ...], list[int]]:
    """Per order: whether its ``C(n-e, m)`` contexts are enumerated, and the contexts it uses."""
    free = num_players - unit_size
    enumerated = tuple(enumerate_contexts and comb(free, m) <= num_contexts for m in orders)
    return enumerated, [comb(free, m) if e else num_contexts for m, e in zip(orders, enumerated)]


def evaluate_context_terms(
    games: Sequence[MaskedGame],
    units: torch.Tensor,
    orders: Sequence[int],
    num_contexts: int,
    generator: torch.Generator | None,
    *,
    enumerate_contexts: bool = True,
    dedupe: bool | str = "auto",
) -> ContextTerms:
    """Evaluate ``Σ_{T ⊆ U} (-1)^(e-|T|) v(S ∪ T)`` for every image, order, unit ``U`` and context ``S``.

    The shared core of the pair estimators (``e = 2``: ``Δv_ij(S)``, Ren et al., NeurIPS 2021,
    Eq. 2) and of the multi-order Shapley values (``e = 1``: ``v(S ∪ {i}) - v(S)``, supplement
    Eq. 10). ``units``: ``(B, K, e)`` long (CPU). Contexts are uniform ``m``-subsets of
    ``N \\ U`` drawn image by image (so grouping images for evaluation does not change the
    draws), or every subset once when there are at most ``num_contexts`` of them and
    ``enumerate_contexts``; the random stream is consumed in both cases. Every game is evaluated
    on the same coalitions.
    """
    first = games[0]
    n, batch = first.num_players, first.num_images
    num_units, unit_size = units.shape[1], units.shape[2]
    enumerated, contexts = context_counts(n, unit_size, orders, num_contexts, enumerate_contexts)
    signs = unit_signs(unit_size)
    terms = torch.full((len(games), batch, len(orders), num_units, num_contexts), math.nan, dtype=torch.float64)
    scale = torch.zeros(len(games), batch, dtype=torch.float64)
    before = [game.forward_passes for game in games]
    value_dtype = first.value_dtype
    for o, m in enumerate(orders):
        t = contexts[o]
        rows_per_image = num_units * t * len(signs)
        dedupe_order = duplicates_likely(n, m, rows_per_image, unit_size) if dedupe == "auto" else bool(dedupe)
        block = max(1, min(batch, MAX_COALITION_ENTRIES // max(1, rows_per_image * n)))
        for start in range(0, batch, block):
            images = list(range(start, min(start + block, batch)))
            coalitions = []
            for b in images:
                excluded = units[b].repeat_interleave(num_contexts, dim=0)
                drawn = sample_subsets(excluded, m, n, generator)  # drawn even when enumerated: same stream
                if enumerated[o]:
                    excluded = units[b].repeat_interleave(t, dim=0)
                    drawn = enumerate_subsets(units[b], m, n).view(num_units * t, n)
                coalitions.append(unit_context_coalitions(excluded, drawn).view(rows_per_image, n))
            stacked = torch.stack(coalitions).to(first.device)
            rows = slice(start, start + len(images))
            for g, game in enumerate(games):
                values = game.evaluate(stacked, images=images, dedupe=dedupe_order).to(torch.float64).cpu()
                value_dtype = game.value_dtype
                scale[g, rows] = torch.maximum(scale[g, rows], values.abs().amax(dim=1))
                terms[g, rows, o, :, :t] = signed_sum(values.view(len(images), num_units, t, len(signs)), signs)
    forward = [game.forward_passes - count for game, count in zip(games, before)]
    return ContextTerms(terms, enumerated, scale, value_dtype, forward)


@dataclass
class ContextSampling:
    """Settings shared by the context-sampling estimators: orders, contexts, budget and random state.

    Args:
        orders: preset name, ratios of n or explicit orders (:mod:`~lit_advgame.interactions.orders`).
        num_contexts: contexts per unit (pair or player) and order. An order with at most
            ``num_contexts`` possible contexts (``C(n-2, m)`` for a pair, ``C(n-1, m)`` for a player)
            uses each of them once instead (exact values, zero standard error) unless
            ``enumerate_contexts=False``; the random stream is consumed as if it sampled, so the
            other orders' draws do not depend on which orders are enumerated.
        max_forward_passes: the budget: refuse before any work when the planned count is larger
            (``None``: no cap).
        random_state: an ``int`` seeds a fresh generator for every call (the same draws each call), a
            ``torch.Generator`` continues its stream, ``None`` uses the global RNG.
        dedupe: evaluate identical coalitions of an image once: ``True``, ``False`` or ``"auto"``
            (only for orders where duplicates are plausible, see :func:`duplicates_likely`).
        enumerate_contexts: see ``num_contexts``.
    """

    orders: OrderSpec = "reference"
    num_contexts: int = 100
    max_forward_passes: int | None = DEFAULT_MAX_FORWARD_PASSES
    random_state: int | torch.Generator | None = None
    dedupe: bool | str = "auto"
    enumerate_contexts: bool = True

    def __post_init__(self) -> None:
        check_int(self.num_contexts, "num_contexts", minimum=1)
        if self.dedupe not in (True, False, "auto"):
            raise ValueError(f"dedupe must be True, False or 'auto'; got {self.dedupe!r}")


@dataclass
class PairSampling(ContextSampling):
    """How the pair estimators draw pairs and contexts (plus :class:`ContextSampling`'s settings).

    The estimators of ``I^(m)`` (:class:`MultiOrderApproximator`), ``ΔI^(m)``
    (:class:`~lit_advgame.interactions.attacking_utility.InteractionChangeApproximator`) and
    ``D^(m)`` (:class:`~lit_advgame.interactions.disentanglement.DisentanglementApproximator`)
    share these settings (shapiq style: settings, budget and random state at construction,
    ``approximate(game)`` to run). Defaults follow the reference code of Ren et al. (NeurIPS 2021).

    Args:
        num_pairs: pairs per image (``None``: every pair of the kind, no pair sampling).
        pairs: ``"neighbour"`` (reference: adjacent players) or ``"uniform"``.
    """

    num_pairs: int | None = 200
    pairs: str = "neighbour"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_pairs is not None:
            check_int(self.num_pairs, "num_pairs", minimum=1)
        if self.pairs not in PAIR_KINDS:
            raise ValueError(f"unknown pair sampler {self.pairs!r}; choose one of {', '.join(PAIR_KINDS)}")

    def sample(self, games: MaskedGame | Sequence[MaskedGame]) -> PairDeltaSamples:
        """Draw pairs and contexts once and evaluate ``Δv_ij(S)`` on every game with the same coalitions.

        ``Δv_ij(S) = v(S ∪ {i,j}) - v(S ∪ {i}) - v(S ∪ {j}) + v(S)`` (Ren et al., NeurIPS 2021, Eq. 2).
        ``games``: one game or several games on the same players (e.g. clean and adversarial images).
        """
        game_list = [games] if isinstance(games, MaskedGame) else list(games)
        check_games(game_list)
        generator = make_generator(self.random_state)
        first = game_list[0]
        n, batch = first.num_players, first.num_images
        resolved = resolve_orders(self.orders, n)
        pair_ids = sample_pairs(
            batch, n, self.num_pairs, kind=self.pairs, player_map=first.player_map, generator=generator
        )
        num_p = pair_ids.shape[1]
        _, contexts = context_counts(n, 2, resolved.orders, self.num_contexts, self.enumerate_contexts)
        planned = len(game_list) * batch * (sum(contexts) * num_p * 4 + 1)
        check_budget(
            planned, self.max_forward_passes, f"{len(resolved)} orders x {num_p} pairs x {self.num_contexts} contexts"
        )
        for game in game_list:
            game.resolve_classes()
        evaluated = evaluate_context_terms(
            game_list,
            pair_ids,
            resolved.orders,
            self.num_contexts,
            generator,
            enumerate_contexts=self.enumerate_contexts,
            dedupe=self.dedupe,
        )
        return PairDeltaSamples(
            resolved,
            n,
            pair_ids,
            evaluated.terms,
            self.num_pairs is None,
            evaluated.num_forward_passes,
            pair_kind=self.pairs,
            enumerated=evaluated.enumerated,
            value_scale=evaluated.value_scale,
            value_dtype=evaluated.value_dtype,
        )


def sample_pair_deltas(
    games: MaskedGame | Sequence[MaskedGame],
    orders: OrderSpec = "reference",
    *,
    generator: torch.Generator | None = None,
    **options: Any,
) -> PairDeltaSamples:
    """Functional form of :meth:`PairSampling.sample`: ``options`` are :class:`PairSampling`'s fields
    (``num_pairs=200``, ``num_contexts=100``, ``pairs="neighbour"``, ``max_forward_passes``,
    ``dedupe="auto"``, ``enumerate_contexts=True``); ``generator`` is its ``random_state``."""
    return build_approximator(
        PairSampling, "sample_pair_deltas", orders=orders, random_state=generator, **options
    ).sample(games)


def multi_order_from_samples(samples: PairDeltaSamples, game_index: int = 0) -> MultiOrderResult:
    """Summarise the samples of one game into a :class:`MultiOrderResult`.

    ``I^(m) = E_x E_ij I^(m)_ij(x)`` with ``I^(m)_ij = E_{|S|=m} Δv_ij(S)`` (Ren et al., NeurIPS 2021,
    Eq. 2 and §4.1), the mean over the sampled pairs of the kind ``samples.pair_kind``.
    """
    summary = summarize_two_stage(samples.deltas[game_index], samples.exhaustive_pairs, samples.enumerated)
    return MultiOrderResult(
        orders=samples.orders.orders,
        ratios=samples.orders.ratios,
        num_players=samples.num_players,
        **summary.aggregates(),
        per_pair=summary.per_pair,
        per_pair_stderr=summary.per_pair_stderr,
        pairs=samples.pairs,
        num_contexts=samples.num_contexts,
        num_forward_passes=samples.num_forward_passes[game_index],
        pair_kind=samples.pair_kind,
        exhaustive_pairs=samples.exhaustive_pairs,
    )


@dataclass
class MultiOrderApproximator(PairSampling):
    """Estimator of ``I^(m)`` per pair, per image and averaged (Ren et al., NeurIPS 2021, Eq. 2).

    Settings, budget and random state as :class:`PairSampling`; :meth:`approximate` runs it.
    """

    def approximate(self, game: MaskedGame) -> MultiOrderResult:
        """``I^(m)_ij = E_{S ⊆ N\\{i,j}, |S|=m} Δv_ij(S)`` on ``game`` (Ren et al., NeurIPS 2021, Eq. 2)."""
        return multi_order_from_samples(self.sample(game))


def multi_order_interactions(
    game: MaskedGame,
    orders: OrderSpec = "reference",
    *,
    generator: torch.Generator | None = None,
    **options: Any,
) -> MultiOrderResult:
    """Estimate ``I^(m)`` for each order, per pair, per image and averaged (Ren et al., NeurIPS 2021, Eq. 2).

    Thin wrapper of :class:`MultiOrderApproximator`: ``options`` are :class:`PairSampling`'s
    fields. Defaults follow the reference code: neighbour pairs, 200 pairs, 100 contexts, the
    ``"reference"`` orders. Returns a :class:`~lit_advgame.interactions.results.MultiOrderResult`.

    Example: 5 neighbour pairs of a 3×3 grid (n = 9) at orders m = 0, 3, 7 with a seeded generator. Orders with
    at most ``num_contexts`` contexts (m = 0 and m = 7: one each) are enumerated, so their per-pair values are
    exact (zero standard error, equal to the exact oracle); m = 3 (35 contexts) is sampled:

    >>> import torch
    >>> from torch import nn
    >>> from lit_advgame.interactions import InputGame, exact_interactions
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(36, 8), nn.Tanh(), nn.Linear(8, 3))
    >>> x, y = torch.rand(2, 1, 6, 6), torch.tensor([0, 1])
    >>> game = InputGame(model, x, y, grid=3, baseline="zeros")
    >>> g = torch.Generator().manual_seed(0)
    >>> result = multi_order_interactions(game, [0.0, 0.5, 1.0], num_pairs=5, num_contexts=10, generator=g)
    >>> result.orders, tuple(result.values.shape), tuple(result.per_image.shape), tuple(result.per_pair.shape)
    ((0, 3, 7), (3,), (2, 3), (2, 3, 5))
    >>> result.per_pair_stderr.gt(0).any(dim=-1)  # (image, order): only m = 3 is sampled
    tensor([[False,  True, False],
            [False,  True, False]])
    >>> i, j = result.pairs[0, 0]
    >>> torch.allclose(result.per_pair[0, 0, 0], exact_interactions(game).multi_order[0, 0, i, j])
    True
    """
    return build_approximator(
        MultiOrderApproximator, "multi_order_interactions", orders=orders, random_state=generator, **options
    ).approximate(game)
