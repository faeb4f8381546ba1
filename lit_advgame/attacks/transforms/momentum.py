"""MI: momentum iterative attack (Dong et al., CVPR 2018; IR paper Section 4).

g_t = μ·g_{t−1} + ∇ℓ / ‖∇ℓ‖₁. The attack L1-normalises the gradient per sample before this
stage (as the official IR code does for every attack), so ``update_direction`` only accumulates.
With μ = 0 the direction is the normalised gradient itself, i.e. the base attack, bit for bit.
"""
from __future__ import annotations

import torch

from lit_advgame.attacks.transforms.base import Transform
from lit_advgame.utils.checks import check_positive


class Momentum(Transform):
    """Accumulate L1-normalised gradients with decay ``mu`` (MI-FGSM default 1.0)."""

    def __init__(self, mu: float = 1.0) -> None:
        check_positive(mu, "mu (momentum decay)", allow_zero=True)
        self.mu = float(mu)
        self._velocity: torch.Tensor | None = None

    def start(self, x: torch.Tensor, generator: torch.Generator) -> None:
        self._velocity = torch.zeros_like(x)

    def update_direction(self, grad: torch.Tensor) -> torch.Tensor:
        if self._velocity is None or self._velocity.shape != grad.shape:
            self._velocity = torch.zeros_like(grad)
        self._velocity = self.mu * self._velocity + grad
        return self._velocity
