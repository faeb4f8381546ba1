"""Composable attack transforms: MI, VR, DI, TI, SGM (see :mod:`.base` for the stage order)."""

from lit_advgame.attacks.transforms.base import Transform
from lit_advgame.attacks.transforms.diverse_inputs import DiverseInputs
from lit_advgame.attacks.transforms.momentum import Momentum
from lit_advgame.attacks.transforms.skip_gradient import (
    SkipGradient,
    find_skip_blocks,
    is_skip_block,
    skip_kind,
    skip_kinds,
)
from lit_advgame.attacks.transforms.translation import TranslationInvariance, gaussian_kernel
from lit_advgame.attacks.transforms.variance import VarianceReduction

__all__ = [
    "Transform",
    "Momentum",
    "VarianceReduction",
    "DiverseInputs",
    "TranslationInvariance",
    "SkipGradient",
    "gaussian_kernel",
    "find_skip_blocks",
    "is_skip_block",
    "skip_kind",
    "skip_kinds",
]
