"""Interaction strength ``E_{i≠j}|I(i, j)|`` over training, a generalization monitor (Zhang et al., ICLR 2021).

The slides' table "over-fitting → stronger interactions" (MNIST RN-44: 2.17e-3 ordinary, 3.64e-3 over-fitted)
is this quantity watched over epochs. A thin shell over
:class:`~lit_advgame.interactions.strength.InteractionStrength` on the input game of the callback's
:class:`~lit_advgame.callbacks.game_settings.GameSettings` (grid, value, baseline; ``num_pairs`` pairs per image,
``num_contexts`` samples per pair; ``pairs: uniform`` matches ``E_{i≠j}``, the default neighbour pairs look at
adjacent cells only), on the clean probes, without gradients:

* ``<prefix>/sii``: ``E|SII(i, j)|`` (contexts with the Shapley weighting, ``p ~ U(0, 1)``), with ``_stderr``
  and ``<prefix>/noise_floor`` (the plug-in's ``|mean|`` bias scale, ``√(2/π)·σ/√S``);
* ``<prefix>/<o>`` (with ``per_order``): ``E|I^(m)(i, j)|`` for each order of ``game.orders`` (``r0.10`` for a
  ratio, ``m3`` for an order), with ``_stderr``;
* ``<prefix>/num_images`` and the cost lines of :class:`~lit_advgame.callbacks.base.ProbeCallback`.

Every scalar is logged with the **epoch** as step.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn
from typing_extensions import override

from lit_advgame.callbacks.base import Figures, Metrics
from lit_advgame.callbacks.game_settings import GameCallback
from lit_advgame.interactions.budget import check_budget
from lit_advgame.interactions.strength import InteractionStrength
from lit_advgame.utils.checks import check_choice
from lit_advgame.vocabulary import STRENGTH_ESTIMATORS, StrengthEstimator


class InteractionStrengthCallback(GameCallback):
    """Log ``E|SII(i, j)|`` and, per order, ``E|I^(m)(i, j)|`` of the clean probes (see the module docstring).

    Zhang et al., ICLR 2021, Eq. 4 (the interaction strength that over-fitting raises and dropout lowers).

    Args:
        estimator: ``"plug_in"`` (the reference's ``|mean|``, biased up by about ``noise_floor``) or ``"split"``
            (split-sample squares, signed root; ``game.num_contexts`` must be even).
        per_order: also log ``E|I^(m)|`` for each order of ``game.orders``.
        prefix: tag prefix (default ``"strength"``).
        **kwargs: ``game`` (:class:`~lit_advgame.callbacks.game_settings.GameSettings`, e.g.
            ``{grid: 4, orders: [0.1, 0.5, 0.9], num_pairs: 8, num_contexts: 16, pairs: uniform}``), ``log_figure``
            (unused: no figure) and the probe settings of :class:`~lit_advgame.callbacks.base.ProbeCallback`.
    """

    num_games = 1

    def __init__(
        self,
        *,
        estimator: StrengthEstimator = "plug_in",
        per_order: bool = True,
        prefix: str = "strength",
        **kwargs: Any,
    ) -> None:
        super().__init__(prefix=prefix, **kwargs)
        check_choice(estimator, "estimator", STRENGTH_ESTIMATORS)
        self.per_order = bool(per_order)
        game = self.settings
        self.strength = InteractionStrength(
            num_pairs=game.num_pairs,
            num_samples=game.num_contexts,
            pairs=game.pairs,
            estimator=estimator,
            max_forward_passes=None,  # the callback's budget is checked at setup for the whole run
        )

    def estimates_per_run(self) -> int:
        """Strength estimates of one run: the Shapley-weighted one plus one per order (``per_order``)."""
        return 1 + (len(self.settings.resolved) if self.per_order else 0)

    @override
    def planned_forward_passes(self, model: nn.Module, x: torch.Tensor) -> tuple[int, str]:
        per_image = self.strength.forward_passes_per_image(self.settings.num_players)
        passes = x.shape[0] * per_image * self.estimates_per_run() * self.networks(model)
        detail = (
            f"{x.shape[0]} probes x {self.estimates_per_run()} estimates x {self.settings.num_pairs} pairs x "
            f"{self.settings.num_contexts} contexts x 4"
        )
        return passes, detail

    @override
    def check_setup(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        super().check_setup(model, x, y)
        passes, detail = self.planned_forward_passes(model, x)
        try:
            check_budget(passes, self.settings.max_forward_passes, f"{self.name} ({detail})")
        except ValueError as err:
            raise ValueError(f"{self.name}: {err}") from err

    @override
    def compute(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epoch: int) -> tuple[Metrics, Figures]:
        game = self.settings.game(model, x, y, self.batch_size)
        generator = torch.Generator().manual_seed(self.seed)
        overall = self.strength.estimate(game, generator, grad=False)
        metrics: Metrics = {
            self.tag("num_images"): float(x.shape[0]),
            self.tag("sii"): float(overall.value),
            self.tag("sii_stderr"): overall.stderr,
            self.tag("noise_floor"): overall.noise_floor,
        }
        if self.per_order:
            for label, order in zip(self.settings.resolved.labels, self.settings.resolved.orders):
                band = dataclasses.replace(self.strength, order_band=[order, order])
                estimate = band.estimate(game, generator, grad=False)
                metrics[self.tag(label)] = float(estimate.value)
                metrics[self.tag(f"{label}_stderr")] = estimate.stderr
        return metrics, {}
