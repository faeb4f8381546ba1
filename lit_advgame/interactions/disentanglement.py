"""Interaction disentanglement ``D^(m)`` (Ren et al., NeurIPS 2021, Eq. 4 and supplement F).

``D^(m)`` compares the strength of the average interaction of a pair, ``|E_S Δv_ij(S)|``, with
the average strength of its components, ``E_S |Δv_ij(S)|``; it is 1 when all components share a
sign. Two forms are reported:

* ``values`` (the reference ``plot.py --type 3``): a **ratio of means** over images and pairs,
  ``mean_{x,(i,j)} |Ê_S Δv| / mean_{x,(i,j)} Ê_S |Δv|``;
* ``per_pair_form`` (Eq. 4 as printed): the mean over images and pairs of the per-pair ratios.

The reference computes it on clean images only; pass the clean game.
"""
from __future__ import annotations

import torch

from lit_advgame.interactions.budget import DEFAULT_MAX_FORWARD_PASSES
from lit_advgame.interactions.game import MaskedGame
from lit_advgame.interactions.multi_order import PairDeltaSamples, sample_pair_deltas
from lit_advgame.interactions.orders import OrderSpec
from lit_advgame.interactions.results import DisentanglementResult
from lit_advgame.interactions.stats import ratio_of_means


def disentanglement_from_samples(samples: PairDeltaSamples, game_index: int = 0) -> DisentanglementResult:
    """``D^(m)`` from shared samples (see :func:`~lit_advgame.interactions.multi_order.sample_pair_deltas`)."""
    deltas = samples.deltas[game_index]  # (B, O, P, T)
    numerator = deltas.mean(dim=-1).abs()  # (B, O, P)
    denominator = deltas.abs().mean(dim=-1)
    units = numerator.permute(1, 0, 2)  # (O, B, P)
    units_d = denominator.permute(1, 0, 2)
    values, stderr = ratio_of_means(units, units_d, dim=(1, 2))
    per_image = numerator.mean(dim=-1) / denominator.mean(dim=-1)
    valid = denominator > 0
    ratios = torch.where(valid, numerator / torch.where(valid, denominator, torch.ones_like(denominator)), 0.0)
    count = valid.sum(dim=(0, 2))
    per_pair_form = ratios.sum(dim=(0, 2)) / count.clamp(min=1)
    per_pair_form = torch.where(count > 0, per_pair_form, torch.full_like(per_pair_form, float("nan")))
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
    )


def disentanglement(
    game: MaskedGame,
    orders: OrderSpec = "reference",
    *,
    num_pairs: int | None = 200,
    num_contexts: int = 100,
    pairs: str = "neighbour",
    generator: torch.Generator | None = None,
    max_forward_passes: int | None = DEFAULT_MAX_FORWARD_PASSES,
    dedupe: bool | str = "auto",
) -> DisentanglementResult:
    """Estimate ``D^(m)`` (arguments as :func:`~lit_advgame.interactions.multi_order.multi_order_interactions`)."""
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
    return disentanglement_from_samples(samples)
