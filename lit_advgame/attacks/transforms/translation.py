"""TI: translation-invariant attack (Dong et al., CVPR 2019): smooth the gradient with a Gaussian kernel.

As in the official IR code (``transition_invariant_conv``): a kernel of odd side k with
1-D profile exp(−t²/2) at t = linspace(−nsig, nsig, k), normalised to sum 1, applied per channel
(depthwise) with zero padding k // 2 to the raw gradient, before the L1 normalisation.
The TI paper uses k = 15; k = 1 is the identity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lit_advgame.attacks.transforms.base import Transform
from lit_advgame.utils.checks import check_int, check_positive


def gaussian_kernel(size: int, nsig: float = 3.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(size, size) Gaussian kernel sampled on [−nsig, nsig], summing to 1."""
    check_int(size, "kernel_size", minimum=1)
    if size % 2 == 0:
        raise ValueError(f"kernel_size must be odd (centred kernel); got {size}")
    check_positive(nsig, "nsig")
    t = torch.linspace(-nsig, nsig, size, dtype=torch.float64)
    profile = torch.exp(-0.5 * t**2)
    kernel = torch.outer(profile, profile)
    return (kernel / kernel.sum()).to(dtype)


class TranslationInvariance(Transform):
    """Convolve the gradient with a normalised Gaussian kernel of odd side ``kernel_size``.

    The TI attack's gradient W * ∇ℓ (Dong et al., "Evading defenses to transferable adversarial examples
    by translation-invariant attacks", CVPR 2019), with the kernel of the official IR code."""

    def __init__(self, kernel_size: int = 15, nsig: float = 3.0) -> None:
        self.kernel = gaussian_kernel(kernel_size, nsig)
        self.kernel_size = kernel_size
        self.nsig = float(nsig)

    def transform_gradient(self, grad: torch.Tensor) -> torch.Tensor:
        channels = grad.shape[1]
        weight = self.kernel.to(device=grad.device, dtype=grad.dtype).expand(channels, 1, -1, -1)
        return F.conv2d(grad, weight, padding=self.kernel_size // 2, groups=channels)

    def __repr__(self) -> str:
        return f"TranslationInvariance(kernel_size={self.kernel_size}, nsig={self.nsig})"
