"""Transfer attacks in pixel space: PGD (L∞/L2) with composable MI, VR, DI, TI and SGM transforms and
the IR interaction loss (Wang et al., ICLR 2021), plus named presets of the paper's tables, and the
strength-controlled attack of Ren et al. (NeurIPS 2021) that stops at a fixed logit drop.

>>> import torch
>>> from torch import nn
>>> _ = torch.manual_seed(0)
>>> model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))  # any pixel-space classifier
>>> attack = build_attack("pgd+ir", model, steps=2, ir_grid=4, ir_num_samples=2, ir_group_size=4, seed=0)
>>> attack(torch.rand(2, 3, 8, 8), torch.tensor([0, 1])).shape
torch.Size([2, 3, 8, 8])
"""

from lit_advgame.attacks.base import Attack, AttackResult, l1_normalize
from lit_advgame.attacks.ensemble import EnsembleLogits
from lit_advgame.attacks.interaction_loss import InteractionLoss
from lit_advgame.attacks.loss_term import LossTerm
from lit_advgame.attacks.losses import classification_loss, margin
from lit_advgame.attacks.norms import L2Norm, LinfNorm, Norm, build_norm
from lit_advgame.attacks.presets import (
    DEFAULTS,
    PRESETS,
    attack_from_config,
    available_presets,
    build_attack,
    preset_config,
    source_family,
)
from lit_advgame.attacks.strength import StrengthAttackResult, StrengthControlledAttack
from lit_advgame.attacks.transforms import (
    DiverseInputs,
    Momentum,
    SkipGradient,
    Transform,
    TranslationInvariance,
    VarianceReduction,
)

__all__ = [
    "Attack",
    "AttackResult",
    "l1_normalize",
    "EnsembleLogits",
    "InteractionLoss",
    "LossTerm",
    "classification_loss",
    "margin",
    "Norm",
    "LinfNorm",
    "L2Norm",
    "build_norm",
    "Transform",
    "Momentum",
    "VarianceReduction",
    "DiverseInputs",
    "TranslationInvariance",
    "SkipGradient",
    "DEFAULTS",
    "PRESETS",
    "available_presets",
    "build_attack",
    "preset_config",
    "attack_from_config",
    "source_family",
    "StrengthAttackResult",
    "StrengthControlledAttack",
]
