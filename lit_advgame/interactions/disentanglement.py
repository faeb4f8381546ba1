"""Interaction disentanglement ``D^(m)`` (Ren et al., NeurIPS 2021, Eq. 4 and supplement F).

``D^(m)`` compares the strength of the average interaction of a pair, ``|E_S Δv_ij(S)|``, with
the average strength of its components, ``E_S |Δv_ij(S)|``; it is 1 when all components share a
sign. Two forms are reported:

* ``values`` (the reference ``plot.py --type 3``): a **ratio of means** over images and pairs,
  ``mean_{x,(i,j)} |Ê_S Δv| / mean_{x,(i,j)} Ê_S |Δv|``;
* ``per_pair_form`` (Eq. 4 as printed): the mean over images and pairs of the per-pair ratios.

Pairs whose ``Ê_S |Δv|`` is rounding noise (:func:`~lit_advgame.interactions.stats.rounding_floor`
of the image's largest ``|v|``: common with ReLU nets and logit/margin values, which are
piecewise linear) carry no information about the sign structure: they are left out of both forms
and counted in ``num_skipped_pairs``; a form with every unit skipped is NaN.

Standard error of the ratio of means: with sampled pairs, the delta method over the (image, pair)
units; with every pair used (``num_pairs=None``) only the contexts are sampled, so it is the
delta method over the contexts of each pair, combined over the fixed pairs as
:func:`~lit_advgame.interactions.multi_order.multi_order_interactions` does.

The reference computes it on clean images only; pass the clean game.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from lit_advgame.interactions.game import MaskedGame
from lit_advgame.interactions.multi_order import PairDeltaSamples, PairSampling
from lit_advgame.interactions.options import build_approximator
from lit_advgame.interactions.orders import OrderSpec
from lit_advgame.interactions.results import DisentanglementResult
from lit_advgame.interactions.stats import (
    ROUNDING_ULPS,
    combine_stderr,
    context_stats,
    ratio_of_means,
    rounding_floor,
)


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """``numerator / denominator`` with NaN where the denominator is 0 (every unit skipped)."""
    return torch.where(denominator > 0, numerator / torch.where(denominator > 0, denominator, 1.0), math.nan)


def disentanglement_from_samples(
    samples: PairDeltaSamples, game_index: int = 0, *, rounding_ulps: float = ROUNDING_ULPS
) -> DisentanglementResult:
    """``D^(m)`` (Ren et al., NeurIPS 2021, Eq. 4) from shared samples (see :class:`PairSampling`).

    ``rounding_ulps``: a pair whose ``Ê_S |Δv_ij(S)|`` is at most ``rounding_ulps · eps ·
    max |v|`` of its image is rounding noise and skipped (0 skips only exact zeros).
    """
    deltas = samples.deltas[game_index]  # (B, O, P, T), NaN after an enumerated order's contexts
    signed, _ = context_stats(deltas, samples.enumerated)  # Î^(m)_ij
    denominator, _ = context_stats(deltas.abs(), samples.enumerated)  # Ê_S |Δv|
    numerator = signed.abs()
    scale = samples.value_scale[game_index] if samples.value_scale is not None else deltas.new_zeros(deltas.shape[0])
    floor = rounding_floor(scale, samples.value_dtype, rounding_ulps).view(-1, 1, 1)
    keep = denominator > floor
    numerator = torch.where(keep, numerator, 0.0)
    denominator = torch.where(keep, denominator, 0.0)
    units, units_d = numerator.permute(1, 0, 2), denominator.permute(1, 0, 2)  # (O, B, P)
    values, stderr = ratio_of_means(units, units_d, dim=(1, 2))
    if samples.exhaustive_pairs:
        # only the contexts are random: linearise R = Σ|Î| / ΣÊ|Δ| in the per-context terms,
        # r_t = sign(Î) Δ_t - R |Δ_t|, and combine the per-pair standard errors over the fixed pairs
        ratio = values.view(1, -1, 1, 1)
        residual = torch.sign(signed).unsqueeze(-1) * deltas - ratio * deltas.abs()
        residual = torch.where(keep.unsqueeze(-1), residual, 0.0)
        _, residual_se = context_stats(residual, samples.enumerated)  # (B, O, P)
        stderr = combine_stderr(residual_se.permute(1, 0, 2), dim=(1, 2)) / units_d.mean(dim=(1, 2))
    values = _ratio(units.mean(dim=(1, 2)), units_d.mean(dim=(1, 2)))
    stderr = torch.where(torch.isnan(values), math.nan, stderr)
    per_image = _ratio(numerator.mean(dim=-1), denominator.mean(dim=-1))
    ratios = _ratio(numerator, denominator).nan_to_num(0.0)
    count = keep.sum(dim=(0, 2))
    per_pair_form = _ratio(ratios.sum(dim=(0, 2)), count.to(ratios.dtype))
    return DisentanglementResult(
        orders=samples.orders.orders,
        ratios=samples.orders.ratios,
        num_players=samples.num_players,
        values=values,
        stderr=stderr,
        per_pair_form=per_pair_form,
        per_image=per_image,
        numerator=units.mean(dim=(1, 2)),
        denominator=units_d.mean(dim=(1, 2)),
        num_contexts=samples.num_contexts,
        num_forward_passes=samples.num_forward_passes[game_index],
        num_skipped_pairs=(~keep).sum(dim=(0, 2)),
    )


@dataclass
class DisentanglementApproximator(PairSampling):
    """Estimator of ``D^(m)`` (Ren et al., NeurIPS 2021, Eq. 4); settings as :class:`PairSampling`.

    Args:
        rounding_ulps: pairs whose ``Ê_S |Δv_ij(S)|`` is at most this many machine epsilons of the
            image's largest ``|v|`` are skipped as rounding noise (see the module docstring).
    """

    rounding_ulps: float = ROUNDING_ULPS

    def approximate(self, game: MaskedGame) -> DisentanglementResult:
        """``D^(m) = E_x E_ij |E_S Δv_ij(S)| / E_S |Δv_ij(S)|`` on ``game`` (Ren et al., NeurIPS 2021, Eq. 4)."""
        return disentanglement_from_samples(self.sample(game), rounding_ulps=self.rounding_ulps)


def disentanglement(
    game: MaskedGame,
    orders: OrderSpec = "reference",
    *,
    generator: torch.Generator | None = None,
    **options: Any,
) -> DisentanglementResult:
    """Estimate ``D^(m)`` (Ren et al., NeurIPS 2021, Eq. 4): thin wrapper of :class:`DisentanglementApproximator`.

    ``options`` as :func:`~lit_advgame.interactions.multi_order.multi_order_interactions`
    (:class:`PairSampling`'s fields) plus ``rounding_ulps``.
    """
    return build_approximator(
        DisentanglementApproximator, "disentanglement", orders=orders, random_state=generator, **options
    ).approximate(game)
