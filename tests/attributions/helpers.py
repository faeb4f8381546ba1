"""Models and attacks with a known attacking cost for the attribution tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from lit_advgame.attributions.cost import RestrictedAttack


class TwoClassLinear(nn.Module):
    """Logits ``W x + b`` of two classes with ``(Z_1 − Z_0)(x0) = margin`` at the image ``x0``.

    The targeted (t = 0) minimal perturbation restricted to a mask ``M`` has the closed form
    ``‖δ‖₂ = margin / ‖g∘M‖₂`` (δ ∝ g∘M) and ``‖δ‖∞ = margin / ‖g∘M‖₁`` (δ = ε·sign(g)∘M), with
    ``g = w_0 − w_1``, as long as the box [0, 1] does not bind.
    """

    def __init__(self, x0: torch.Tensor, margin: float, scale: float = 0.1, seed: int = 1, weights=None) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        weight = torch.randn(2, x0[0].numel(), generator=generator) * scale if weights is None else weights
        self.weight = nn.Parameter(weight.to(x0.dtype))
        z = (x0.flatten(1) @ self.weight.T)[0].detach()
        self.bias = nn.Parameter(torch.stack([z[1] - z[0] - margin, torch.zeros_like(z[0])]))

    @property
    def g(self) -> torch.Tensor:
        return (self.weight[0] - self.weight[1]).detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight.T + self.bias


@dataclass
class FormulaLinfAttack(RestrictedAttack):
    """The exact L∞ cost ``margin / ‖g∘M‖₁`` of :class:`TwoClassLinear` (no optimisation), optionally
    failing on the masks ``fails(mask)`` marks: estimator tests on games with a known value table."""

    g: torch.Tensor = field(default_factory=lambda: torch.ones(1))
    margin: float = 1.0
    fails: object = None

    norm: ClassVar[str] = "linf"

    def steps_per_row(self) -> int:
        return 1

    def attack_batch(self, model, x, target, mask):
        weight = (self.g.view(1, *x.shape[1:]).abs() * mask).flatten(1).sum(dim=1)
        cost = self.margin / weight
        success = weight > 0
        if self.fails is not None:
            success &= ~self.fails(mask)
        return cost, success, torch.zeros_like(x), x.shape[0]
