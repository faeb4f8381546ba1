"""Small plain (skip-free) classifiers for digits/MNIST-scale inputs (16x16 to 32x32).

Four genuinely different families, cheap enough to train on CPU, so that they can serve as
source and target architectures of transfer experiments:

* :class:`SmallCNN`: three 3x3 conv layers, two max-pools, adaptive average pooling.
* :class:`MLP`: fully connected network on the flattened image.
* :class:`LeNet5`: LeNet-5 (LeCun et al. 1998) with ReLU and max-pooling, made size-adaptive.
* :class:`VGGSmall`: VGG-style (Simonyan & Zisserman 2015) 3x3 conv + BatchNorm stack.

All take standardised input; :func:`~lit_advgame.models.registry.build_model` adds the
normalization layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lit_advgame.models.catalog import register_model
from lit_advgame.utils.checks import check_int


def _check_min_size(name: str, input_size: tuple[int, int] | None, minimum: int) -> None:
    if input_size is not None and min(input_size) < minimum:
        raise ValueError(f"{name} needs inputs of at least {minimum}x{minimum}; got input_size={input_size}")


class SmallCNN(nn.Module):
    """conv(w)-ReLU-pool, conv(2w)-ReLU-pool, conv(2w)-ReLU, adaptive avg-pool to 2x2, linear.

    ``width=32`` gives about 56k parameters for 10 classes; works for any input >= 8x8. ``dropout > 0`` adds
    ``nn.Dropout(dropout)`` before the linear layer (``0``, the default: no dropout layer at all).
    """

    def __init__(self, num_classes: int, in_channels: int = 1, width: int = 32, dropout: float = 0.0) -> None:
        super().__init__()
        check_int(width, "width", minimum=1)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a probability in [0, 1); got {dropout!r}")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.dropout = nn.Dropout(float(dropout)) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(2 * width * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(torch.flatten(self.pool(self.features(x)), 1)))


class MLP(nn.Module):
    """Flatten, then ``Linear-ReLU`` per hidden size, then a linear classifier."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        input_size: tuple[int, int],
        hidden_sizes: Sequence[int] = (256, 128),
    ) -> None:
        super().__init__()
        hidden = list(hidden_sizes)
        for i, h in enumerate(hidden):
            check_int(h, f"hidden_sizes[{i}]", minimum=1)
        self.input_shape = (in_channels, *input_size)
        dims = [in_channels * input_size[0] * input_size[1], *hidden]
        layers: list[nn.Module] = []
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(d_in, d_out), nn.ReLU()]
        layers.append(nn.Linear(dims[-1], num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"MLP built for inputs of shape (B, {', '.join(map(str, self.input_shape))}); got {tuple(x.shape)}"
            )
        return self.layers(torch.flatten(x, 1))


class LeNet5(nn.Module):
    """LeNet-5 style: conv5x5(6)-ReLU-pool, conv5x5(16)-ReLU-pool, adaptive pool to 4x4, 120-84-C.

    Both convolutions are padded (``padding=2``) and an adaptive average pool fixes the
    flattened size, so 16x16, 28x28 and 32x32 inputs (anything >= 8x8) all work.
    """

    def __init__(self, num_classes: int, in_channels: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4),
        )
        self.classifier = nn.Sequential(
            nn.Linear(16 * 4 * 4, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class VGGSmall(nn.Module):
    """VGG-style: three stages of two conv3x3-BN-ReLU layers (widths w, 2w, 4w), each followed
    by 2x2 max-pooling; global average pooling and a linear classifier.

    ``width=16`` gives about 72k parameters; works for inputs >= 8x8.
    """

    def __init__(self, num_classes: int, in_channels: int = 1, width: int = 16) -> None:
        super().__init__()
        check_int(width, "width", minimum=1)
        layers: list[nn.Module] = []
        c_in = in_channels
        for c_out in (width, 2 * width, 4 * width):
            for _ in range(2):
                layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
                c_in = c_out
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@register_model("small_cnn")
def small_cnn(
    num_classes: int, in_channels: int, input_size: tuple[int, int] | None, width: int = 32, dropout: float = 0.0
) -> SmallCNN:
    _check_min_size("small_cnn", input_size, 8)
    return SmallCNN(num_classes, in_channels, width=width, dropout=dropout)


@register_model("mlp")
def mlp(
    num_classes: int,
    in_channels: int,
    input_size: tuple[int, int] | None,
    hidden_sizes: Sequence[int] = (256, 128),
) -> MLP:
    if input_size is None:
        raise ValueError("model 'mlp' needs input_size=(H, W) to size its first layer")
    return MLP(num_classes, in_channels, input_size, hidden_sizes=hidden_sizes)


@register_model("lenet")
def lenet(num_classes: int, in_channels: int, input_size: tuple[int, int] | None) -> LeNet5:
    _check_min_size("lenet", input_size, 8)
    return LeNet5(num_classes, in_channels)


@register_model("vgg_small")
def vgg_small(num_classes: int, in_channels: int, input_size: tuple[int, int] | None, width: int = 16) -> VGGSmall:
    _check_min_size("vgg_small", input_size, 8)
    return VGGSmall(num_classes, in_channels, width=width)
