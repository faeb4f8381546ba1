"""torchvision classification architectures by name, their pretrained weights by name, and the Salman et al.
(2020) wide ResNets.

``"torchvision:<arch>"`` builds ``torchvision.models.get_model(arch, weights=None,
num_classes=...)`` for any ``arch`` in ``torchvision.models.list_models(module=torchvision.models)``
(classification models only). The stems are not adapted, so ``in_channels`` must be 3
(repeat grayscale images to 3 channels, or use a native architecture such as ``resnet20``).
``googlenet`` / ``inception_v3`` are built without auxiliary heads (``aux_logits=False``) so that
they return plain logits in training mode; pass ``aux_logits=True`` to override.

Pretrained weights by name: ``build_model("torchvision:resnet34", weights="IMAGENET1K_V1")`` (or ``"DEFAULT"``,
or the full ``"ResNet34_Weights.IMAGENET1K_V1"``) uses torchvision's weight enum (:func:`torchvision_weights`):
the network is built by torchvision's own builder with those weights, the normalization is the enum's
transforms' mean/std and the class names its ``categories``. The file comes from torchvision's cache,
``torch.hub.get_dir()/checkpoints/<file name of the enum's url>`` (``$TORCH_HOME/hub/checkpoints``); a missing
file is downloaded only where downloads are allowed (:func:`downloads_allowed`: an explicit
``allow_download``, else the environment variable ``LIT_ADVGAME_ALLOW_DOWNLOAD``, else allowed inside the
``lit-advgame`` command and refused elsewhere), otherwise :class:`PretrainedWeightsNotFoundError` says which
file was expected where and how to fetch it. A weights name that is not the architecture's is an error listing
its names; any other string is a local file (``build_model(..., weights=path)``).

``wide_resnet50_3`` ... ``wide_resnet50_6`` are the wider ResNet-50s of Salman et al., "Do
Adversarially Robust ImageNet Models Transfer Better?" (NeurIPS 2020), as MadryLab
``robustness`` builds them: ``torchvision.models.resnet.ResNet(Bottleneck, [3, 4, 6, 3],
width_per_group=64 * k)``; their parameter names are torchvision's.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import functools
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn
from torchvision.models import WeightsEnum
from torchvision.models.resnet import Bottleneck, ResNet

from lit_advgame.models.catalog import register_model
from lit_advgame.models.weights import read_checkpoint

ALLOW_DOWNLOAD_ENV = "LIT_ADVGAME_ALLOW_DOWNLOAD"
"""Environment variable: 1/true/yes allows downloading missing torchvision weights, 0/false/no forbids it."""

_DOWNLOADS_BY_DEFAULT: contextvars.ContextVar[bool] = contextvars.ContextVar("lit_advgame_downloads", default=False)
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_WEIGHTS_NAME = re.compile(r"([A-Za-z0-9_]+_Weights\.)?[A-Z][A-Z0-9_]*")


def downloads_allowed(explicit: bool | None = None) -> bool:
    """Whether missing pretrained weights may be downloaded: ``explicit`` when given, else the environment
    variable ``LIT_ADVGAME_ALLOW_DOWNLOAD``, else the default -- allowed inside :func:`allow_downloads_by_default`
    (the ``lit-advgame`` command), refused elsewhere (library calls, tests)."""
    if explicit is not None:
        return bool(explicit)
    value = os.environ.get(ALLOW_DOWNLOAD_ENV, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    if value:
        raise ValueError(f"{ALLOW_DOWNLOAD_ENV}={value!r}: use 1 (allow downloads) or 0 (forbid them)")
    return _DOWNLOADS_BY_DEFAULT.get()


@contextlib.contextmanager
def allow_downloads_by_default(allowed: bool = True) -> Iterator[None]:
    """Within the block, :func:`downloads_allowed` defaults to ``allowed`` (the command line's default)."""
    token = _DOWNLOADS_BY_DEFAULT.set(bool(allowed))
    try:
        yield
    finally:
        _DOWNLOADS_BY_DEFAULT.reset(token)


class PretrainedWeightsNotFoundError(FileNotFoundError):
    """Pretrained torchvision weights are not in torchvision's cache and may not be downloaded."""


@dataclass(frozen=True)
class TorchvisionWeights:
    """One of torchvision's weight enums for ``arch``: where its file is cached and what it was trained with.

    Attributes:
        arch: the torchvision architecture name.
        enum: the ``WeightsEnum`` member (e.g. ``ResNet34_Weights.IMAGENET1K_V1``).
    """

    arch: str
    enum: WeightsEnum

    @property
    def name(self) -> str:
        """The full name, e.g. ``"ResNet34_Weights.IMAGENET1K_V1"``."""
        return f"{type(self.enum).__name__}.{self.enum.name}"

    @property
    def url(self) -> str:
        return self.enum.url

    @property
    def file(self) -> Path:
        """``torch.hub.get_dir()/checkpoints/<file name of the url>``: where torchvision caches (and looks for) it."""
        return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(self.url).path)

    @property
    def categories(self) -> list[str]:
        return list(self.enum.meta["categories"])

    @property
    def normalization(self) -> tuple[list[float], list[float]]:
        """The mean/std of the enum's inference transforms."""
        preset = self.enum.transforms()
        return [float(v) for v in preset.mean], [float(v) for v in preset.std]

    @property
    def input_size(self) -> int | None:
        """The side of the enum's center crop (224 for most, 299 for Inception-v3), when it has one."""
        crop = getattr(self.enum.transforms(), "crop_size", None)
        return int(crop[0]) if crop else None


def torchvision_weights(arch: str, weights: str) -> TorchvisionWeights | None:
    """The weight enum of ``torchvision:<arch>`` named ``weights`` (``"DEFAULT"``, a member such as
    ``"IMAGENET1K_V1"`` or the full ``"ResNet34_Weights.IMAGENET1K_V1"``), or ``None`` when ``weights`` is a
    file path (an existing file, or a string that does not look like a weights name).

    >>> torchvision_weights("resnet34", "DEFAULT").name
    'ResNet34_Weights.IMAGENET1K_V1'
    >>> torchvision_weights("resnet34", "weights/resnet34.pt") is None
    True
    """
    if Path(weights).is_file() or not _WEIGHTS_NAME.fullmatch(weights):
        return None
    try:
        enum_class = torchvision.models.get_model_weights(arch)
    except (ValueError, KeyError):
        enum_class = None
    member = weights.split(".")[-1]
    prefix = weights.split(".")[0] if "." in weights else None
    if enum_class is not None and member in enum_class.__members__ and prefix in (None, enum_class.__name__):
        return TorchvisionWeights(arch, enum_class[member])
    names = ", ".join(enum_class.__members__) if enum_class is not None else "none"
    raise ValueError(
        f"torchvision:{arch} has no pretrained weights named {weights!r}; its weights are: {names} "
        f"(torchvision.models.get_model_weights({arch!r})); or give a local weights file"
    )


def _fetch_instructions(pretrained: TorchvisionWeights) -> str:
    return (
        f"To get it: set {ALLOW_DOWNLOAD_ENV}=1 (the lit-advgame command downloads by default), or on a machine "
        f"with network run  python -c \"import torchvision; torchvision.models.get_model('{pretrained.arch}', "
        f"weights='{pretrained.enum.name}')\"  and copy {pretrained.file.name} into {pretrained.file.parent}, or "
        f"download {pretrained.url} to {pretrained.file}; or point TORCH_HOME at the folder whose hub/checkpoints "
        "holds it."
    )


def build_pretrained_torchvision(
    pretrained: TorchvisionWeights,
    num_classes: int,
    in_channels: int,
    /,
    *,
    allow_download: bool | None = None,
    trusted: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """``torchvision.models.get_model(arch, weights=enum, **kwargs)``: the network with torchvision's pretrained
    weights, from torchvision's cache (see the module docstring for downloads).

    A cached file is first read with ``torch.load(weights_only=True)`` (:func:`read_checkpoint`; ``trusted``
    allows the unsafe fallback), since torchvision's loader unpickles it without that guard.
    ``num_classes`` must be the number of the enum's categories (the head is not replaced).
    """
    arch = pretrained.arch
    if in_channels != 3:
        raise ValueError(f"torchvision:{arch} weights {pretrained.name} take 3-channel input; got {in_channels}")
    classes = len(pretrained.categories)
    if num_classes != classes:
        raise ValueError(
            f"torchvision:{arch} weights {pretrained.name} have {classes} classes (their categories) but "
            f"num_classes={num_classes}; use data with those classes (ImageNet's 1000: for an image folder with a "
            "subset of them give its class_index file) or train from scratch"
        )
    _check_kwargs(arch, kwargs)
    if not pretrained.file.is_file():
        if not downloads_allowed(allow_download):
            raise PretrainedWeightsNotFoundError(
                f"torchvision weights {pretrained.name} for torchvision:{arch} are not in torchvision's cache: "
                f"expected {pretrained.file} (torch.hub.get_dir()/checkpoints; TORCH_HOME="
                f"{os.environ.get('TORCH_HOME', '<unset>')}), and downloads are not allowed here "
                f"(allow_download / {ALLOW_DOWNLOAD_ENV}). " + _fetch_instructions(pretrained)
            )
    else:
        read_checkpoint(pretrained.file, trusted=trusted, what=f"torchvision weights file of {pretrained.name}")
    strip_aux = arch == "inception_v3" and not kwargs.pop("aux_logits", False)
    try:
        net = torchvision.models.get_model(arch, weights=pretrained.enum, **kwargs)
    except (OSError, RuntimeError) as err:  # a failed download (offline) or a file that does not fit
        raise PretrainedWeightsNotFoundError(
            f"torchvision weights {pretrained.name} could not be loaded from {pretrained.file}: "
            f"{type(err).__name__}: {err}. " + _fetch_instructions(pretrained)
        ) from err
    if strip_aux:  # as torchvision's inception_v3(aux_logits=False) does after loading
        net.aux_logits, net.AuxLogits = False, None
    return net


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
    _check_kwargs(arch, kwargs)
    if arch in ("googlenet", "inception_v3"):
        kwargs.setdefault("aux_logits", False)
        kwargs.setdefault("init_weights", True)
    try:
        return torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **kwargs)
    except TypeError as err:
        raise TypeError(f"torchvision:{arch} rejected option(s) {sorted(kwargs)}: {err}") from err


def _check_kwargs(arch: str, kwargs: dict[str, Any]) -> None:
    for key in ("weights", "pretrained", "weights_backbone"):
        if key in kwargs:
            raise ValueError(
                f"torchvision:{arch}: option {key!r} is not allowed (nothing is downloaded through architecture "
                "options); give the weights by name or file: build_model(..., weights='IMAGENET1K_V1' | 'DEFAULT' | "
                "path), in a config the model's `weights`"
            )


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
