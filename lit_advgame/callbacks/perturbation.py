"""Average interaction inside adversarial perturbations over training (Wang et al., ICLR 2021, Eq. 4 / 39).

Each run attacks the correctly classified probes, takes the perturbations ``δ = x_adv - x`` and
estimates ``E_ij[I_ij(δ)]`` with the grid cells of ``δ`` as players (absent cells keep the clean
pixel), :func:`lit_advgame.interactions.perturbation_interaction_estimate`.

What is estimated is one :class:`~lit_advgame.interactions.perturbation_spec.PerturbationInteraction`
(``interaction``), the specification the IR loss, the attack presets and the transfer evaluation
share, with its defaults: the paper's definition (``form="single"``, ``scale="paper"`` with the
``1/(n-1)``, ``value="margin_max"``, the paper's ``max_{y'≠y} h_{y'} - h_y`` inside each subset) on
the 16x16 grid with 64 sampled players. With ``num_samples >= n`` (e.g. ``grid: 8`` on 16x16 digits,
n = 64, as configs/callbacks_digits.yaml) Eq. 4 ``E_ij[I_ij] = 1/(n-1) · E_i[v(Ω) - v(Ω\\{i}) - v({i}) + v(∅)]``
is computed exactly (stderr 0) at ``2n + 2`` forward passes per image. The IR attack's code uses
``PerturbationInteraction.ir_code()`` (``form="coalition"``, ``scale="reference"``,
``value="margin_fixed"``). The attack defaults to L∞ PGD with the IR paper's ``eps=16/255`` and step
``2/255`` but 20 steps (``attack_kwargs`` replaces these; the strength attack is available too, then
only the examples that reached its window are used).

Scalars (epoch as step): ``perturbation_interaction/value`` with its standard error (``value_stderr`` in the
metrics; in TensorBoard the margins ``zz_margin/perturbation_interaction/value/{lower,upper}`` and a value ± 1 SE
chart in Custom Scalars), ``perturbation_interaction/num_images``,
``perturbation_interaction/attack/{clean_accuracy,success_rate,logit_drop,linf}`` and the cost
(``zz_cost/perturbation_interaction/{forward_passes,seconds,masked_forward_passes}``). Image:
``perturbation_interaction/examples`` (clean probes, adversarial probes, amplified perturbations).
"""

from __future__ import annotations

from typing import Any

import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import nn
from typing_extensions import override

from lit_advgame.callbacks.base import Figures, Metrics, ProbeCallback
from lit_advgame.callbacks.game_settings import settings_argument
from lit_advgame.callbacks.probe_attack import STRENGTH, ProbeAttack
from lit_advgame.interactions import grid_player_map
from lit_advgame.interactions.perturbation_spec import PerturbationInteraction
from lit_advgame.utils.tensorboard import Chart, Layout, example_grid

#: attack options used when ``attack_kwargs`` is not given and the attack is a preset
DEFAULT_PRESET_KWARGS = {"steps": 20}
#: the default specification (the class defaults, frozen)
DEFAULT_INTERACTION = PerturbationInteraction()


class PerturbationInteractionCallback(ProbeCallback):
    """Log ``E_ij[I_ij(δ)]`` of the attack's perturbations on the probe set (see the module docstring).

    The interaction inside perturbations of Wang et al., ICLR 2021, Eq. 4 (Appendix J, Eq. 39 on a grid).

    Args:
        interaction: what is estimated, a
            :class:`~lit_advgame.interactions.perturbation_spec.PerturbationInteraction` (in YAML a
            mapping such as ``{grid: 8, form: single, num_samples: 64}``; default: its defaults, the
            paper's definition on a 16x16 grid with 64 sampled players).
        attack: an attack preset (default ``"pgd"``) or ``"strength"``.
        attack_kwargs: its options (default for presets: ``{steps: 20}``).
        prefix: tag prefix (default ``"perturbation_interaction"``).
        **kwargs: the probe settings of :class:`~lit_advgame.callbacks.base.ProbeCallback` (``probe_size``
            16; only the probes classified correctly are attacked; ``log_figure``: the image grid). The flat
            keywords ``grid=``, ``form=``, ``num_samples=``, ``group_size=``, ``value=``, ``scale=`` are deprecated
            aliases of ``interaction``.
    """

    def __init__(
        self,
        *,
        interaction: PerturbationInteraction = DEFAULT_INTERACTION,
        attack: str = "pgd",
        attack_kwargs: dict[str, Any] | None = None,
        prefix: str = "perturbation_interaction",
        **kwargs: Any,
    ) -> None:
        interaction = settings_argument(PerturbationInteraction, interaction, kwargs, self.name, "interaction")
        super().__init__(prefix=prefix, **kwargs)
        self.interaction = interaction
        if attack_kwargs is None and attack != STRENGTH:
            attack_kwargs = dict(DEFAULT_PRESET_KWARGS)
        self.attack = ProbeAttack(attack, attack_kwargs, seed=self.seed)

    @override
    def check_setup(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        try:
            grid_player_map(x.shape[2], x.shape[3], self.interaction.grid)
        except ValueError as err:
            raise ValueError(f"{self.name}: {err}") from err

    @override
    def planned_forward_passes(self, model: nn.Module, x: torch.Tensor) -> tuple[int, str]:
        """``2 + 2 · samples`` masked forward passes per probe (Eq. 4 / 39; ``samples`` capped at ``n`` in the
        single form; fewer probes when some are not attacked), per network, plus the attack's (described)."""
        spec = self.interaction
        samples = min(spec.num_samples, spec.num_players) if spec.form == "single" else spec.num_samples
        networks = self.networks(model)
        passes = x.shape[0] * (2 + 2 * samples) * networks
        detail = f"at most; masked: {x.shape[0]} probes x (2 + 2 x {samples} {spec.form}-form samples)"
        detail += f" x {networks} networks" if networks > 1 else ""
        return passes, f"{detail}; plus {self.attack.describe()}"

    @override
    def compute(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epoch: int) -> tuple[Metrics, Figures]:
        outcome = self.attack.run(model, x, y, self.batch_size)
        metrics: Metrics = {self.tag("attack", key): value for key, value in outcome.stats.items()}
        keep = outcome.reached
        metrics[self.tag("num_images")] = float(keep.sum())
        if not bool(keep.any()):
            rank_zero_warn(f"{self.name}: no probe was correctly classified and attacked at epoch {epoch}; skipped")
            return metrics, {}
        xs, ys = outcome.x[keep], outcome.y[keep]
        delta = outcome.x_adv[keep] - xs
        result = self.interaction.estimate(
            model, xs, delta, ys, generator=torch.Generator().manual_seed(self.seed), batch_size=self.batch_size
        )
        metrics[self.tag("value")] = float(result.values)
        metrics[self.tag("value_stderr")] = float(result.stderr)
        metrics[self.cost_tag("masked_forward_passes")] = float(result.num_forward_passes)
        return metrics, {self.tag("examples"): example_grid(xs, outcome.x_adv[keep])} if self.log_figure else {}

    @override
    def charts(self) -> Layout:
        """``E_ij[I_ij(δ)]`` as value ± 1 SE, and the probe attack's statistics as lines."""
        value = Chart("E_ij[I_ij(δ)] (Eq. 4), ± 1 SE", (self.tag("value"),), margin=True)
        return {f"{self.prefix}: interaction inside perturbations": [value, *self.attack.charts(self.prefix)]}
