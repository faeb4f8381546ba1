"""Argument validation with clear messages that name the argument and what is allowed."""
from __future__ import annotations

import math
from typing import Sequence

import torch


def check_images(x: torch.Tensor, name: str = "x", *, channels: int | None = None, tol: float = 1e-6) -> None:
    """Check ``x`` is a finite (B, C, H, W) float batch in pixel space [0, 1]."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, C, H, W); got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must have shape (B, C, H, W); got shape {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{name} must have {channels} channel(s); got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor in [0, 1]; got dtype {x.dtype}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if x.numel() and (x.min() < -tol or x.max() > 1 + tol):
        raise ValueError(
            f"{name} must lie in pixel space [0, 1]; got values in [{x.min().item():.4g}, {x.max().item():.4g}]"
            " (normalization is the first layer of the model: pass unnormalized images)"
        )


def check_labels(y: torch.Tensor, batch_size: int, num_classes: int | None = None, name: str = "y") -> None:
    """Check ``y`` is an integer vector of ``batch_size`` class indices."""
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.shape[0] != batch_size:
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"{name} must be a 1-D tensor of {batch_size} class indices; got {shape}")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer class indices; got dtype {y.dtype}")
    if num_classes is not None and y.numel() and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"{name} must be in [0, {num_classes - 1}]; got range [{y.min().item()}, {y.max().item()}]")


def check_positive(value: float, name: str, *, allow_zero: bool = False, allow_inf: bool = False) -> None:
    """Check a scalar is > 0 (or >= 0 with ``allow_zero``) and finite (unless ``allow_inf``)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number; got {value!r}") from None
    if math.isnan(v) or (math.isinf(v) and not allow_inf):
        raise ValueError(f"{name} must be a finite number; got {value!r}")
    if v < 0 or (v == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}; got {value!r}")


def check_int(value: int, name: str, *, minimum: int | None = None, maximum: int | None = None) -> None:
    """Check ``value`` is an integer within [minimum, maximum]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer; got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}; got {value}")


def check_choice(value: str, name: str, choices: Sequence[str]) -> None:
    """Check ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of: {', '.join(map(str, choices))}")
