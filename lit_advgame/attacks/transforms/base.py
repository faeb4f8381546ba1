"""The interface of composable attack transforms.

One attack step (:class:`~lit_advgame.attacks.base.Attack`) runs, in this order (the order of the
official IR code, ``ProjectionAttacker.perturb``):

1. ``model_context``: context manager around the whole forward/backward (SGM's hooks);
2. ``transform_input``: the model input x + δ of the classification loss (VR copies, DI);
   ``reduce_copies`` then turns the summed per-copy losses into one objective per image;
3. gradient of the objective w.r.t. δ;
4. ``transform_gradient``: the raw gradient (TI's Gaussian smoothing);
5. L1 normalisation per sample (done by the attack);
6. ``update_direction``: the normalised gradient (MI's momentum);
7. the norm's step (sign for L∞, L2-normalised for L2) and projection.

Every hook defaults to the identity, so a transform implements only the stages it changes.
Within one stage, transforms run in the order they are listed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from contextlib import AbstractContextManager

import torch
from torch import nn


class Transform:
    """Base class of gradient / input / model transforms (identity at every stage)."""

    def check_model(self, models: Sequence[nn.Module]) -> None:
        """Validate the source models once, when the attack is built (raise ``ValueError``)."""

    def start(self, x: torch.Tensor, generator: torch.Generator) -> None:
        """Reset per-attack state for the clean batch ``x``; ``generator`` is this transform's own stream."""

    def model_context(self, models: Sequence[nn.Module]) -> AbstractContextManager:
        """Context manager active during each step's forward and backward passes."""
        return contextlib.nullcontext()

    def transform_input(self, z: torch.Tensor) -> torch.Tensor:
        """Transform the classification-loss input (rows may be multiplied, copy-major)."""
        return z

    def reduce_copies(self, per_image: torch.Tensor) -> torch.Tensor:
        """Rescale the per-image loss, already summed over the copies made by ``transform_input``."""
        return per_image

    def transform_gradient(self, grad: torch.Tensor) -> torch.Tensor:
        """Transform the raw gradient w.r.t. δ (before L1 normalisation)."""
        return grad

    def update_direction(self, grad: torch.Tensor) -> torch.Tensor:
        """Transform the L1-normalised gradient into the update direction."""
        return grad

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"
