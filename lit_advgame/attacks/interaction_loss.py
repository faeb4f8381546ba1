r"""The IR term: the interaction loss of the interaction-reduced attack (Wang et al., ICLR 2021, Eq. 5).

The attack maximises ℓ(h(x + δ), y) − λ·ℓ_interaction with ℓ_interaction = E_{i,j}[I_ij(δ)], the
average pairwise Shapley interaction between perturbation units, estimated on an L×L grid of cells
(Eq. 4 and Appendix J, Eq. 39). The estimate comes from the interaction engine,
:func:`lit_advgame.interactions.perturbation_interaction` (imported lazily); its defaults follow
the official code: ``form="coalition"`` (32 samples of 32 cells drawn with replacement per step;
``"single"``-player forms are the paper's Eq. 39), ``value="margin_fixed"`` (v(S) = z_t − z_y with
the runner-up t of the full perturbation held fixed for the step; ``"margin_max"`` takes the max
inside each subset, as the paper's text) and ``scale="reference"`` (no 1/(n−1) factor, which only
rescales λ).

λ = 1 for ResNet sources and 2 otherwise (paper Section 5); ``lam=float("inf")`` (or ``"inf"``)
optimises the interaction alone (Fig. 3b); ``lam=0`` computes the term but adds 0·I, so the attack
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

import torch
from torch import nn

from lit_advgame.attacks.loss_term import LossTerm
from lit_advgame.utils.checks import check_int, check_positive


def parse_lambda(lam: float | str) -> float:
    """λ as a float >= 0; ``"inf"``/``"infinity"`` (any case) gives ``math.inf``."""
    if isinstance(lam, str):
        if lam.strip().lower() in ("inf", "infinity", "+inf"):
            return math.inf
        try:
            lam = float(lam)
        except ValueError:
            raise ValueError(f"lam (IR weight) must be a number >= 0 or 'inf'; got {lam!r}") from None
    check_positive(lam, "lam (IR weight)", allow_zero=True, allow_inf=True)
    return float(lam)


class InteractionLoss(LossTerm):
    """−λ·I(δ) per image (or −I(δ) for λ = ∞), I from :func:`perturbation_interaction`.

    Args:
        lam: weight λ >= 0 of the interaction, or ``inf`` for interaction only.
        grid: side L of the L×L grid of players (16 in the paper); must not exceed the image size.
        form, num_samples, group_size, value, scale, batch_size: passed to the engine.
    """

    name = "interaction"

    def __init__(
        self,
        lam: float | str = 1.0,
        grid: int = 16,
        form: str = "coalition",
        num_samples: int = 32,
        group_size: int = 32,
        value: str = "margin_fixed",
        scale: str = "reference",
        batch_size: int | None = None,
    ) -> None:
        self.lam = parse_lambda(lam)
        check_int(grid, "grid (IR)", minimum=1)
        check_int(num_samples, "num_samples (IR)", minimum=1)
        check_int(group_size, "group_size (IR)", minimum=1)
        if batch_size is not None:
            check_int(batch_size, "batch_size (IR)", minimum=1)
        self.grid = grid
        self.form = form
        self.num_samples = num_samples
        self.group_size = group_size
        self.value = value
        self.scale = scale
        self.batch_size = batch_size
        self._generator: torch.Generator | None = None

    @property
    def replaces_classification_loss(self) -> bool:  # type: ignore[override]
        return math.isinf(self.lam)

    @property
    def prefers_zero_start(self) -> bool:  # type: ignore[override]
        return 0 < self.lam < math.inf

    def start(self, x: torch.Tensor, generator: torch.Generator) -> None:
        height, width = x.shape[-2:]
        if self.grid > min(height, width):
            raise ValueError(
                f"grid (IR) = {self.grid} is larger than the image ({height}×{width} pixels); "
                f"use a grid of at most {min(height, width)}"
            )
        self._generator = generator

    def __call__(
        self, model: nn.Module, x: torch.Tensor, delta: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        from lit_advgame.interactions import perturbation_interaction

        interaction = perturbation_interaction(
            model,
            x,
            delta,
            y,
            grid=self.grid,
            form=self.form,
            num_samples=self.num_samples,
            group_size=self.group_size,
            value=self.value,
            generator=self._generator,
            batch_size=self.batch_size,
            scale=self.scale,
        )
        contribution = -interaction if math.isinf(self.lam) else -self.lam * interaction
        return contribution, {"interaction": interaction.detach()}

    def __repr__(self) -> str:
        return (
            f"InteractionLoss(lam={self.lam}, grid={self.grid}, form={self.form!r}, num_samples={self.num_samples}, "
            f"group_size={self.group_size}, value={self.value!r}, scale={self.scale!r}, batch_size={self.batch_size})"
        )
