"""Interaction disentanglement ``D^(m)`` over training (Ren et al., NeurIPS 2021, Eq. 4 and Fig. 5).

``D^(m)`` compares the strength of a pair's average order-m interaction, ``|E_S Δv_ij(S)|``, with
the average strength of its components, ``E_S |Δv_ij(S)|``; it is 1 when every context pushes
the same way. As the reference (``plot.py --type 3``), it is computed on clean images (by default
only the probes the model classifies correctly) and reported as a ratio of means over images and
pairs (:func:`lit_advgame.interactions.disentanglement`); the paper's per-pair form is logged too.

Scalars (epoch as step): ``disentanglement/<o>`` (ratio of means) with its standard error (``_stderr`` in the
metrics; in TensorBoard the margins ``zz_margin/disentanglement/<o>/{lower,upper}`` and value ± 1 SE charts in
Custom Scalars), ``disentanglement/per_pair_form/<o>``, ``disentanglement/num_skipped_pairs/<o>``,
``disentanglement/num_images`` and the cost (``zz_cost/disentanglement/{forward_passes,seconds,
masked_forward_passes}``). Figure: ``disentanglement/curve``.
"""

from __future__ import annotations

from typing import Any

import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import nn
from typing_extensions import override

from lit_advgame.callbacks.base import Figures, Metrics
from lit_advgame.callbacks.figures import disentanglement_figure
from lit_advgame.callbacks.game_settings import GameCallback
from lit_advgame.callbacks.probes import batched_logits
from lit_advgame.interactions import disentanglement
from lit_advgame.utils.tensorboard import Chart, Layout


class DisentanglementCallback(GameCallback):
    """Log ``D^(m)`` (Ren et al., NeurIPS 2021, Eq. 4) per order on the clean probes (see the module docstring).

    Args:
        only_correct: use only the probes the model classifies correctly (the reference's images
            are those it attacked, hence correct); otherwise all probes.
        prefix: tag prefix (default ``"disentanglement"``).
        **kwargs: ``game`` (:class:`~lit_advgame.callbacks.game_settings.GameCallback`) and the probe settings
            (:class:`~lit_advgame.callbacks.base.ProbeCallback`; ``probe_size`` 16, ``log_figure``, ...).
    """

    num_games = 1

    def __init__(self, *, only_correct: bool = True, prefix: str = "disentanglement", **kwargs: Any) -> None:
        super().__init__(prefix=prefix, **kwargs)
        self.only_correct = bool(only_correct)

    @override
    def compute(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epoch: int) -> tuple[Metrics, Figures]:
        if self.only_correct:
            keep = batched_logits(model, x, self.batch_size).argmax(dim=1) == y
        else:
            keep = torch.ones_like(y, dtype=torch.bool)
        metrics: Metrics = {self.tag("num_images"): float(keep.sum())}
        if not bool(keep.any()):
            rank_zero_warn(f"{self.name}: no probe is classified correctly at epoch {epoch}; D^(m) skipped")
            return metrics, {}
        game = self.settings.game(model, x[keep], y[keep], self.batch_size)
        result = disentanglement(game, **self.settings.estimator_kwargs(self.seed))
        metrics.update(self.result_metrics(result))
        figures = {self.tag("curve"): disentanglement_figure(result, epoch)} if self.log_figure else {}
        return metrics, figures

    @override
    def charts(self) -> Layout:
        """``D^(m)`` as value ± 1 SE charts by band of orders, and the per-pair form as lines."""
        charts = self.margin_charts()
        charts.append(Chart("per-pair form of D(m) (Eq. 4) per order", (self.pattern("per_pair_form", then="/"),)))
        return {f"{self.prefix}: D(m) (Eq. 4), ratio of means ± 1 SE": charts}
