"""DI: diverse inputs (Xie et al., CVPR 2019): random resize-and-pad of the model input.

With probability ``prob`` (drawn per image), the image is shrunk by a random factor s and placed
at a random position on a zero (black) canvas, then the canvas is resized back to the input size,
so shapes never grow (implementations that skip the resize back change the input size; see
yuyang-long/SSA #5). The three steps are one affine resampling of the input, done here with
``affine_grid``/``grid_sample`` for all images at once:

* ``resize_rate`` r ≥ 1 (TransferAttack: 1.1, i.e. 224 → rnd ∈ [224, 246) padded to 246):
  s ~ U[1/r, 1); r < 1 (torchattacks: 0.9, i.e. rnd ∈ [0.9·H, H) padded to H): s ~ U[r, 1);
* the offset of the shrunk image is uniform over the canvas.

Sizes and offsets are continuous here (the references draw integer pixel sizes). The official IR
code has no DI; the IR paper (Appendix N, Table 11) reports DI's interaction only.
DI applies to the classification-loss input; the IR term sees the untransformed input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lit_advgame.attacks.transforms.base import Transform
from lit_advgame.utils.checks import check_choice, check_positive


class DiverseInputs(Transform):
    """Random resize-and-pad of each image with probability ``prob``, resized back to the input size.

    The input diversity transform T(x; p) of DI-FGSM (Xie et al., "Improving transferability of adversarial
    examples with input diversity", CVPR 2019)."""

    def __init__(self, prob: float = 0.5, resize_rate: float = 1.1, mode: str = "bilinear") -> None:
        check_positive(prob, "prob (DI probability)", allow_zero=True)
        if prob > 1:
            raise ValueError(f"prob (DI probability) must be in [0, 1]; got {prob!r}")
        check_positive(resize_rate, "resize_rate (DI)")
        check_choice(mode, "DI interpolation mode", ("bilinear", "nearest"))
        self.prob = float(prob)
        self.resize_rate = float(resize_rate)
        self.mode = mode
        self._generator: torch.Generator | None = None

    def start(self, x: torch.Tensor, generator: torch.Generator) -> None:
        self._generator = generator

    @property
    def min_scale(self) -> float:
        return 1.0 / self.resize_rate if self.resize_rate >= 1 else self.resize_rate

    def transform_input(self, z: torch.Tensor) -> torch.Tensor:
        n = z.shape[0]
        opts = dict(generator=self._generator, device=z.device, dtype=z.dtype)
        apply = torch.rand(n, **opts) < self.prob
        scale = self.min_scale + (1.0 - self.min_scale) * torch.rand(n, **opts)
        centre = (1.0 - scale)[:, None] * (2.0 * torch.rand(n, 2, **opts) - 1.0)  # (x, y) in [-1, 1] coords
        if not bool(apply.any()):
            return z
        theta = torch.zeros(n, 2, 3, device=z.device, dtype=z.dtype)
        theta[:, 0, 0] = 1.0 / scale
        theta[:, 1, 1] = 1.0 / scale
        theta[:, :, 2] = -centre / scale[:, None]
        grid = F.affine_grid(theta, list(z.shape), align_corners=False)
        resized = F.grid_sample(z, grid, mode=self.mode, padding_mode="zeros", align_corners=False)
        return torch.where(apply.view(-1, *([1] * (z.dim() - 1))), resized, z)
