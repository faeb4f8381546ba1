"""Normalization as the first layer of every model.

Images live in pixel space [0, 1] throughout lit_advgame; attacks, masks, noise and
certification all act there. Every classifier is therefore wrapped so that its first
operation is ``(x - mean) / std`` with ``mean``/``std`` stored as registered buffers
(they move with ``.to(device)`` and are saved in the ``state_dict``), following the
``NormalizeLayer`` of Cohen et al. (2019) and the ``InputNormalize`` of MadryLab's
``robustness`` library (whose ``clamp(x, 0, 1)`` is available here as an option).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Normalize(nn.Module):
    """Per-channel standardisation ``(x - mean) / std`` of pixel-space input.

    Args:
        mean: per-channel mean (length C).
        std: per-channel standard deviation (length C, all > 0).
        clamp: clamp the input to [0, 1] first (MadryLab ``robustness`` behaviour).
            Off by default so Gaussian-noised inputs of randomized smoothing pass unclipped
            (Cohen et al. 2019).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], clamp: bool = False) -> None:
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std_t = torch.as_tensor(std, dtype=torch.float32).flatten()
        if mean_t.numel() == 0 or mean_t.shape != std_t.shape:
            raise ValueError(
                f"mean and std must be non-empty sequences of equal length (one value per channel); "
                f"got mean={list(mean_t.tolist())}, std={list(std_t.tolist())}"
            )
        if not torch.all(std_t > 0) or not torch.all(torch.isfinite(std_t)):
            raise ValueError(f"std must be finite and > 0 for every channel; got {std_t.tolist()}")
        if not torch.all(torch.isfinite(mean_t)):
            raise ValueError(f"mean must be finite; got {mean_t.tolist()}")
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1))
        self.register_buffer("std", std_t.view(1, -1, 1, 1))
        self.clamp = bool(clamp)

    @property
    def num_channels(self) -> int:
        return self.mean.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.num_channels:
            raise ValueError(
                f"expected input of shape (B, {self.num_channels}, H, W) in pixel space; got {tuple(x.shape)}"
            )
        if self.clamp:
            x = x.clamp(0.0, 1.0)
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}, clamp={self.clamp}"


class NormalizedModel(nn.Module):
    """A classifier whose first layer is :class:`Normalize`: takes pixel-space input in [0, 1].

    Attributes:
        normalize: the :class:`Normalize` layer.
        net: the wrapped network, which sees standardised input.
    """

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float], clamp: bool = False) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std, clamp=clamp)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))


def find_normalizer(model: nn.Module) -> Normalize | None:
    """Return the first :class:`Normalize` layer inside ``model`` (or ``None``)."""
    for module in model.modules():
        if isinstance(module, Normalize):
            return module
    return None
