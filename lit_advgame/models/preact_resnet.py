"""Pre-activation ResNet-18 (He et al., "Identity Mappings in Deep Residual Networks", ECCV 2016).

CIFAR layout as in kuangliu/pytorch-cifar and the adversarial-training literature (e.g. Rice
et al. 2020): a 3x3 stride-1 stem conv (no BN/ReLU, no max-pool), four stages of two
:class:`PreActBlock` (widths w, 2w, 4w, 8w with w=64, strides 1, 2, 2, 2), then the final
BN-ReLU that full pre-activation requires (He et al. 2016, Fig. 4e), global average pooling and
a linear head named ``linear``. Parameter names follow kuangliu's (``conv1``, ``layer1..4``,
``bn1``/``conv1``/``bn2``/``conv2``/``shortcut.0`` in blocks) plus ``bn`` for the final BN.
``width`` scales all stages (``width=8`` makes a tiny model for tests).
"""

from __future__ import annotations

import torch
from torch import nn

from lit_advgame.models.catalog import register_model
from lit_advgame.utils.checks import check_int


class PreActBlock(nn.Module):
    """``out = conv2(relu2(bn2(conv1(relu1(bn1(x)))))) + shortcut``.

    The shortcut is ``x`` itself, or a 1x1 strided conv of ``relu1(bn1(x))`` when the shape
    changes. ReLUs: ``relu2`` is on the residual branch only; ``relu1`` is the pre-activation,
    on the residual branch for identity-shortcut blocks and shared with the projection shortcut
    otherwise. Both are non-inplace ``nn.ReLU`` modules, so backward hooks can be attached.
    """

    is_skip_block = True
    branch_relus = ("relu2",)
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu1(self.bn1(x))
        identity = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv2(self.relu2(self.bn2(self.conv1(pre))))
        return out + identity


class PreActResNet18(nn.Module):
    """Pre-activation ResNet-18 for small images (see the module docstring)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 64) -> None:
        super().__init__()
        check_int(width, "width", minimum=1)
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        in_planes = width
        stages = []
        for i, planes in enumerate((width, 2 * width, 4 * width, 8 * width)):
            first_stride = 1 if i == 0 else 2
            blocks = [PreActBlock(in_planes, planes, first_stride), PreActBlock(planes, planes, 1)]
            in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn = nn.BatchNorm2d(8 * width)
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(8 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.relu(self.bn(x))
        return self.linear(torch.flatten(self.avgpool(x), 1))


@register_model("preact_resnet18")
def preact_resnet18(
    num_classes: int, in_channels: int, input_size: tuple[int, int] | None, width: int = 64
) -> PreActResNet18:
    return PreActResNet18(num_classes, in_channels, width=width)
