"""CIFAR ResNets with exactly the parameter names of MadryLab ``robustness``'s CIFAR models.

``robustness/cifar_models/resnet.py`` (the kuangliu/pytorch-cifar ResNet) is *not*
torchvision's: 3x3 stride-1 stem conv (64) + BN + ReLU and no max-pool; four stages (widths 64,
128, 256, 512, times ``wm``; strides 1, 2, 2, 2) of BasicBlocks (ResNet-18/34) or Bottlenecks
(ResNet-50/101/152, expansion 4); projection shortcuts ``shortcut.0`` (1x1 conv) and
``shortcut.1`` (BN); ``avg_pool2d(out, 4)`` and a head named ``linear``. Its released CIFAR-10
checkpoints (``cifar_nat.pt``, ``cifar_l2_0_5.pt``, ``cifar_linf_8.pt``, ... all ResNet-50)
therefore load strictly into :class:`RobustnessCifarResNet` after the prefix ``module.model.``
is removed (:func:`~lit_advgame.models.robustness_loader.load_robustness_checkpoint`).

Differences that do not touch the weights: the final pooling is global (adaptive) average
pooling, identical to ``avg_pool2d(out, 4)`` at 32x32 inputs; ReLUs are ``nn.ReLU`` modules
instead of ``F.relu`` (so hooks can be attached); ``robustness``'s ``with_latent`` /
``fake_relu`` forward options are not provided.
"""

from __future__ import annotations

import torch
from torch import nn
from typing_extensions import override

from lit_advgame.models.catalog import register_model
from lit_advgame.models.cifar_resnet import BasicResidualBlock
from lit_advgame.utils.checks import check_positive


def _projection(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False), nn.BatchNorm2d(out_planes))


class RobustnessBasicBlock(BasicResidualBlock):
    """:class:`~lit_advgame.models.cifar_resnet.BasicResidualBlock` with ``robustness``'s ``shortcut``
    (identity, or a 1×1 projection where the shape changes): ``relu(bn2(conv2(relu1(bn1(conv1(x))))) + shortcut(x))``.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__(in_planes, planes, stride)
        self.shortcut = _projection(in_planes, planes, stride)
        self.relu = nn.ReLU()

    @override
    def skip(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x)


class RobustnessBottleneck(nn.Module):
    """``relu(bn3(conv3(relu2(bn2(conv2(relu1(bn1(conv1(x)))))))) + shortcut(x))``, expansion 4.

    ReLUs: ``relu1`` and ``relu2`` are on the residual branch; ``relu`` follows the addition.
    """

    is_skip_block = True
    branch_relus = ("relu1", "relu2")
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = self.expansion * planes
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = _projection(in_planes, out_planes, stride)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


class RobustnessCifarResNet(nn.Module):
    """kuangliu-style CIFAR ResNet with ``robustness``'s parameter names (see module docstring)."""

    def __init__(
        self,
        block: type[RobustnessBasicBlock] | type[RobustnessBottleneck],
        num_blocks: tuple[int, int, int, int],
        num_classes: int = 10,
        in_channels: int = 3,
        wm: float = 1.0,
    ) -> None:
        super().__init__()
        check_positive(wm, "wm")
        widths = [int(w * wm) for w in (64, 128, 256, 512)]
        if min(widths) < 1:
            raise ValueError(f"wm={wm} makes a stage width zero")
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        in_planes = widths[0]
        stages = []
        for i, (planes, n) in enumerate(zip(widths, num_blocks)):
            blocks = []
            for j in range(n):
                blocks.append(block(in_planes, planes, 2 if (i > 0 and j == 0) else 1))
                in_planes = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(widths[3] * block.expansion, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.linear(torch.flatten(self.avgpool(x), 1))


ROBUSTNESS_CIFAR_ARCHS = {
    "resnet18": (RobustnessBasicBlock, (2, 2, 2, 2)),
    "resnet34": (RobustnessBasicBlock, (3, 4, 6, 3)),
    "resnet50": (RobustnessBottleneck, (3, 4, 6, 3)),
    "resnet101": (RobustnessBottleneck, (3, 4, 23, 3)),
    "resnet152": (RobustnessBottleneck, (3, 8, 36, 3)),
}


def _register(arch: str) -> None:
    block, num_blocks = ROBUSTNESS_CIFAR_ARCHS[arch]

    @register_model(f"robustness_cifar:{arch}")
    def builder(
        num_classes: int, in_channels: int, input_size: tuple[int, int] | None, wm: float = 1.0
    ) -> RobustnessCifarResNet:
        return RobustnessCifarResNet(block, num_blocks, num_classes, in_channels, wm=wm)

    builder.__doc__ = f"MadryLab robustness CIFAR {arch} (kuangliu layout, head ``linear``)."
    builder.__name__ = f"robustness_cifar_{arch}"


for _arch in ROBUSTNESS_CIFAR_ARCHS:
    _register(_arch)
