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

import torch

from lit_advgame.interactions.budget import DEFAULT_MAX_FORWARD_PASSES
from lit_advgame.interactions.game import MaskedGame
from lit_advgame.interactions.multi_order import (
    multi_order_from_samples,
    sample_pair_deltas,
)
from lit_advgame.interactions.orders import OrderSpec, utility_weights
from lit_advgame.interactions.results import InteractionChangeResult
from lit_advgame.interactions.stats import summarize_two_stage


def interaction_change(
    clean_game: MaskedGame,
    adversarial_game: MaskedGame,
    orders: OrderSpec = "reference",
    *,
    num_pairs: int | None = 200,
    num_contexts: int = 100,
    pairs: str = "neighbour",
    generator: torch.Generator | None = None,
    max_forward_passes: int | None = DEFAULT_MAX_FORWARD_PASSES,
    dedupe: bool | str = "auto",
) -> InteractionChangeResult:
    """Paired estimate of ``ΔI^(m)``, ``ΔJ^(m)`` and the share of each order.

    Args:
        clean_game, adversarial_game: games on ``x`` and ``x_adv`` with the same players, value
            function and labels (e.g. ``InputGame(model, x, y)`` and ``InputGame(model, x_adv, y)``).
        Other arguments as :func:`~lit_advgame.interactions.multi_order.sample_pair_deltas`.
    """
    samples = sample_pair_deltas(
        [clean_game, adversarial_game],
        orders,
        num_pairs=num_pairs,
        num_contexts=num_contexts,
        pairs=pairs,
        generator=generator,
        max_forward_passes=max_forward_passes,
        dedupe=dedupe,
    )
    clean = multi_order_from_samples(samples, 0)
    adversarial = multi_order_from_samples(samples, 1)
    change = summarize_two_stage(samples.deltas[0] - samples.deltas[1], samples.exhaustive_pairs)
    n = samples.num_players
    weights = torch.tensor(utility_weights(samples.orders.orders, n), dtype=torch.float64)
    total = change.values.abs().sum()
    share = change.values.abs() / total if float(total) > 0 else torch.full_like(change.values, float("nan"))
    return InteractionChangeResult(
        clean=clean,
        adversarial=adversarial,
        values=change.values,
        stderr=change.stderr,
        per_image=change.per_image,
        per_image_stderr=change.per_image_stderr,
        per_pair=change.per_pair,
        weights=weights,
        utility=weights * change.values,
        utility_stderr=weights * change.stderr,
        utility_sum=n * (n - 1) * weights * change.values,
        share=share,
    )


#: the attacking utility ``ΔJ^(m)`` comes with the interaction change
attacking_utility = interaction_change
