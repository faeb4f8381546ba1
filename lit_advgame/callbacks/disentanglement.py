"""Interaction disentanglement ``D^(m)`` over training (Ren et al., NeurIPS 2021, Eq. 4 and Fig. 5).

``D^(m)`` compares the strength of a pair's average order-m interaction, ``|E_S Δv_ij(S)|``, with
the average strength of its components, ``E_S |Δv_ij(S)|``; it is 1 when every context pushes
the same way. As the reference (``plot.py --type 3``), it is computed on clean images (by default
only the probes the model classifies correctly) and reported as a ratio of means over images and
pairs (:func:`lit_advgame.interactions.disentanglement`); the paper's per-pair form is logged too.

Scalars (epoch as step): ``disentanglement/<o>`` and ``disentanglement/<o>_stderr`` (ratio of
means), ``disentanglement/per_pair_form/<o>``, ``disentanglement/num_images``,
``disentanglement/num_forward_passes`` and the cost. Figure: ``disentanglement/curve``.
"""
from __future__ import annotations

from typing import Any

import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import nn

from lit_advgame.callbacks.base import Figures, Metrics, ProbeCallback
from lit_advgame.callbacks.figures import disentanglement_figure
from lit_advgame.callbacks.game_settings import (
    DEFAULT_GRID,
    DEFAULT_MAX_FORWARD_PASSES,
    DEFAULT_NUM_CONTEXTS,
    DEFAULT_NUM_PAIRS,
    DEFAULT_ORDERS,
    GameSettings,
)
from lit_advgame.interactions import disentanglement


class DisentanglementCallback(ProbeCallback):
    """Log ``D^(m)`` per order on the clean probes (see the module docstring).

    Args:
        probe_size: probe examples (default 16).
        only_correct: use only the probes the model classifies correctly (the reference's images
            are those it attacked, hence correct); otherwise all probes.
        Other arguments as :class:`~lit_advgame.callbacks.MultiOrderInteractionCallback`
        (no attack); prefix default ``"disentanglement"``.
    """

    def __init__(
        self,
        probe_size: int = 16,
        probe_split: str = "val",
        seed: int = 0,
        grid: int | list[int] = DEFAULT_GRID,
        orders: str | list[int] | list[float] = DEFAULT_ORDERS,
        num_pairs: int = DEFAULT_NUM_PAIRS,
        num_contexts: int = DEFAULT_NUM_CONTEXTS,
        pairs: str = "neighbour",
        value: str = "log_prob",
        baseline: str | list[float] = "mean",
        only_correct: bool = True,
        batch_size: int = 256,
        every_n_epochs: int = 1,
        max_forward_passes: int = DEFAULT_MAX_FORWARD_PASSES,
        log_figure: bool = True,
        prefix: str = "disentanglement",
        probe_x: Any = None,
        probe_y: Any = None,
    ) -> None:
        super().__init__(
            probe_size=probe_size,
            probe_split=probe_split,
            seed=seed,
            batch_size=batch_size,
            every_n_epochs=every_n_epochs,
            prefix=prefix,
            probe_x=probe_x,
            probe_y=probe_y,
        )
        self.settings = GameSettings(grid, orders, num_pairs, num_contexts, pairs, value, baseline, max_forward_passes)
        self.only_correct = bool(only_correct)
        self.log_figure = bool(log_figure)

    def check_setup(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        self.settings.check_setup(self.name, model, x, num_games=1)

    def compute(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epoch: int) -> tuple[Metrics, Figures]:
        if self.only_correct:
            with torch.no_grad():
                pred = torch.cat([model(x[s : s + self.batch_size]).argmax(dim=1) for s in range(0, x.shape[0], self.batch_size)])
            keep = pred == y
        else:
            keep = torch.ones_like(y, dtype=torch.bool)
        metrics: Metrics = {self.tag("num_images"): float(keep.sum())}
        if not bool(keep.any()):
            rank_zero_warn(f"{self.name}: no probe is classified correctly at epoch {epoch}; D^(m) skipped")
            return metrics, {}
        game = self.settings.game(model, x[keep], y[keep], self.batch_size)
        result = disentanglement(game, **self.settings.estimator_kwargs(self.seed))
        metrics.update(result.to_dict(self.prefix))
        figures = {self.tag("curve"): disentanglement_figure(result, epoch)} if self.log_figure else {}
        return metrics, figures
