"""Average interaction inside adversarial perturbations over training (Wang et al., ICLR 2021, Eq. 4 / 39).

Each run attacks the correctly classified probes, takes the perturbations ``δ = x_adv - x`` and
estimates ``E_ij[I_ij(δ)]`` with the grid cells of ``δ`` as players (absent cells keep the clean
pixel), :func:`lit_advgame.interactions.perturbation_interaction_estimate`.

Defaults (the paper's definition, exact on the default grid): ``form="single"`` with
``num_samples = 64 = n`` for the 8x8 grid, i.e. every player, so Eq. 4
``E_ij[I_ij] = 1/(n-1) · E_i[v(Ω) - v(Ω\\{i}) - v({i}) + v(∅)]`` is computed exactly (stderr 0)
at ``2n + 2`` forward passes per image; ``scale="paper"`` (with the ``1/(n-1)``);
``value="margin_max"`` (the paper's ``max_{y'≠y} h_{y'} - h_y`` inside each subset). The IR
attack's code uses ``form="coalition"``, ``scale="reference"``, ``value="margin_fixed"``: all are
options. The attack defaults to L∞ PGD with the IR paper's ``eps=16/255`` and step ``2/255`` but
20 steps (``attack_kwargs`` replaces these; the strength attack is available too, then only the
examples that reached its window are used).

Scalars (epoch as step): ``perturbation_interaction/value``, ``perturbation_interaction/stderr``,
``perturbation_interaction/num_images``, ``perturbation_interaction/num_forward_passes``,
``perturbation_interaction/attack/{clean_accuracy,success_rate,logit_drop,linf}`` and the cost.
"""
from __future__ import annotations

from typing import Any

import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import nn

from lit_advgame.callbacks.base import Figures, Metrics, ProbeCallback
from lit_advgame.callbacks.game_settings import DEFAULT_GRID, GAME_VALUES, grid_shape
from lit_advgame.callbacks.probe_attack import STRENGTH, ProbeAttack
from lit_advgame.interactions import grid_player_map, perturbation_interaction_estimate
from lit_advgame.interactions.perturbation import FORMS, SCALES
from lit_advgame.utils.checks import check_choice, check_int

#: attack options used when ``attack_kwargs`` is not given and the attack is a preset
DEFAULT_PRESET_KWARGS = {"steps": 20}


class PerturbationInteractionCallback(ProbeCallback):
    """Log ``E_ij[I_ij(δ)]`` of the attack's perturbations on the probe set (see the module docstring).

    Args:
        probe_size: probe examples (default 16); only those classified correctly are attacked.
        grid: ``L`` or ``[L_h, L_w]`` grid of perturbation cells (default 8).
        form: ``"single"`` (paper, Eq. 39) or ``"coalition"`` (the IR code's group approximation).
        num_samples: players (single) or groups (coalition) per image; the single form is exact
            when ``num_samples >= n``.
        group_size: cells per group (coalition form).
        value: ``"margin_max"`` (paper), ``"margin_fixed"`` (IR code), ``"log_prob"`` or ``"logit"``.
        scale: ``"paper"`` (with ``1/(n-1)``) or ``"reference"`` (without, as the IR loss).
        attack: an attack preset (default ``"pgd"``) or ``"strength"``.
        attack_kwargs: its options (default for presets: ``{steps: 20}``).
        Other arguments as :class:`~lit_advgame.callbacks.base.ProbeCallback`; prefix default
        ``"perturbation_interaction"``.
    """

    def __init__(
        self,
        probe_size: int = 16,
        probe_split: str = "val",
        seed: int = 0,
        grid: int | list[int] = DEFAULT_GRID,
        form: str = "single",
        num_samples: int = 64,
        group_size: int = 32,
        value: str = "margin_max",
        scale: str = "paper",
        attack: str = "pgd",
        attack_kwargs: dict[str, Any] | None = None,
        batch_size: int = 256,
        every_n_epochs: int = 1,
        prefix: str = "perturbation_interaction",
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
        rows, cols = grid_shape(grid)
        self.grid = rows if rows == cols else (rows, cols)
        check_choice(form, "form", FORMS)
        check_int(num_samples, "num_samples", minimum=1)
        check_int(group_size, "group_size", minimum=1)
        check_choice(value, "value", GAME_VALUES)
        check_choice(scale, "scale", SCALES)
        self.form = form
        self.num_samples = num_samples
        self.group_size = group_size
        self.value = value
        self.scale = scale
        if attack_kwargs is None and attack != STRENGTH:
            attack_kwargs = dict(DEFAULT_PRESET_KWARGS)
        self.attack = ProbeAttack(attack, attack_kwargs, seed=seed)

    def check_setup(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        try:
            grid_player_map(x.shape[2], x.shape[3], self.grid)
        except ValueError as err:
            raise ValueError(f"{self.name}: {err}") from err

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
        result = perturbation_interaction_estimate(
            model,
            xs,
            delta,
            ys,
            grid=self.grid,
            form=self.form,
            num_samples=self.num_samples,
            group_size=self.group_size,
            value=self.value,
            generator=torch.Generator().manual_seed(self.seed),
            batch_size=self.batch_size,
            scale=self.scale,
        )
        metrics[self.tag("value")] = float(result.values)
        metrics[self.tag("stderr")] = float(result.stderr)
        metrics[self.tag("num_forward_passes")] = float(result.num_forward_passes)
        return metrics, {}
