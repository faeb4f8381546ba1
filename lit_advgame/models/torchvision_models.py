"""torchvision classification architectures by name, and the Salman et al. (2020) wide ResNets.

``"torchvision:<arch>"`` builds ``torchvision.models.get_model(arch, weights=None,
num_classes=...)`` for any ``arch`` in ``torchvision.models.list_models(module=torchvision.models)``
(classification models only). Weights are never downloaded: pass a local file to
``build_model(..., weights=path)``. The stems are not adapted, so ``in_channels`` must be 3
(repeat grayscale images to 3 channels, or use a native architecture such as ``resnet20``).
``googlenet`` / ``inception_v3`` are built without auxiliary heads (``aux_logits=False``) so that
they return plain logits in training mode; pass ``aux_logits=True`` to override.

``wide_resnet50_3`` ... ``wide_resnet50_6`` are the wider ResNet-50s of Salman et al., "Do
Adversarially Robust ImageNet Models Transfer Better?" (NeurIPS 2020), as MadryLab
``robustness`` builds them: ``torchvision.models.resnet.ResNet(Bottleneck, [3, 4, 6, 3],
width_per_group=64 * k)``; their parameter names are torchvision's.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable
from typing import Any

import torchvision
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

from lit_advgame.models.catalog import register_model


@functools.lru_cache(maxsize=1)
def _architectures() -> tuple[str, ...]:
    return tuple(sorted(torchvision.models.list_models(module=torchvision.models)))


def torchvision_architectures() -> list[str]:
    """Names of torchvision's classification architectures."""
    return list(_architectures())


def build_torchvision(
    arch: str, num_classes: int, in_channels: int, input_size: tuple[int, int] | None, **kwargs: Any
) -> nn.Module:
    """``torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **kwargs)``."""
    if arch not in _architectures():
        close = difflib.get_close_matches(arch, _architectures(), n=3)
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        raise ValueError(
            f"unknown torchvision architecture {arch!r}{hint}; choose one of "
            f"torchvision.models.list_models(module=torchvision.models): {', '.join(_architectures())}"
        )
    if in_channels != 3:
        raise ValueError(
            f"torchvision:{arch} takes 3-channel input (its stem is not adapted); got in_channels={in_channels}. "
            f"Repeat grayscale images to 3 channels or use a native architecture (e.g. 'resnet20', 'small_cnn')"
        )
    for key in ("weights", "pretrained", "weights_backbone"):
        if key in kwargs:
            raise ValueError(
                f"torchvision:{arch}: option {key!r} is not allowed (nothing is downloaded); "
                f"pass a local file to build_model(..., weights=path) instead"
            )
    if arch in ("googlenet", "inception_v3"):
        kwargs.setdefault("aux_logits", False)
        kwargs.setdefault("init_weights", True)
    try:
        return torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **kwargs)
    except TypeError as err:
        raise TypeError(f"torchvision:{arch} rejected option(s) {sorted(kwargs)}: {err}") from err


def torchvision_builder(arch: str) -> Callable[..., nn.Module]:
    """A registry-style builder for ``torchvision:<arch>`` (the name is checked at once)."""
    if arch not in _architectures():
        build_torchvision(arch, 2, 3, None)  # raises the unknown-architecture error

    def builder(num_classes: int, in_channels: int, input_size: tuple[int, int] | None, **kwargs: Any) -> nn.Module:
        return build_torchvision(arch, num_classes, in_channels, input_size, **kwargs)

    builder.__name__ = f"torchvision_{arch}"
    return builder


def wide_resnet50(k: int, num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """Wide ResNet-50 with bottleneck width ``64 * k`` (``k = 2`` is torchvision's ``wide_resnet50_2``)."""
    if in_channels != 3:
        raise ValueError(f"wide_resnet50_{k} takes 3-channel input; got in_channels={in_channels}")
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes=num_classes, width_per_group=64 * k)


def _register_wide(k: int) -> None:
    @register_model(f"wide_resnet50_{k}")
    def builder(num_classes: int, in_channels: int, input_size: tuple[int, int] | None) -> ResNet:
        return wide_resnet50(k, num_classes, in_channels)

    builder.__doc__ = f"Salman et al. (2020) wide ResNet-50 x{k} (torchvision parameter names)."
    builder.__name__ = f"wide_resnet50_{k}"


for _k in (3, 4, 5, 6):
    _register_wide(_k)
