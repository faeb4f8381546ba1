"""MI: momentum iterative attack (Dong et al., CVPR 2018; IR paper Section 4).

g_t = μ·g_{t−1} + ∇ℓ / ‖∇ℓ‖₁. The attack L1-normalises the gradient per sample before this
stage (as the official IR code does for every attack), so ``update_direction`` only accumulates.
With μ = 0 the direction is the normalised gradient itself, i.e. the base attack, bit for bit.
"""

from __future__ import annotations

import warnings

import torch
from typing_extensions import override

from lit_advgame.attacks.transforms.base import Transform
from lit_advgame.utils.checks import check_positive


class Momentum(Transform):
    """Accumulate L1-normalised gradients with decay μ = ``momentum`` (MI-FGSM default 1.0).

    g_t = μ·g_{t−1} + ∇ℓ / ‖∇ℓ‖₁: the momentum update of MI-FGSM (Dong et al., "Boosting adversarial
    attacks with momentum", CVPR 2018, Algorithm 1).

    Args:
        momentum: the decay μ >= 0 (the preset key ``momentum``; ``mu`` is a deprecated alias).
    """

    def __init__(self, momentum: float = 1.0, *, mu: float | None = None) -> None:
        if mu is not None:
            warnings.warn("Momentum(mu=...) is deprecated; use momentum", DeprecationWarning, stacklevel=2)
            momentum = mu
        check_positive(momentum, "momentum (MI decay μ)", allow_zero=True)
        self.momentum = float(momentum)
        self._velocity: torch.Tensor | None = None

    @property
    def mu(self) -> float:
        """Deprecated alias of :attr:`momentum`."""
        warnings.warn("Momentum.mu is deprecated; use momentum", DeprecationWarning, stacklevel=2)
        return self.momentum

    @override
    def start(self, x: torch.Tensor, generator: torch.Generator) -> None:
        self._velocity = torch.zeros_like(x)

    @override
    def update_direction(self, grad: torch.Tensor) -> torch.Tensor:
        if self._velocity is None or self._velocity.shape != grad.shape:
            self._velocity = torch.zeros_like(grad)
        self._velocity = self.momentum * self._velocity + grad
        return self._velocity
