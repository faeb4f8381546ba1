r"""One specification of the perturbation interaction ``E_ij[I_ij(δ)]`` (Wang et al., ICLR 2021, Eq. 4 / Eq. 39).

:class:`PerturbationInteraction` names the six choices of the estimate -- the players (``grid``),
the estimator (``form``, ``num_samples``, ``group_size``), the value ``v(S)`` and the ``scale`` -- and
is shared by every place that measures or optimises the interaction:

* the IR loss, :class:`lit_advgame.attacks.InteractionLoss` (``interaction=``), and the attack
  presets, whose flat keys are the fields with an ``ir_`` prefix (``ir_grid``, ``ir_form``,
  ``ir_num_samples``, ``ir_group_size``, ``ir_value``, ``ir_scale``);
* the callback :class:`lit_advgame.callbacks.PerturbationInteractionCallback` (``interaction:``);
* the transfer evaluation, :func:`lit_advgame.evaluation.evaluate_transfer` (``interaction=``,
  the fields plus ``seed`` and ``max_images``).

One set of defaults: the class defaults are the paper's measurement (single players, Eq. 39 with
the ``1/(n-1)`` factor, ``v = max_{y'≠y} h_{y'} − h_y`` inside each subset) on a 16×16 grid with 64
sampled players -- the paper's grid; exact (stderr 0) whenever ``num_samples >= n``. The IR loss and
the presets use the official code's cheaper group approximation, :meth:`PerturbationInteraction.ir_code`
(32 groups of 32 cells, the runner-up class fixed per step, no ``1/(n−1)``), defined here once.

>>> PerturbationInteraction(grid=8).num_players
64
>>> PerturbationInteraction.ir_code().form
'coalition'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lit_advgame.interactions.perturbation import (
    FORMS,
    SCALES,
    perturbation_interaction,
    perturbation_interaction_estimate,
)
from lit_advgame.interactions.players import grid_shape
from lit_advgame.interactions.results import PerturbationInteractionResult
from lit_advgame.utils.checks import check_choice, check_int
from lit_advgame.vocabulary import IMAGE_VALUES, ImageValue, InteractionScale, PerturbationForm

PerturbationScale = InteractionScale


@dataclass(frozen=True)
class PerturbationInteraction:
    """How ``E_ij[I_ij(δ)]`` is estimated (Wang et al., ICLR 2021, Eq. 4; Eq. 39 of Appendix J).

    Args:
        grid: ``L`` (an ``L x L`` grid of perturbation cells, the players) or ``[L_h, L_w]``.
        form: ``"single"`` (the paper, Eq. 39: single players ``i`` drawn without replacement,
            exact when ``num_samples >= n``) or ``"coalition"`` (the IR code's group approximation).
        num_samples: players (single form) or groups (coalition form) per image.
        group_size: cells per group (coalition form only).
        value: ``"margin_max"`` (the paper), ``"margin_fixed"`` (the IR code: runner-up fixed),
            ``"log_prob"`` or ``"logit"``.
        scale: ``"paper"`` (with the ``1/(n-1)`` of Eq. 4) or ``"reference"`` (without, as the IR loss).

    Bad values are errors naming the field when the object is built.
    """

    grid: int | tuple[int, int] = 16
    form: PerturbationForm = "single"
    num_samples: int = 64
    group_size: int = 32
    value: ImageValue = "margin_max"
    scale: PerturbationScale = "paper"

    def __post_init__(self) -> None:
        rows, cols = grid_shape(self.grid, min_players=2)
        if rows * cols < 2:
            raise ValueError(f"grid must have at least 2 cells (players); got {self.grid!r}")
        object.__setattr__(self, "grid", rows if rows == cols else (rows, cols))
        check_choice(self.form, "form", FORMS)
        check_int(self.num_samples, "num_samples", minimum=1)
        check_int(self.group_size, "group_size", minimum=1)
        check_choice(self.value, "value", IMAGE_VALUES)
        check_choice(self.scale, "scale", SCALES)

    @classmethod
    def ir_code(cls, **changes: Any) -> PerturbationInteraction:
        """The official IR code's estimate (the default of the IR loss and the presets), with ``changes``.

        32 groups of 32 cells drawn with replacement per step, ``v = z_t − z_y`` with the runner-up
        ``t`` fixed per step, no ``1/(n−1)`` (it only rescales λ), on the paper's 16×16 grid.
        """
        return cls(**{**IR_CODE_FIELDS, **changes})

    @classmethod
    def of(
        cls,
        spec: PerturbationInteraction | Mapping[str, Any] | None,
        base: PerturbationInteraction | None = None,
        name: str = "interaction",
    ) -> PerturbationInteraction:
        """``spec`` as a :class:`PerturbationInteraction`: itself, ``base`` (default: the class defaults) with a
        mapping's fields changed, or ``base`` for ``None``."""
        base = cls() if base is None else base
        if spec is None:
            return base
        if isinstance(spec, cls):
            return spec
        if isinstance(spec, Mapping):
            unknown = sorted(set(spec) - set(FIELDS))
            if unknown:
                raise ValueError(f"unknown {name} option(s) {unknown}; allowed: {', '.join(FIELDS)}")
            return dataclasses.replace(base, **spec)
        raise TypeError(f"{name} must be a PerturbationInteraction or a mapping of its fields; got {spec!r}")

    @property
    def num_players(self) -> int:
        """``n``, the number of grid cells."""
        rows, cols = grid_shape(self.grid, min_players=2)
        return rows * cols

    def fit_grid(self, height: int, width: int) -> PerturbationInteraction:
        """The same specification with the grid clipped to an ``height x width`` image (a square grid stays square)."""
        rows, cols = grid_shape(self.grid, min_players=2)
        if rows == cols:
            return dataclasses.replace(self, grid=min(rows, height, width))
        return dataclasses.replace(self, grid=(min(rows, height), min(cols, width)))

    def engine_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`~lit_advgame.interactions.perturbation_interaction` (the six fields)."""
        return dataclasses.asdict(self)

    def interaction(
        self,
        model: nn.Module,
        x: torch.Tensor,
        delta: torch.Tensor,
        y: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        batch_size: int | None = None,
    ) -> torch.Tensor:
        """Per-image ``E_ij[I_ij(δ)]`` (Eq. 4 / 39), differentiable w.r.t. ``delta``:
        :func:`~lit_advgame.interactions.perturbation_interaction` with these settings."""
        return perturbation_interaction(
            model, x, delta, y, generator=generator, batch_size=batch_size, **self.engine_kwargs()
        )

    def estimate(
        self,
        model: nn.Module,
        x: torch.Tensor,
        delta: torch.Tensor,
        y: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        batch_size: int | None = None,
    ) -> PerturbationInteractionResult:
        """The estimate of Eq. 4 / 39 with standard errors (no gradient):
        :func:`~lit_advgame.interactions.perturbation_interaction_estimate` with these settings."""
        return perturbation_interaction_estimate(
            model, x, delta, y, generator=generator, batch_size=batch_size, **self.engine_kwargs()
        )


#: the field names, in order
FIELDS = tuple(f.name for f in dataclasses.fields(PerturbationInteraction))
#: the official IR code's settings (:meth:`PerturbationInteraction.ir_code`); the grid is the class default
IR_CODE_FIELDS: dict[str, Any] = {
    "form": "coalition",
    "num_samples": 32,
    "group_size": 32,
    "value": "margin_fixed",
    "scale": "reference",
}
