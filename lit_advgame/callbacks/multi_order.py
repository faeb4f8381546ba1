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
``interaction/utility/<o>`` (ΔJ), each with its standard error (``_stderr`` in the metrics; in TensorBoard the
margins ``zz_margin/interaction/<quantity>/<o>/{lower,upper}`` and a value ± 1 SE chart per band of orders in
Custom Scalars), ``interaction/share/<o>``, ``interaction/num_images``,
``interaction/attack/{clean_accuracy,success_rate,logit_drop,linf[,reached_fraction]}`` and the cost
(``zz_cost/interaction/{forward_passes,seconds,masked_forward_passes}``). Images (one panel each):
``interaction/clean_vs_adversarial``, ``interaction/delta``, ``interaction/utility``, ``interaction/share``
(against the order) and ``interaction/examples`` (clean probes, adversarial probes, amplified perturbations).
"""

from __future__ import annotations

from typing import Any

import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import nn
from typing_extensions import override

from lit_advgame.callbacks.base import Figures, Metrics
from lit_advgame.callbacks.figures import multi_order_figures
from lit_advgame.callbacks.game_settings import GameCallback
from lit_advgame.callbacks.probe_attack import STRENGTH, ProbeAttack
from lit_advgame.interactions import interaction_change
from lit_advgame.utils.tensorboard import Chart, Layout, example_grid

#: the per-order estimates with a standard error: tag part -> what it is (Ren et al., NeurIPS 2021)
ESTIMATES = {
    "delta": "ΔI(m) = I(m)(x) - I(m)(x_adv)",
    "utility": "attacking utility ΔJ(m) (Eq. 3)",
    "clean": "I(m) on the clean probes (Eq. 2)",
    "adversarial": "I(m) on the adversarial probes (Eq. 2)",
}


class MultiOrderInteractionCallback(GameCallback):
    """Log ``I^(m)`` (clean and adversarial), ``ΔI^(m)``, ``ΔJ^(m)`` and the share per order (see module doc).

    ``I^(m)_ij`` is Ren et al., NeurIPS 2021, Eq. 2 and ``ΔJ^(m)`` the attacking utility of Eq. 3.

    Args:
        attack: ``"strength"`` (default: stop at a logit drop of ``threshold``) or an attack
            preset such as ``"pgd"`` (:mod:`~lit_advgame.callbacks.probe_attack`).
        attack_kwargs: options of the attack (e.g. ``{threshold: 6.0, eps: 0.25}`` or, for
            ``"pgd"``, ``{eps: 0.1, steps: 20}``).
        only_reached: with the strength attack, use only the examples whose logit drop ended in the
            window (the reference keeps only those); otherwise every attacked example.
        prefix: tag prefix (default ``"interaction"``).
        **kwargs: ``game`` (the game and estimator settings, a
            :class:`~lit_advgame.callbacks.game_settings.GameSettings`; in YAML a mapping such as
            ``{grid: 8, orders: reference, num_pairs: 4, num_contexts: 8}``;
            :class:`~lit_advgame.callbacks.game_settings.GameCallback`), and the probe settings of
            :class:`~lit_advgame.callbacks.base.ProbeCallback` (``probe_size`` 16, of which only the
            probes classified correctly are attacked; ``probe_split``, ``seed``, ``batch_size``,
            ``every_n_epochs``, ``log_figure``, ``probe_x``, ``probe_y``).
    """

    num_games = 2

    def __init__(
        self,
        *,
        attack: str = STRENGTH,
        attack_kwargs: dict[str, Any] | None = None,
        only_reached: bool = True,
        prefix: str = "interaction",
        **kwargs: Any,
    ) -> None:
        super().__init__(prefix=prefix, **kwargs)
        self.attack = ProbeAttack(attack, attack_kwargs, seed=self.seed)
        self.only_reached = bool(only_reached)

    @override
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
        metrics.update(self.result_metrics(result))
        if not self.log_figure:
            return metrics, {}
        figures: Figures = {self.tag(name): figure for name, figure in multi_order_figures(result, epoch).items()}
        figures[self.tag("examples")] = example_grid(xs, xa)
        return metrics, figures

    @override
    def charts(self) -> Layout:
        """Per estimate of :data:`ESTIMATES`, a category of value ± 1 SE charts by band of orders; the share and the
        probe attack's statistics as lines."""
        layout: Layout = {
            f"{self.tag(part)}: {what}, ± 1 SE": self.margin_charts(part) for part, what in ESTIMATES.items()
        }
        layout[f"{self.prefix}: share and attack"] = [
            Chart("share |ΔI(m)| / Σ |ΔI(m')| per order", (self.pattern("share", then="/"),)),
            *self.attack.charts(self.prefix),
        ]
        return layout
