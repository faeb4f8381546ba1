"""A tiny DenseNet-BC (Huang et al., "Densely Connected Convolutional Networks", CVPR 2017).

Each :class:`DenseLayer` computes new features ``H(x)`` (BN-ReLU-conv1x1 bottleneck, then
BN-ReLU-conv3x3 producing ``growth_rate`` maps) and concatenates them to its input, so the input
reaches every later layer unchanged: the concatenation is DenseNet's skip connection (the one
SGM, Wu et al. ICLR 2020, favours on DenseNets). Dense blocks are separated by transitions
(BN-ReLU-conv1x1 with ``compression``, 2x2 average pooling); a final BN-ReLU, global average
pooling and a linear ``classifier`` follow. With the defaults (growth 12, three blocks of four
layers) it has about 0.1M parameters and works for inputs >= 8x8.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lit_advgame.models.catalog import register_model
from lit_advgame.utils.checks import check_int, check_positive


class DenseLayer(nn.Module):
    """``cat([x, conv2(relu2(norm2(conv1(relu1(norm1(x))))))], dim=1)``.

    ReLUs: ``relu1`` and ``relu2`` are both on the new-feature (non-skip) branch; the skip path
    (``x`` itself) has none. Non-inplace ``nn.ReLU`` modules, so backward hooks can be attached.
    """

    is_skip_block = True
    branch_relus = ("relu1", "relu2")

    def __init__(self, in_channels: int, growth_rate: int, bn_size: int = 4) -> None:
        super().__init__()
        inner = bn_size * growth_rate
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_channels, inner, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(inner)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(inner, growth_rate, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        new = self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))
        return torch.cat([x, new], dim=1)


class Transition(nn.Sequential):
    """BN-ReLU-conv1x1 (channel compression) then 2x2 average pooling."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.BatchNorm2d(in_channels),
            nn.ReLU(),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.AvgPool2d(2),
        )


class DenseNetSmall(nn.Module):
    """Tiny DenseNet-BC for small images (see the module docstring)."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        growth_rate: int = 12,
        block_layers: Sequence[int] = (4, 4, 4),
        bn_size: int = 4,
        compression: float = 0.5,
    ) -> None:
        super().__init__()
        check_int(growth_rate, "growth_rate", minimum=1)
        check_int(bn_size, "bn_size", minimum=1)
        check_positive(compression, "compression")
        if compression > 1:
            raise ValueError(f"compression must be in (0, 1]; got {compression}")
        blocks = list(block_layers)
        if not blocks:
            raise ValueError("block_layers must list at least one dense block")
        for i, n in enumerate(blocks):
            check_int(n, f"block_layers[{i}]", minimum=1)
        channels = 2 * growth_rate
        features: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)]
        for i, n in enumerate(blocks):
            for _ in range(n):
                features.append(DenseLayer(channels, growth_rate, bn_size))
                channels += growth_rate
            if i < len(blocks) - 1:
                out = max(1, int(channels * compression))
                features.append(Transition(channels, out))
                channels = out
        features += [nn.BatchNorm2d(channels), nn.ReLU()]
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


@register_model("densenet_small")
def densenet_small(
    num_classes: int,
    in_channels: int,
    input_size: tuple[int, int] | None,
    growth_rate: int = 12,
    block_layers: Sequence[int] = (4, 4, 4),
    bn_size: int = 4,
    compression: float = 0.5,
) -> DenseNetSmall:
    if input_size is not None and min(input_size) < 2 ** (len(list(block_layers)) - 1):
        raise ValueError(
            f"densenet_small with {len(list(block_layers))} dense blocks needs larger inputs; "
            f"got input_size={input_size}"
        )
    return DenseNetSmall(num_classes, in_channels, growth_rate, block_layers, bn_size, compression)
