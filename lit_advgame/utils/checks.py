"""Argument validation with clear messages that name the argument and what is allowed."""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from typing import Any, Literal, get_args, get_origin

import torch
from torch import nn


def check_images(
    x: torch.Tensor, name: str = "x", *, channels: int | None = None, tol: float = 1e-6, allow_empty: bool = True
) -> None:
    """Check ``x`` is a finite (B, C, H, W) float batch in pixel space [0, 1] (B >= 1 unless ``allow_empty``)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, C, H, W); got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must have shape (B, C, H, W); got shape {tuple(x.shape)}")
    if not allow_empty and x.shape[0] == 0:
        raise ValueError(f"{name} must contain at least one image; got an empty batch (B = 0, shape {tuple(x.shape)})")
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


def check_choice(value: str, name: str, choices: Sequence[str] | Any) -> None:
    """Check ``value`` is one of ``choices`` (a sequence of names or a ``Literal`` alias of
    :mod:`lit_advgame.vocabulary`).

    >>> check_choice("val", "split", ("train", "val", "test"))
    >>> check_choice("dev", "split", Literal["train", "val", "test"])
    Traceback (most recent call last):
    ...
    ValueError: unknown split 'dev'; choose one of: train, val, test
    """
    if get_origin(choices) is Literal:
        choices = get_args(choices)
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of: {', '.join(map(str, choices))}")


def check_module(model: Any, name: str = "model") -> None:
    """Check ``model`` is a ``torch.nn.Module`` (a classifier on pixel-space images), not e.g. a plain function."""
    if not isinstance(model, nn.Module):
        hint = (
            " (a plain function or lambda cannot be put in eval mode or hooked: wrap it in an nn.Module whose "
            "forward calls it)"
            if callable(model)
            else ""
        )
        raise TypeError(
            f"{name} must be a torch.nn.Module mapping (B, C, H, W) images in [0, 1] to logits; "
            f"got {type(model).__name__}{hint}"
        )


def module_dtype(model: nn.Module) -> torch.dtype | None:
    """The floating dtype of ``model``'s first floating parameter or buffer (``None`` if it has none)."""
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return None


def as_model_dtype(x: torch.Tensor, models: nn.Module | Sequence[nn.Module], name: str = "x") -> torch.Tensor:
    """``x`` cast to the floating dtype of the model(s) (e.g. float64 images for a float32 model).

    Unchanged when the dtypes agree or the model has no floating parameters or buffers; a
    ``ValueError`` when several models disagree on their dtype. Casting keeps autograd.
    """
    models = [models] if isinstance(models, nn.Module) else list(models)
    dtypes = {d for d in (module_dtype(m) for m in models) if d is not None}
    if len(dtypes) > 1:
        raise ValueError(f"the models have different dtypes {sorted(map(str, dtypes))}; convert them to one dtype")
    if not dtypes or x.dtype in dtypes:
        return x
    return x.to(dtypes.pop())


def parse_fraction(value: Any, name: str) -> Any:
    """A YAML-friendly number: strings such as ``"16/255"`` or ``"0.5"`` become floats; others pass through."""
    if isinstance(value, str):
        try:
            return float(Fraction(value.replace(" ", "")))
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"{name} must be a number or a fraction such as '16/255'; got {value!r}") from None
    return value
