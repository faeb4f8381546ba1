r"""The IR term: the interaction loss of the interaction-reduced attack (Wang et al., ICLR 2021, Eq. 5).

The attack maximises ℓ(h(x + δ), y) − λ·ℓ_interaction with ℓ_interaction = E_{i,j}[I_ij(δ)], the
average pairwise Shapley interaction between perturbation units, estimated on an L×L grid of cells
(Eq. 4 and Appendix J, Eq. 39). What is estimated is one
:class:`~lit_advgame.interactions.perturbation_spec.PerturbationInteraction` (the specification the
presets, the callback and the transfer evaluation share); the loss defaults to its official-code
setting :meth:`~lit_advgame.interactions.perturbation_spec.PerturbationInteraction.ir_code`:
``form="coalition"`` (32 samples of 32 cells drawn with replacement per step;
``"single"``-player forms are the paper's Eq. 39), ``value="margin_fixed"`` (v(S) = z_t − z_y with
the runner-up t of the full perturbation held fixed for the step; ``"margin_max"`` takes the max
inside each subset, as the paper's text) and ``scale="reference"`` (no 1/(n−1) factor, which only
rescales λ).

Memory and cost per step: the term reuses the attack's forward at x + δ (``logits``, the full
coalition v(Ω) and the fixed runner-up) when no VR/DI transform changed that input, and the engine
back-propagates the masked inputs chunk by chunk (``batch_size`` at a time) inside the call, so the
memory of a step is set by ``batch_size``, not by images × groups
(:meth:`~lit_advgame.interactions.perturbation.PerturbationInteractionApproximator.interaction`).

λ = 1 for ResNet sources and 2 otherwise (paper Section 5); ``lambda_=float("inf")`` (or ``"inf"``)
optimises the interaction alone (Fig. 3b); ``lambda_=0`` computes the term but adds 0·I, so the attack
equals its base exactly. The interaction is measured w.r.t. the true label y also in targeted
attacks, and on the noise-free, untransformed input x + δ when VR/DI are used (official code).
With ``random_start=None`` an attack with 0 < λ < ∞ starts from δ = 0 (official code: random
initialisation only when λ = 0). The interaction's gradient vanishes at δ = 0 (v(Ω) − v(Ω\S) −
v(S) + v(∅) is flat there), so step 1 of IR is pure CE. For λ = ∞ a zero start would leave only
rounding noise in the gradient (which the sign step blows up to full steps), so λ = ∞ starts
at random unless ``random_start=False`` is given (a deviation from the official code).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from typing_extensions import override

import lit_advgame.interactions as interactions
from lit_advgame.attacks.loss_term import LossTerm
from lit_advgame.interactions.perturbation_spec import PerturbationInteraction, grid_shape
from lit_advgame.utils.checks import check_int, check_positive

_LAMBDA = "ir_lambda (the IR weight λ, keyword lambda_)"


def parse_lambda(lam: float | str) -> float:
    """λ as a float >= 0; ``"inf"``/``"infinity"`` (any case) gives ``math.inf``."""
    if isinstance(lam, str):
        if lam.strip().lower() in ("inf", "infinity", "+inf"):
            return math.inf
        try:
            lam = float(lam)
        except ValueError:
            raise ValueError(f"{_LAMBDA} must be a number >= 0 or 'inf'; got {lam!r}") from None
    check_positive(lam, _LAMBDA, allow_zero=True, allow_inf=True)
    return float(lam)


class InteractionLoss(LossTerm):
    """−λ·I(δ) per image (or −I(δ) for λ = ∞), I the perturbation interaction of Eq. 4 / 39 (Wang et al., ICLR 2021).

    Args:
        lambda_: weight λ >= 0 of the interaction, or ``inf`` for interaction only (preset key
            ``ir_lambda``; ``lam`` is a deprecated alias).
        interaction: what is estimated, a
            :class:`~lit_advgame.interactions.perturbation_spec.PerturbationInteraction` or a mapping
            of its fields (default: :meth:`~lit_advgame.interactions.perturbation_spec.PerturbationInteraction.ir_code`,
            the official code's 32 groups of 32 cells on a 16×16 grid).
        batch_size: masked inputs per forward pass of the engine (default 256).
        **fields: fields of the specification to change (``grid``, ``form``, ``num_samples``,
            ``group_size``, ``value``, ``scale``), e.g. ``InteractionLoss(1.0, grid=8)``.
    """

    name = "interaction"

    def __init__(
        self,
        lambda_: float | str = 1.0,
        interaction: PerturbationInteraction | Mapping[str, Any] | None = None,
        *,
        batch_size: int | None = None,
        lam: float | str | None = None,
        **fields: Any,
    ) -> None:
        if lam is not None:
            warnings.warn("InteractionLoss(lam=...) is deprecated; use lambda_", DeprecationWarning, stacklevel=2)
            lambda_ = lam
        self.lambda_ = parse_lambda(lambda_)
        try:
            spec = PerturbationInteraction.of(interaction, PerturbationInteraction.ir_code())
            self.spec = PerturbationInteraction.of(fields, spec)
        except (TypeError, ValueError) as err:
            raise type(err)(f"{err} (IR interaction loss)") from None
        if batch_size is not None:
            check_int(batch_size, "batch_size (IR)", minimum=1)
        self.batch_size = batch_size
        self._generator: torch.Generator | None = None

    @property
    def lam(self) -> float:
        """Deprecated alias of :attr:`lambda_`."""
        warnings.warn("InteractionLoss.lam is deprecated; use lambda_", DeprecationWarning, stacklevel=2)
        return self.lambda_

    # the specification's fields, read-only (term.grid, term.num_samples, ...)
    grid = property(lambda self: self.spec.grid, doc="``spec.grid``")
    form = property(lambda self: self.spec.form, doc="``spec.form``")
    num_samples = property(lambda self: self.spec.num_samples, doc="``spec.num_samples``")
    group_size = property(lambda self: self.spec.group_size, doc="``spec.group_size``")
    value = property(lambda self: self.spec.value, doc="``spec.value``")
    scale = property(lambda self: self.spec.scale, doc="``spec.scale``")

    @property
    @override
    def replaces_classification_loss(self) -> bool:  # type: ignore[override]
        return math.isinf(self.lambda_)

    @property
    @override
    def prefers_zero_start(self) -> bool:  # type: ignore[override]
        return 0 < self.lambda_ < math.inf

    @override
    def start(self, x: torch.Tensor, generator: torch.Generator) -> None:
        height, width = x.shape[-2:]
        rows, cols = grid_shape(self.spec.grid)
        if rows > height or cols > width:
            raise ValueError(
                f"grid (IR) = {self.spec.grid} is larger than the image ({height}×{width} pixels); "
                f"use a grid of at most {min(height, width)}"
            )
        self._generator = generator

    uses_logits = True

    @override
    def __call__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        delta: torch.Tensor,
        y: torch.Tensor,
        *,
        logits: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # looked up on the package at call time: the engine contract of lit_advgame.interactions
        interaction = interactions.perturbation_interaction(
            model,
            x,
            delta,
            y,
            generator=self._generator,
            batch_size=self.batch_size,
            full_logits=logits,
            **self.spec.engine_kwargs(),
        )
        contribution = -interaction if math.isinf(self.lambda_) else -self.lambda_ * interaction
        return contribution, {"interaction": interaction.detach()}

    def __repr__(self) -> str:
        return f"InteractionLoss(lambda_={self.lambda_}, interaction={self.spec!r}, batch_size={self.batch_size})"
