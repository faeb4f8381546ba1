"""Change of multi-order interactions under attack and the attacking utility (Ren et al., NeurIPS 2021).

``ΔI^(m) = I^(m)(x) - I^(m)(x_adv)`` and ``ΔJ^(m) = (n-1-m)/(n(n-1)) · ΔI^(m)`` (Eq. 3 and §4.1),
estimated with the **same** pairs and contexts on both inputs (as the reference code, which
reuses ``points.npy`` / ``ratio*_S.npy`` for x and x'), so the per-context differences are paired.
Also reports the normalised share ``|ΔI^(m)| / Σ_{m'} |ΔI^(m')|`` of supplement Table 2.

Conventions: :attr:`InteractionChangeResult.utility` is ``w(m) · ΔI^(m)`` with ``ΔI^(m)`` the mean
over images and sampled pairs -- the paper's ``ΔJ^(m) = E_x E_ij ΔJ^(m)_ij`` and the quantity the
reference ``plot.py --type 2`` draws. :attr:`InteractionChangeResult.utility_sum` is
``n(n-1)`` times that, the sum over ordered pairs that adds up (with the singleton terms) to
``v(N|x) - v(N|x_adv)`` in Eq. 3.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lit_advgame.interactions.game import MaskedGame
from lit_advgame.interactions.multi_order import PairDeltaSamples, PairSampling, multi_order_from_samples
from lit_advgame.interactions.options import build_approximator
from lit_advgame.interactions.orders import OrderSpec, utility_weights
from lit_advgame.interactions.results import InteractionChangeResult
from lit_advgame.interactions.stats import summarize_two_stage


def check_paired_games(clean_game: MaskedGame, adversarial_game: MaskedGame) -> None:
    """Both games of an interaction change must share labels, players and value function.

    ``ΔI^(m)`` compares the same quantity on ``x`` and ``x_adv``: the value of the same class
    (ground truth, or the adversarial prediction given to both) with the same players. Labels left
    to ``None`` are resolved from each game's own prediction first, so an attacked image whose
    prediction flipped is reported here instead of silently comparing two different classes.
    """
    for name, game in (("clean_game", clean_game), ("adversarial_game", adversarial_game)):
        if not isinstance(game, MaskedGame):
            raise TypeError(f"{name} must be a MaskedGame (InputGame, PerturbationGame); got {type(game).__name__}")
    clean_value, adv_value = clean_game.value, adversarial_game.value
    if clean_value.name != adv_value.name or clean_value.fn is not adv_value.fn:
        raise ValueError(
            f"clean_game and adversarial_game must use the same value function; got {clean_value.name!r} and "
            f"{adv_value.name!r}"
        )
    if clean_game.player_map.shape != adversarial_game.player_map.shape or not torch.equal(
        clean_game.player_map.cpu(), adversarial_game.player_map.cpu()
    ):
        raise ValueError("clean_game and adversarial_game must use the same players (player map / grid)")
    clean_game.resolve_classes()
    adversarial_game.resolve_classes()
    if clean_game.labels.shape != adversarial_game.labels.shape or not torch.equal(
        clean_game.labels.cpu(), adversarial_game.labels.cpu()
    ):
        differ = (
            (clean_game.labels.cpu() != adversarial_game.labels.cpu()).nonzero().flatten()[:5].tolist()
            if (clean_game.labels.shape == adversarial_game.labels.shape)
            else []
        )
        raise ValueError(
            "clean_game and adversarial_game must use the same labels (pass the same y to both, e.g. the ground "
            f"truth); they differ on images {differ}"
        )


@dataclass
class InteractionChangeApproximator(PairSampling):
    """Paired estimator of ``ΔI^(m)``, ``ΔJ^(m)`` and the share of each order (Ren et al., NeurIPS 2021, Eq. 3).

    Settings, budget and random state as :class:`~lit_advgame.interactions.multi_order.PairSampling`.
    """

    def approximate(self, clean_game: MaskedGame, adversarial_game: MaskedGame) -> InteractionChangeResult:
        """``ΔI^(m) = I^(m)(x) - I^(m)(x_adv)`` and ``ΔJ^(m) = (n-1-m)/(n(n-1)) · ΔI^(m)`` (Eq. 3, §4.1).

        Both games are evaluated on the same pairs and contexts; they must share labels, players
        and value function (:func:`check_paired_games`).
        """
        check_paired_games(clean_game, adversarial_game)
        return interaction_change_from_samples(self.sample([clean_game, adversarial_game]))


def interaction_change_from_samples(
    samples: PairDeltaSamples, clean_index: int = 0, adversarial_index: int = 1
) -> InteractionChangeResult:
    """``ΔI^(m)``, ``ΔJ^(m) = (n-1-m)/(n(n-1)) · ΔI^(m)`` and the shares (Ren et al., NeurIPS 2021, Eq. 3, §4.1)
    from shared samples (see :class:`~lit_advgame.interactions.multi_order.PairSampling`): the games
    ``clean_index`` and ``adversarial_index`` of ``samples`` (drawn with the same pairs and contexts).

    With :func:`~lit_advgame.interactions.disentanglement.disentanglement_from_samples` on the same samples,
    ``D^(m)`` of the clean game comes without further forward passes.
    """
    clean = multi_order_from_samples(samples, clean_index)
    adversarial = multi_order_from_samples(samples, adversarial_index)
    change = summarize_two_stage(
        samples.deltas[clean_index] - samples.deltas[adversarial_index], samples.exhaustive_pairs, samples.enumerated
    )
    n = samples.num_players
    weights = torch.tensor(utility_weights(samples.orders.orders, n), dtype=torch.float64)
    total = change.values.abs().sum()
    share = change.values.abs() / total if float(total) > 0 else torch.full_like(change.values, float("nan"))
    return InteractionChangeResult(
        clean=clean,
        adversarial=adversarial,
        **change.aggregates(),
        per_pair=change.per_pair,
        weights=weights,
        utility=weights * change.values,
        utility_stderr=weights * change.stderr,
        utility_sum=n * (n - 1) * weights * change.values,
        share=share,
    )


def interaction_change(
    clean_game: MaskedGame,
    adversarial_game: MaskedGame,
    orders: OrderSpec = "reference",
    *,
    generator: torch.Generator | None = None,
    **options: Any,
) -> InteractionChangeResult:
    """Paired estimate of ``ΔI^(m)``, ``ΔJ^(m)`` and the share of each order (Ren et al., NeurIPS 2021, Eq. 3).

    Thin wrapper of :class:`InteractionChangeApproximator`.

    Args:
        clean_game, adversarial_game: games on ``x`` and ``x_adv`` with the same players, value
            function and labels (e.g. ``InputGame(model, x, y)`` and ``InputGame(model, x_adv, y)``).
        orders, generator, options: as :func:`~lit_advgame.interactions.multi_order.multi_order_interactions`.
    """
    return build_approximator(
        InteractionChangeApproximator, "interaction_change", orders=orders, random_state=generator, **options
    ).approximate(clean_game, adversarial_game)


#: the attacking utility ``ΔJ^(m)`` comes with the interaction change
attacking_utility = interaction_change
