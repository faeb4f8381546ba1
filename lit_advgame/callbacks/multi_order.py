"""Multi-order interactions of clean and adversarial probes over training (Ren et al., NeurIPS 2021, §4.1-4.2).

Each run attacks the correctly classified probes (by default with the strength-controlled attack,
so every adversarial example lowers the true-class logit by about the same amount, as the paper)
and estimates, with the **same** pairs and contexts on ``x`` and ``x_adv``
(:func:`lit_advgame.interactions.interaction_change`):

* ``I^(m)`` on clean and on adversarial images (Eq. 2, ``v(S) = log p(y | x_S)``);
* ``ΔI^(m) = I^(m)(x) - I^(m)(x_adv)``;
* the attacking utility ``ΔJ^(m) = (n-1-m)/(n(n-1)) · ΔI^(m)`` (Eq. 3, Fig. 4);
* the normalized share ``|ΔI^(m)| / Σ_m' |ΔI^(m')|`` (supplement I.2, Table 2).

Scalars (epoch as step; ``<o>`` is the order label, ``r0.10`` for ratio 0.1 or ``m3`` for order 3):
``interaction/clean/<o>``, ``interaction/adversarial/<o>``, ``interaction/delta/<o>``,
``interaction/utility/<o>`` (ΔJ), each with ``_stderr``, ``interaction/share/<o>``,
``interaction/num_images``, ``interaction/num_forward_passes`` (masked inputs of the estimate),
``interaction/attack/{clean_accuracy,success_rate,logit_drop,linf[,reached_fraction]}`` and the
cost. Figure: ``interaction/curves`` (I clean/adversarial, ΔI, ΔJ and the share over orders).
"""
from __future__ import annotations

from typing import Any

import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import nn

from lit_advgame.callbacks.base import Figures, Metrics, ProbeCallback
from lit_advgame.callbacks.figures import multi_order_figure
from lit_advgame.callbacks.game_settings import (
    DEFAULT_GRID,
    DEFAULT_MAX_FORWARD_PASSES,
    DEFAULT_NUM_CONTEXTS,
    DEFAULT_NUM_PAIRS,
    DEFAULT_ORDERS,
    GameSettings,
)
from lit_advgame.callbacks.probe_attack import STRENGTH, ProbeAttack
from lit_advgame.interactions import interaction_change


class MultiOrderInteractionCallback(ProbeCallback):
    """Log ``I^(m)`` (clean and adversarial), ``ΔI^(m)``, ``ΔJ^(m)`` and the share per order (see module doc).

    Args:
        probe_size: probe examples (default 16); only those classified correctly are attacked.
        probe_split, seed, batch_size, every_n_epochs, probe_x, probe_y: see
            :class:`~lit_advgame.callbacks.base.ProbeCallback`.
        grid, orders, num_pairs, num_contexts, pairs, value, baseline, max_forward_passes: the
            game and estimator settings (:class:`~lit_advgame.callbacks.game_settings.GameSettings`).
        attack: ``"strength"`` (default: stop at a logit drop of ``threshold``) or an attack
            preset such as ``"pgd"`` (:mod:`~lit_advgame.callbacks.probe_attack`).
        attack_kwargs: options of the attack (e.g. ``{threshold: 6.0, eps: 0.25}`` or, for
            ``"pgd"``, ``{eps: 0.1, steps: 20}``).
        only_reached: with the strength attack, use only the examples whose logit drop ended in the
            window (the reference keeps only those); otherwise every attacked example.
        log_figure: also log the figure of the curves.
        prefix: tag prefix (default ``"interaction"``).
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
        attack: str = STRENGTH,
        attack_kwargs: dict[str, Any] | None = None,
        only_reached: bool = True,
        batch_size: int = 256,
        every_n_epochs: int = 1,
        max_forward_passes: int = DEFAULT_MAX_FORWARD_PASSES,
        log_figure: bool = True,
        prefix: str = "interaction",
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
        self.attack = ProbeAttack(attack, attack_kwargs, seed=seed)
        self.only_reached = bool(only_reached)
        self.log_figure = bool(log_figure)

    def check_setup(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        self.settings.check_setup(self.name, model, x, num_games=2)

    def compute(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epoch: int) -> tuple[Metrics, Figures]:
        outcome = self.attack.run(model, x, y, self.batch_size)
        metrics: Metrics = {self.tag("attack", key): value for key, value in outcome.stats.items()}
        keep = outcome.reached if self.only_reached else torch.ones_like(outcome.reached)
        metrics[self.tag("num_images")] = float(keep.sum())
        if not bool(keep.any()):
            rank_zero_warn(
                f"{self.name}: no probe was correctly classified and attacked to the target strength at epoch {epoch}; "
                "interactions skipped (only the attack statistics are logged)"
            )
            return metrics, {}
        xs, ys, xa = outcome.x[keep], outcome.y[keep], outcome.x_adv[keep]
        clean = self.settings.game(model, xs, ys, self.batch_size)
        adversarial = self.settings.game(model, xa, ys, self.batch_size)
        result = interaction_change(clean, adversarial, **self.settings.estimator_kwargs(self.seed))
        metrics.update(result.to_dict(self.prefix))
        figures = {self.tag("curves"): multi_order_figure(result, epoch)} if self.log_figure else {}
        return metrics, figures
