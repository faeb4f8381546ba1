"""Baselines: the pixel values that replace *absent* players in an input game.

``x_S = M_S * x + (1 - M_S) * baseline`` (computed exactly: present pixels are exactly ``x`` and
absent pixels exactly the baseline). Choices:

* ``"mean"`` (default, the reference): the per-channel dataset mean, read from the model's
  :class:`~lit_advgame.models.normalize.Normalize` layer. The official code of Ren et al.
  (NeurIPS 2021) multiplies the *normalized* image by the mask, so absent cells are 0 after
  normalization, i.e. exactly this mean colour in pixel space.
* ``"zeros"``: black pixels.
* ``"blur"``: a Gaussian-blurred copy of each image (``blur_sigma`` pixels, kernel radius
  ``ceil(3 sigma)``, replicate padding, per channel).
* a sequence of C floats: an explicit per-channel mean.
* a tensor broadcastable to ``(B, C, H, W)``: ``(C,)``, ``(C, H, W)``, ``(1 or B, C, 1 or H, 1 or W)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torch import nn

from lit_advgame.models.normalize import find_normalizer
from lit_advgame.utils.checks import check_positive
from lit_advgame.vocabulary import BASELINE_NAMES

DEFAULT_BLUR_SIGMA = 5.0

Baseline = str | Sequence[float] | torch.Tensor


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Per-channel Gaussian blur of a ``(B, C, H, W)`` batch (replicate padding, radius ``ceil(3 sigma)``).

    :func:`torchvision.transforms.functional.gaussian_blur` with a ``2 ceil(3σ) + 1`` kernel on the
    image padded by the radius with **replicate** padding (torchvision itself pads by reflection;
    after the replicate padding its reflected border is cropped away, so border pixels average
    copies of the edge, as the blur baseline always did).
    """
    check_positive(sigma, "blur_sigma")
    radius = max(1, math.ceil(3.0 * float(sigma)))
    padded = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    size = 2 * radius + 1
    blurred = TF.gaussian_blur(padded, [size, size], [float(sigma), float(sigma)])
    return blurred[..., radius:-radius, radius:-radius]


def _mean_from_model(model: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    normalizer = find_normalizer(model) if model is not None else None
    if normalizer is None:
        raise ValueError(
            'baseline="mean" reads the per-channel dataset mean from the model\'s Normalize layer, but the model has '
            "none; wrap it in lit_advgame.models.normalize.NormalizedModel or pass the mean explicitly "
            "(baseline=[m_1, ..., m_C]) or another baseline ('zeros', 'blur', a tensor)"
        )
    mean = normalizer.mean.detach().to(device=x.device, dtype=x.dtype)
    if mean.shape[1] != x.shape[1]:
        raise ValueError(f"the model's Normalize layer has {mean.shape[1]} channels but the images have {x.shape[1]}")
    return mean.view(1, -1, 1, 1)


def make_baseline(
    baseline: Baseline,
    x: torch.Tensor,
    model: nn.Module | None = None,
    *,
    blur_sigma: float = DEFAULT_BLUR_SIGMA,
) -> torch.Tensor:
    """Return the baseline as a tensor broadcastable to ``x`` (``(B, C, H, W)``), on ``x``'s device/dtype.

    Constant baselines keep singleton dimensions (e.g. ``(1, C, 1, 1)``) so no full-size copy is made.
    """
    channels = x.shape[1]
    if isinstance(baseline, str):
        if baseline == "mean":
            return _mean_from_model(model, x)
        if baseline == "zeros":
            return torch.zeros(1, channels, 1, 1, dtype=x.dtype, device=x.device)
        if baseline == "blur":
            with torch.no_grad():
                return gaussian_blur(x.detach(), blur_sigma)
        raise ValueError(
            f"unknown baseline {baseline!r}; choose one of {', '.join(BASELINE_NAMES)}, a per-channel mean or a tensor"
        )
    if not isinstance(baseline, torch.Tensor):
        try:
            values = torch.as_tensor(baseline, dtype=x.dtype)
        except (TypeError, ValueError):
            raise TypeError(
                f"baseline must be one of {BASELINE_NAMES}, a sequence of {channels} per-channel values or a tensor; "
                f"got {baseline!r}"
            ) from None
        if values.dim() != 1 or values.numel() != channels:
            raise ValueError(f"an explicit per-channel baseline needs {channels} values; got {list(values.shape)}")
        baseline = values.view(1, channels, 1, 1)
    tensor = baseline.detach().to(device=x.device, dtype=x.dtype)
    if tensor.dim() == 1 and tensor.numel() == channels:
        tensor = tensor.view(1, channels, 1, 1)
    elif tensor.dim() == 3:
        tensor = tensor.unsqueeze(0)
    if tensor.dim() != 4:
        raise ValueError(
            f"baseline tensor must be broadcastable to the images {tuple(x.shape)}: "
            f"use (C,), (C, H, W) or (B, C, H, W); got {tuple(baseline.shape)}"
        )
    try:
        broadcast = torch.broadcast_shapes(tensor.shape, x.shape)
    except RuntimeError:
        broadcast = None
    if broadcast != x.shape:
        raise ValueError(
            f"baseline of shape {tuple(baseline.shape)} cannot be broadcast to the images {tuple(x.shape)}"
        )
    if tensor.shape[1] != channels:
        raise ValueError(f"baseline has {tensor.shape[1]} channels but the images have {channels}")
    if not torch.isfinite(tensor).all():
        raise ValueError("baseline contains NaN or infinite values")
    return tensor
