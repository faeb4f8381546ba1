"""VR: variance-reduced attack (Wu et al. 2018, "Understanding and enhancing the transferability of
adversarial examples"; IR paper Section 4 and Appendix M.1).

The gradient is that of the Gaussian-smoothed loss E_ξ[ℓ(x + δ + ξ)], ξ ~ N(0, σ²I), estimated with
K copies per image in one batched forward pass. As in the official code, the noisy inputs are not
clipped to [0, 1], the copies' losses are *summed* (``reduction="sum"``; ``"mean"`` gives the
paper's 1/K·Σ_k of Appendix M.1) and the IR term, if any, is computed on the noise-free input
(the paper's Appendix M.1 says x + ξ_k). With ``sum`` the effective λ of VR+IR is about λ/K.

σ is in pixel units of [0, 1] images: the official ``--sigma 15`` on a 0–255 scale is 15/255.
With σ = 0 every copy equals x + δ exactly.
"""

from __future__ import annotations

import torch

from lit_advgame.attacks.transforms.base import Transform
from lit_advgame.utils.checks import check_choice, check_int, check_positive


class VarianceReduction(Transform):
    """Smooth the classification loss over ``copies`` Gaussian copies of std ``sigma``.

    The VR gradient ∇ E_ξ[ℓ(x + δ + ξ)] (Wu et al. 2018, "Understanding and enhancing the transferability
    of adversarial examples"; Wang et al., ICLR 2021, Appendix M.1), a sum over the copies by default."""

    def __init__(self, copies: int = 20, sigma: float = 15 / 255, reduction: str = "sum") -> None:
        check_int(copies, "copies (VR K)", minimum=1)
        check_positive(sigma, "sigma (VR noise std)", allow_zero=True)
        check_choice(reduction, "VR reduction", ("sum", "mean"))
        self.copies = copies
        self.sigma = float(sigma)
        self.reduction = reduction
        self._generator: torch.Generator | None = None

    def start(self, x: torch.Tensor, generator: torch.Generator) -> None:
        self._generator = generator

    def transform_input(self, z: torch.Tensor) -> torch.Tensor:
        repeated = z.repeat(self.copies, *([1] * (z.dim() - 1)))
        noise = torch.randn(repeated.shape, generator=self._generator, device=z.device, dtype=z.dtype)
        return repeated + self.sigma * noise

    def reduce_copies(self, per_image: torch.Tensor) -> torch.Tensor:
        return per_image / self.copies if self.reduction == "mean" else per_image
