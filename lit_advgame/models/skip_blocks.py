"""Which modules are residual/dense *skip blocks* (the candidates of SGM, the skip gradient method).

One rule for the whole package (:func:`is_skip_block`, used by :mod:`lit_advgame.models` and by
:mod:`lit_advgame.attacks.transforms.skip_gradient`): torchvision's ``BasicBlock``,
``Bottleneck`` and ``_DenseLayer``, and any module whose attribute ``is_skip_block`` is ``True``,
looked up on the instance first and then on its class (so ``block.is_skip_block = True`` tags one
instance, and an instance attribute ``False`` opts one block of a tagged class out).

Whether a skip block's skip connection is an *identity* (the blocks SGM acts on) is decided by
behaviour when the block runs, not here: see
:func:`lit_advgame.attacks.transforms.skip_gradient.skip_kind`.
"""

from __future__ import annotations

from torchvision.models.densenet import _DenseLayer
from torchvision.models.resnet import BasicBlock as _TVBasicBlock
from torchvision.models.resnet import Bottleneck as _TVBottleneck

TORCHVISION_SKIP_BLOCK_TYPES: tuple[type, ...] = (_TVBasicBlock, _TVBottleneck, _DenseLayer)
#: torchvision's dense layer returns only its new features: its skip (the concatenation) is in ``_DenseBlock``
TORCHVISION_DENSE_LAYER_TYPES: tuple[type, ...] = (_DenseLayer,)


def is_skip_block(module: object) -> bool:
    """True for torchvision ResNet/DenseNet blocks and modules whose ``is_skip_block`` is ``True``.

    The attribute is looked up on the instance, then on its class (an instance attribute wins).
    """
    return isinstance(module, TORCHVISION_SKIP_BLOCK_TYPES) or getattr(module, "is_skip_block", False) is True
