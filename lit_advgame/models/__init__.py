"""Classifiers that take pixel-space input: a registry of architectures, each wrapped in
:class:`NormalizedModel`, and a loader for MadryLab ``robustness`` checkpoints.

``SKIP_BLOCK_TYPES`` lists this package's residual/dense blocks (each has the class attribute
``is_skip_block = True`` and ``branch_relus``, the names of its ``nn.ReLU`` modules on the
residual / new-feature branch); ``TORCHVISION_SKIP_BLOCK_TYPES`` lists torchvision's
(whose blocks reuse one ``relu`` module for the branch and the output). :func:`is_skip_block`
(:mod:`.skip_blocks`) is the one rule SGM uses too.
"""

from __future__ import annotations

from lit_advgame.models.cifar_resnet import CifarBasicBlock, CifarResNet, ZeroPadShortcut
from lit_advgame.models.densenet_small import DenseLayer, DenseNetSmall
from lit_advgame.models.normalize import Normalize, NormalizedModel, find_normalizer
from lit_advgame.models.preact_resnet import PreActBlock, PreActResNet18
from lit_advgame.models.registry import (
    TORCHVISION_PREFIX,
    available_models,
    build_model,
    build_net,
    get_builder,
    register_model,
)
from lit_advgame.models.robustness_cifar import RobustnessBasicBlock, RobustnessBottleneck, RobustnessCifarResNet
from lit_advgame.models.robustness_loader import extract_robustness_state, load_robustness_checkpoint
from lit_advgame.models.skip_blocks import TORCHVISION_SKIP_BLOCK_TYPES, is_skip_block
from lit_advgame.models.small_nets import MLP, LeNet5, SmallCNN, VGGSmall
from lit_advgame.models.torchvision_models import (
    ALLOW_DOWNLOAD_ENV,
    PretrainedWeightsNotFoundError,
    TorchvisionWeights,
    allow_downloads_by_default,
    downloads_allowed,
    torchvision_architectures,
    torchvision_weights,
    wide_resnet50,
)
from lit_advgame.models.weights import UnsafeCheckpointError, load_weights_into_net, read_checkpoint

SKIP_BLOCK_TYPES: tuple[type, ...] = (
    CifarBasicBlock,
    PreActBlock,
    DenseLayer,
    RobustnessBasicBlock,
    RobustnessBottleneck,
)


__all__ = [
    "ALLOW_DOWNLOAD_ENV",
    "CifarBasicBlock",
    "CifarResNet",
    "DenseLayer",
    "DenseNetSmall",
    "LeNet5",
    "MLP",
    "Normalize",
    "NormalizedModel",
    "PreActBlock",
    "PreActResNet18",
    "PretrainedWeightsNotFoundError",
    "RobustnessBasicBlock",
    "RobustnessBottleneck",
    "RobustnessCifarResNet",
    "SKIP_BLOCK_TYPES",
    "SmallCNN",
    "TORCHVISION_PREFIX",
    "TORCHVISION_SKIP_BLOCK_TYPES",
    "TorchvisionWeights",
    "UnsafeCheckpointError",
    "VGGSmall",
    "ZeroPadShortcut",
    "allow_downloads_by_default",
    "available_models",
    "build_model",
    "build_net",
    "downloads_allowed",
    "extract_robustness_state",
    "find_normalizer",
    "get_builder",
    "is_skip_block",
    "load_robustness_checkpoint",
    "load_weights_into_net",
    "read_checkpoint",
    "register_model",
    "torchvision_architectures",
    "torchvision_weights",
    "wide_resnet50",
]
