"""CIFAR ResNets of He et al. (CVPR 2016, Sec. 4.2): depth 6n+2, widths 16/32/64, BasicBlocks.

This is the base model of TRS (Yang et al., NeurIPS 2021: "we employ Resnet20 ... as the ensemble
base model", on both MNIST and CIFAR-10). The TRS repository's ``cifar_resnet`` (the bearpaw /
Wei Yang implementation, also used by Cohen et al. 2019) uses

* a 3x3 stem conv(16)-BN-ReLU, three stages of n BasicBlocks (strides 1, 2, 2),
* **option-B shortcuts**: a 1x1 strided conv + BN projection when the shape changes,
  identity otherwise,
* average pooling over the final 8x8 map (7x7 for its 28x28 MNIST variant) and a linear head,
* He-normal initialisation of the convs (std sqrt(2 / (k*k*out_channels)), i.e. fan-out).

We follow it exactly, with the same parameter names (``conv1``, ``bn1``, ``layer1..3``,
``downsample.0/1``, ``fc``) so its checkpoints load, except that the final pooling is adaptive
(global) average pooling, which equals AvgPool(8) at 32x32 and AvgPool(7) at 28x28 and also
works at 16x16. ``shortcut="A"`` gives the parameter-free option A of the paper (strided
identity zero-padded with extra channels) instead. ResNet-20 has ~0.27M parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from typing_extensions import override

from lit_advgame.models.catalog import register_model
from lit_advgame.utils.checks import check_choice, check_int
from lit_advgame.vocabulary import RESNET_SHORTCUTS, ResNetShortcut

CIFAR_RESNET_DEPTHS = (8, 14, 20, 32, 44, 56, 110)


class ZeroPadShortcut(nn.Module):
    """Option-A shortcut (He et al. 2016): subsample by ``stride``, append zero channels."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.extra = planes - in_planes
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra))


class BasicResidualBlock(nn.Module):
    """The basic block of He et al. (2016): ``relu(bn2(conv2(relu1(bn1(conv1(x))))) + skip(x))``.

    ReLUs: ``relu1`` is on the residual branch only; ``relu`` (set by the subclass, after its
    shortcut) follows the addition (it acts on the sum of both paths). Both are separate,
    non-inplace ``nn.ReLU`` modules so that backward hooks (e.g. SGM's gradient decay on the
    residual branch) can be attached. Subclasses name the shortcut as their checkpoint format does
    and implement :meth:`skip`.
    """

    is_skip_block = True
    branch_relus = ("relu1",)
    expansion = 1
    relu: nn.Module

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)

    def skip(self, x: torch.Tensor) -> torch.Tensor:
        """The shortcut path."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu(out + self.skip(x))


class CifarBasicBlock(BasicResidualBlock):
    """:class:`BasicResidualBlock` with the identity shortcut, or where the shape changes a 1×1
    projection (``shortcut="B"``, as ``downsample``) or zero padding (``"A"``)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: ResNetShortcut = "B") -> None:
        super().__init__(in_planes, planes, stride)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            if shortcut == "B":
                self.downsample = nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
                )
            else:
                self.downsample = ZeroPadShortcut(in_planes, planes, stride)
        self.relu = nn.ReLU()

    @override
    def skip(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.downsample is None else self.downsample(x)


class CifarResNet(nn.Module):
    """He et al. (2016) CIFAR ResNet of depth ``6n+2`` (n BasicBlocks per stage)."""

    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 10,
        in_channels: int = 3,
        width: int = 16,
        shortcut: ResNetShortcut = "B",
    ) -> None:
        super().__init__()
        check_int(depth, "depth", minimum=8)
        if (depth - 2) % 6 != 0:
            raise ValueError(f"depth must be 6n+2 (e.g. {', '.join(map(str, CIFAR_RESNET_DEPTHS))}); got {depth}")
        check_int(width, "width", minimum=1)
        check_choice(shortcut, "shortcut", RESNET_SHORTCUTS)
        n = (depth - 2) // 6
        self.depth = depth
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        planes = [width, 2 * width, 4 * width]
        in_planes = width
        stages = []
        for i, p in enumerate(planes):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(CifarBasicBlock(in_planes, p, stride, shortcut))
                in_planes = p
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@register_model("cifar_resnet")
def cifar_resnet(
    num_classes: int,
    in_channels: int,
    input_size: tuple[int, int] | None,
    depth: int = 20,
    width: int = 16,
    shortcut: ResNetShortcut = "B",
) -> CifarResNet:
    """CIFAR ResNet with ``depth`` in 6n+2 (8, 14, 20, 32, 44, 56, 110, ...)."""
    return CifarResNet(depth, num_classes, in_channels, width=width, shortcut=shortcut)


def _register_depth(depth: int) -> None:
    @register_model(f"resnet{depth}")
    def builder(
        num_classes: int,
        in_channels: int,
        input_size: tuple[int, int] | None,
        width: int = 16,
        shortcut: ResNetShortcut = "B",
    ) -> CifarResNet:
        return CifarResNet(depth, num_classes, in_channels, width=width, shortcut=shortcut)

    builder.__doc__ = f"CIFAR ResNet-{depth} (He et al. 2016); resnet20 is the TRS base model."
    builder.__name__ = f"resnet{depth}"


for _depth in CIFAR_RESNET_DEPTHS:
    _register_depth(_depth)
