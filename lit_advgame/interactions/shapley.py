"""Shapley values and multi-order Shapley values by sampling.

* :func:`shapley_values`: permutation sampling (Castro et al. 2009): each uniform random order of
  the players gives ``n + 1`` prefix coalitions and one marginal contribution
  ``v(Pre ∪ {i}) - v(Pre)`` for every player, an unbiased sample of ``φ_i`` (Eq. 1 of Ren et al.).
  The empty and full prefixes are shared by all permutations and evaluated once (dedupe).
* :func:`multi_order_shapley`: ``φ^(m)(i) = E_{S ⊆ N\\{i}, |S| = m} [v(S ∪ {i}) - v(S)]``
  (Ren et al., supplement B.2, Eq. 10), with uniform contexts; ``φ_i = (1/n) Σ_{m=0}^{n-1} φ^(m)(i)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lit_advgame.interactions.budget import DEFAULT_MAX_FORWARD_PASSES, check_budget
from lit_advgame.interactions.game import MaskedGame
from lit_advgame.interactions.multi_order import (
    ContextSampling,
    context_counts,
    evaluate_context_terms,
)
from lit_advgame.interactions.options import build_approximator, renamed_keyword
from lit_advgame.interactions.orders import OrderSpec, resolve_orders
from lit_advgame.interactions.results import MultiOrderShapleyResult, ShapleyResult
from lit_advgame.interactions.sampling import (
    sample_permutations,
    sample_players,
)
from lit_advgame.interactions.stats import (
    combine_stderr,
    mean_and_stderr,
    summarize_two_stage,
)
from lit_advgame.utils.checks import check_int
from lit_advgame.utils.seeding import make_generator


def _check_game(game: object) -> None:
    if not isinstance(game, MaskedGame):
        raise TypeError(f"game must be a MaskedGame; got {type(game).__name__}")


@dataclass
class ShapleyApproximator:
    """Permutation-sampling Shapley values (Castro et al. 2009) with a budget and a random state.

    Args:
        num_permutations: permutations per image.
        max_forward_passes: the budget (refused before any work when exceeded; ``None``: no cap).
        random_state: an ``int`` seeds a fresh generator for every call, a ``torch.Generator``
            continues its stream, ``None`` uses the global RNG.
        dedupe: evaluate the shared empty/full prefixes once.
    """

    num_permutations: int = 100
    max_forward_passes: int | None = DEFAULT_MAX_FORWARD_PASSES
    random_state: int | torch.Generator | None = None
    dedupe: bool = True

    def __post_init__(self) -> None:
        check_int(self.num_permutations, "num_permutations", minimum=1)

    def approximate(self, game: MaskedGame) -> ShapleyResult:
        """``φ(i) = Σ_{S ⊆ N\\{i}} |S|!(n-|S|-1)!/n! [v(S ∪ {i}) - v(S)]`` (Ren et al., NeurIPS 2021, Eq. 1).

        Each uniform random order of the players gives ``n + 1`` prefix coalitions and one
        unbiased sample ``v(Pre ∪ {i}) - v(Pre)`` of ``φ(i)`` for every player. Cost: at most
        ``B · num_permutations · (n + 1)`` masked inputs (minus shared prefixes).
        """
        _check_game(game)
        generator = make_generator(self.random_state)
        n, batch, count = game.num_players, game.num_images, self.num_permutations
        check_budget(batch * count * (n + 1), self.max_forward_passes, f"{count} permutations of {n} players")
        before = game.forward_passes
        contributions = torch.empty(batch, count, n, dtype=torch.float64)
        sizes = torch.arange(n + 1).view(1, n + 1, 1)
        for b in range(batch):
            permutations = sample_permutations(1, count, n, generator)[0].cpu()  # (T, n)
            ranks = permutations.argsort(dim=1)  # position of each player
            prefixes = ranks.unsqueeze(1) < sizes  # (T, n+1, n)
            values = game.evaluate(prefixes.view(1, -1, n).to(game.device), images=[b], dedupe=self.dedupe)
            values = values.view(count, n + 1).to(torch.float64).cpu()
            steps = values[:, 1:] - values[:, :-1]  # marginal of player permutations[:, k]
            contributions[b].scatter_(1, permutations, steps)
        per_image, per_image_stderr = mean_and_stderr(contributions, dim=1)
        return ShapleyResult(
            values=per_image.mean(dim=0),
            stderr=combine_stderr(per_image_stderr, dim=0),
            per_image=per_image,
            per_image_stderr=per_image_stderr,
            num_permutations=count,
            num_forward_passes=game.forward_passes - before,
        )


@dataclass
class MultiOrderShapleyApproximator(ContextSampling):
    """Multi-order Shapley values ``φ^(m)(i)`` by context sampling, with a budget and a random state.

    Settings as :class:`~lit_advgame.interactions.multi_order.ContextSampling` (orders in
    ``[0, n-1]``: ratios map to ``m = int((n-1) r)``; an order with ``C(n-1, m) <= num_contexts``
    contexts uses each once), plus:

    Args:
        num_sampled_players: players per image drawn without replacement (``None``: all players).
    """

    num_sampled_players: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_sampled_players is not None:
            check_int(self.num_sampled_players, "num_sampled_players", minimum=1)

    def approximate(self, game: MaskedGame) -> MultiOrderShapleyResult:
        """``φ^(m)(i) = E_{S ⊆ N\\{i}, |S| = m} [v(S ∪ {i}) - v(S)]`` (Ren et al., NeurIPS 2021, supplement Eq. 10)."""
        _check_game(game)
        generator = make_generator(self.random_state)
        n, batch = game.num_players, game.num_images
        resolved = resolve_orders(self.orders, n, shapley=True)
        if self.num_sampled_players is None:
            players = torch.arange(n).expand(batch, n).contiguous()
        else:
            check_int(self.num_sampled_players, "num_sampled_players", minimum=1, maximum=n)
            players = sample_players(batch, self.num_sampled_players, n, generator).cpu()
        k = players.shape[1]
        _, contexts = context_counts(n, 1, resolved.orders, self.num_contexts, self.enumerate_contexts)
        check_budget(batch * sum(contexts) * k * 2, self.max_forward_passes, f"{len(resolved)} orders x {k} players")
        game.resolve_classes()
        evaluated = evaluate_context_terms(
            [game],
            players.unsqueeze(-1),
            resolved.orders,
            self.num_contexts,
            generator,
            enumerate_contexts=self.enumerate_contexts,
            dedupe=self.dedupe,
        )
        summary = summarize_two_stage(evaluated.terms[0], self.num_sampled_players is None, evaluated.enumerated)
        return MultiOrderShapleyResult(
            orders=resolved.orders,
            ratios=resolved.ratios,
            num_players=n,
            players=players,
            **summary.aggregates(),
            per_player=summary.per_pair,
            per_player_stderr=summary.per_pair_stderr,
            num_contexts=self.num_contexts,
            num_forward_passes=evaluated.num_forward_passes[0],
        )


def shapley_values(game: MaskedGame, *, generator: torch.Generator | None = None, **options: Any) -> ShapleyResult:
    """Permutation-sampling Shapley values (Ren et al., NeurIPS 2021, Eq. 1).

    A thin wrapper of :class:`ShapleyApproximator`.

    ``options``: ``num_permutations=100``, ``max_forward_passes``, ``dedupe=True``. Returns a
    :class:`~lit_advgame.interactions.results.ShapleyResult` (``values`` averaged over images,
    ``per_image`` per image).
    """
    return build_approximator(ShapleyApproximator, "shapley_values", random_state=generator, **options).approximate(
        game
    )


def multi_order_shapley(
    game: MaskedGame, orders: OrderSpec = "reference", *, generator: torch.Generator | None = None, **options: Any
) -> MultiOrderShapleyResult:
    """Estimate ``φ^(m)(i)`` (Ren et al., NeurIPS 2021, supplement B.2, Eq. 10).

    A thin wrapper of :class:`MultiOrderShapleyApproximator`.

    ``options``: ``num_contexts=100``, ``num_sampled_players=None`` (players drawn per image; the
    old keyword ``num_players`` is a deprecated alias), ``max_forward_passes``, ``dedupe="auto"``,
    ``enumerate_contexts=True``.
    """
    renamed_keyword(options, "num_players", "num_sampled_players", "multi_order_shapley")
    return build_approximator(
        MultiOrderShapleyApproximator, "multi_order_shapley", orders=orders, random_state=generator, **options
    ).approximate(game)
