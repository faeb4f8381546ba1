"""Tiny models for the attack tests (12×12 RGB images, 5 classes, randomised BatchNorm statistics)."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.densenet import _DenseLayer
from torchvision.models.resnet import BasicBlock

from lit_advgame.models.normalize import NormalizedModel

NUM_CLASSES = 5
SIZE = 12


class TinySkipBlock(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + x), one shared in-place ReLU (like torchvision)."""

    is_skip_block = True

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x
        return self.relu(out)


def _randomise_batchnorm(model: nn.Module, generator: torch.Generator) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=generator))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=generator))


def _head(channels: int) -> list[nn.Module]:
    return [nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4 * channels, NUM_CLASSES)]


def make_cnn(seed: int = 0, channels: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), *_head(8)
    )
    return NormalizedModel(net, [0.5] * channels, [0.25] * channels)


def make_skip_resnet(seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=True),
        TinySkipBlock(8),
        TinySkipBlock(8),
        *_head(8),
    )
    _randomise_batchnorm(net, torch.Generator().manual_seed(seed))
    return NormalizedModel(net, [0.5] * 3, [0.25] * 3)


def make_tv_resnet(seed: int = 2) -> nn.Module:
    torch.manual_seed(seed)
    down = nn.Sequential(nn.Conv2d(8, 12, 1, stride=2, bias=False), nn.BatchNorm2d(12))
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(inplace=True),
        BasicBlock(8, 8),
        BasicBlock(8, 12, stride=2, downsample=down),
        BasicBlock(12, 12),
        *_head(12),
    )
    _randomise_batchnorm(net, torch.Generator().manual_seed(seed))
    return NormalizedModel(net, [0.5] * 3, [0.25] * 3)


def make_tv_densenet(seed: int = 3) -> nn.Module:
    torch.manual_seed(seed)

    class Concat(nn.Module):  # the dense block: concatenate each layer's new features
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList([_DenseLayer(8, 4, 2, 0.0), _DenseLayer(12, 4, 2, 0.0)])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for layer in self.layers:
                x = torch.cat([x, layer(x)], dim=1)
            return x

    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), Concat(), nn.ReLU(), *_head(16))
    _randomise_batchnorm(net, torch.Generator().manual_seed(seed))
    return NormalizedModel(net, [0.5] * 3, [0.25] * 3)
