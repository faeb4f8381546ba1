"""Model registry: build any classifier by name, wrapped so that it takes pixel-space input.

Every model returned by :func:`build_model` is a
:class:`~lit_advgame.models.normalize.NormalizedModel`: its first layer standardises the
[0, 1] input with the data's per-channel mean/std (registered buffers), then the named
network runs on the standardised image.

Names:
    * the built-in architectures registered with :func:`register_model` (see
      :func:`available_models`): ``small_cnn``, ``mlp``, ``lenet``, ``vgg_small``,
      ``cifar_resnet`` / ``resnet8`` ... ``resnet110`` (He et al. 2016 CIFAR ResNets; ``resnet20``
      is the TRS base model), ``preact_resnet18``, ``densenet_small``,
      ``robustness_cifar:resnet18|34|50|101|152`` (MadryLab ``robustness`` CIFAR ResNets with
      identical parameter names) and ``wide_resnet50_3|4|5|6`` (Salman et al. 2020 wide ResNets);
    * ``"torchvision:<arch>"`` for any torchvision classification architecture
      (``torchvision.models.list_models(module=torchvision.models)``), built with random weights, with a local
      weights file (``weights=path``) or with torchvision's pretrained weights by name (``weights="IMAGENET1K_V1"``
      or ``"DEFAULT"``; their normalization included; see :mod:`lit_advgame.models.torchvision_models` for the
      cache and downloads).

Normalization: the caller's mean/std, else those stored with the weights; a weights file that stores none is
an error unless mean/std are given or ``normalization="none"`` says the network takes raw [0, 1] pixels. A
network without weights (random init) gets the identity normalization unless mean/std are given.
"""

from __future__ import annotations

import difflib
import inspect
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

# The architecture modules register their names in the leaf ``catalog`` when imported.
import lit_advgame.models.cifar_resnet  # noqa: F401
import lit_advgame.models.densenet_small  # noqa: F401
import lit_advgame.models.preact_resnet  # noqa: F401
import lit_advgame.models.robustness_cifar  # noqa: F401
import lit_advgame.models.small_nets  # noqa: F401
from lit_advgame.models.catalog import TORCHVISION_PREFIX, Builder, register_model, registered_builder, registered_names
from lit_advgame.models.normalize import NormalizedModel
from lit_advgame.models.torchvision_models import (
    TorchvisionWeights,
    build_pretrained_torchvision,
    torchvision_architectures,
    torchvision_builder,
    torchvision_weights,
)
from lit_advgame.models.weights import load_weights_into_net
from lit_advgame.utils.checks import check_choice, check_int
from lit_advgame.vocabulary import NORMALIZATION_MODES, NormalizationMode

__all__ = [
    "TORCHVISION_PREFIX",
    "Builder",
    "available_models",
    "build_model",
    "build_net",
    "build_net_with_weights",
    "get_builder",
    "pretrained_weights",
    "register_model",
    "resolve_normalization",
    "weights_normalization",
]


def available_models(include_torchvision: bool = False) -> list[str]:
    """Sorted names accepted by :func:`build_model`.

    With ``include_torchvision`` the ``"torchvision:<arch>"`` names are listed too; they are
    always accepted whether listed or not.

    >>> {"small_cnn", "resnet20", "wide_resnet50_4"} <= set(available_models())
    True
    >>> "torchvision:resnet18" in available_models(include_torchvision=True)
    True
    """
    names = registered_names()
    if include_torchvision:
        names += [TORCHVISION_PREFIX + arch for arch in torchvision_architectures()]
    return names


def get_builder(name: str) -> Builder:
    """Return the builder registered as ``name`` (or the torchvision builder for ``torchvision:<arch>``)."""
    if not isinstance(name, str):
        raise TypeError(f"model name must be a string; got {type(name).__name__}")
    builder = registered_builder(name)
    if builder is not None:
        return builder
    if name.startswith(TORCHVISION_PREFIX):
        return torchvision_builder(name[len(TORCHVISION_PREFIX) :])
    close = difflib.get_close_matches(name, registered_names(), n=3)
    hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
    raise ValueError(
        f"unknown model name {name!r}{hint}. Available: {', '.join(registered_names())}; "
        f"or '{TORCHVISION_PREFIX}<arch>' for any torchvision classification architecture, "
        f"e.g. '{TORCHVISION_PREFIX}resnet34'"
    )


def _check_input_size(input_size: Any) -> tuple[int, int] | None:
    if input_size is None:
        return None
    if isinstance(input_size, int) and not isinstance(input_size, bool):
        input_size = (input_size, input_size)
    try:
        h, w = input_size
    except (TypeError, ValueError):
        raise ValueError(f"input_size must be None, an int or a pair (H, W); got {input_size!r}") from None
    check_int(h, "input_size[0] (height)", minimum=1)
    check_int(w, "input_size[1] (width)", minimum=1)
    return int(h), int(w)


def _check_builder_kwargs(name: str, builder: Builder, kwargs: dict[str, Any]) -> None:
    params = inspect.signature(builder).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    allowed = [p for p in params if p not in ("num_classes", "in_channels", "input_size")]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise TypeError(f"model {name!r} got unexpected option(s) {unknown}; its options are: {allowed or 'none'}")


def build_net(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    input_size: int | tuple[int, int] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build the bare network ``name`` (no normalization layer), validating the arguments."""
    builder = get_builder(name)
    check_int(num_classes, "num_classes", minimum=2)
    check_int(in_channels, "in_channels", minimum=1)
    size = _check_input_size(input_size)
    _check_builder_kwargs(name, builder, kwargs)
    return builder(num_classes=num_classes, in_channels=in_channels, input_size=size, **kwargs)


def resolve_normalization(
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    in_channels: int,
    file_mean: Sequence[float] | None = None,
    file_std: Sequence[float] | None = None,
    source: str = "the weights file",
) -> tuple[list[float], list[float]]:
    """Pick the normalization constants: the caller's, else the file's, else identity (0s and 1s).

    Raises ``ValueError`` when only one of mean/std is given, when a length differs from
    ``in_channels``, or when the caller's constants disagree with those stored in the file.
    """
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std (one value per channel) or neither")
    if (file_mean is None) != (file_std is None):
        file_mean = file_std = None
    if mean is not None:
        mean_l = [float(v) for v in torch.as_tensor(mean, dtype=torch.float64).flatten()]
        std_l = [float(v) for v in torch.as_tensor(std, dtype=torch.float64).flatten()]
        if file_mean is not None:
            fm = torch.as_tensor(file_mean, dtype=torch.float64).flatten()
            fs = torch.as_tensor(file_std, dtype=torch.float64).flatten()
            same = (
                fm.numel() == len(mean_l)
                and fs.numel() == len(std_l)
                and torch.allclose(fm, torch.tensor(mean_l, dtype=torch.float64), atol=1e-6, rtol=0)
                and torch.allclose(fs, torch.tensor(std_l, dtype=torch.float64), atol=1e-6, rtol=0)
            )
            if not same:
                raise ValueError(
                    f"mean/std given ({mean_l}, {std_l}) differ from those stored in {source} "
                    f"({fm.tolist()}, {fs.tolist()}); pass mean=None, std=None to use the stored ones"
                )
    elif file_mean is not None:
        mean_l = [float(v) for v in torch.as_tensor(file_mean, dtype=torch.float64).flatten()]
        std_l = [float(v) for v in torch.as_tensor(file_std, dtype=torch.float64).flatten()]
    else:
        mean_l, std_l = [0.0] * in_channels, [1.0] * in_channels
    if len(mean_l) != in_channels or len(std_l) != in_channels:
        raise ValueError(
            f"mean and std need one value per input channel (in_channels={in_channels}); "
            f"got mean of length {len(mean_l)} and std of length {len(std_l)}"
        )
    return mean_l, std_l


class NetWithWeights(NamedTuple):
    """A bare network with its weights loaded, and the normalization that came with them."""

    net: nn.Module
    mean: list[float] | None
    std: list[float] | None
    pretrained: TorchvisionWeights | None
    """torchvision's weight enum the network was built with (``None`` for a file or random init)."""


def pretrained_weights(name: str, weights: Any) -> TorchvisionWeights | None:
    """torchvision's weight enum that ``weights`` names for the architecture ``name`` (``None``: not a name)."""
    if isinstance(weights, str) and isinstance(name, str) and name.startswith(TORCHVISION_PREFIX):
        get_builder(name)  # an unknown architecture is reported as such
        return torchvision_weights(name[len(TORCHVISION_PREFIX) :], weights)
    return None


def build_net_with_weights(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    input_size: int | tuple[int, int] | None = None,
    weights: str | os.PathLike | None = None,
    *,
    trusted: bool = False,
    allow_download: bool | None = None,
    **kwargs: Any,
) -> NetWithWeights:
    """The bare network ``name`` initialised from ``weights``: ``None`` (random init), a local file
    (:func:`~lit_advgame.models.weights.load_weights_into_net`) or, for ``torchvision:<arch>``, the name of one of
    torchvision's weight enums (:func:`~lit_advgame.models.torchvision_models.torchvision_weights`), with the
    mean/std stored with the weights (``None`` when they hold none)."""
    pretrained = pretrained_weights(name, weights)
    if pretrained is not None:
        check_int(num_classes, "num_classes", minimum=2)
        check_int(in_channels, "in_channels", minimum=1)
        _check_input_size(input_size)
        net = build_pretrained_torchvision(
            pretrained, num_classes, in_channels, allow_download=allow_download, trusted=trusted, **kwargs
        )
        mean, std = pretrained.normalization
        return NetWithWeights(net, mean, std, pretrained)
    net = build_net(name, num_classes, in_channels, input_size, **kwargs)
    mean = std = None
    if weights is not None:
        file_mean, file_std = load_weights_into_net(net, weights, num_classes, trusted=trusted)
        if file_mean is not None and file_std is not None:
            mean, std = [float(v) for v in file_mean.flatten()], [float(v) for v in file_std.flatten()]
    return NetWithWeights(net, mean, std, None)


def weights_normalization(
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    in_channels: int,
    stored_mean: Sequence[float] | None,
    stored_std: Sequence[float] | None,
    *,
    weights: Any = None,
    normalization: NormalizationMode = "auto",
) -> tuple[list[float], list[float]]:
    """:func:`resolve_normalization` for a network initialised from ``weights`` (``None``: random init), whose
    stored constants are ``stored_mean``/``stored_std``: with weights that store none, mean/std must be given
    unless ``normalization="none"`` (identity: the network takes raw [0, 1] pixels)."""
    check_choice(normalization, "normalization", NORMALIZATION_MODES)
    if normalization == "none":
        if mean is not None or std is not None or stored_mean is not None:
            given = "mean/std were given" if mean is not None or std is not None else f"{weights} stores mean/std"
            raise ValueError(
                f"normalization='none' (the network takes raw [0, 1] pixels) but {given}; drop one of the two"
            )
        return [0.0] * in_channels, [1.0] * in_channels
    if weights is not None and mean is None and std is None and stored_mean is None:
        raise ValueError(
            f"the weights {str(weights)!r} store no normalization (mean/std) and none was given: give the mean and "
            "std the network was trained with (one value per channel, e.g. ImageNet's mean [0.485, 0.456, 0.406] "
            "and std [0.229, 0.224, 0.225]), or normalization='none' if it was trained on raw [0, 1] pixels"
        )
    return resolve_normalization(mean, std, in_channels, stored_mean, stored_std, source=str(weights))


def build_model(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    input_size: int | tuple[int, int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    weights: str | os.PathLike | None = None,
    clamp: bool = False,
    trusted_weights: bool = False,
    normalization: NormalizationMode = "auto",
    allow_download: bool | None = None,
    **kwargs: Any,
) -> NormalizedModel:
    """Build the classifier ``name`` wrapped as ``NormalizedModel(net, mean, std, clamp)``.

    Args:
        name: a registered name (:func:`available_models`) or ``"torchvision:<arch>"``.
        num_classes: number of classes (>= 2).
        in_channels: input channels (1 for digits/MNIST, 3 for colour). torchvision
            architectures need 3 (their stems are not adapted).
        input_size: ``(H, W)`` (or one int for square images); required by ``mlp`` only.
        mean, std: per-channel data statistics for the normalization layer. If both are
            ``None``, the constants stored with ``weights`` are used (a ``NormalizedModel`` state dict, a
            ``robustness`` checkpoint, torchvision's weight enum); weights that store none are an error unless
            ``normalization="none"``; without weights the identity normalization (mean 0, std 1) is used.
        weights: optional weights: a local file -- a plain state dict of the network, a
            ``NormalizedModel`` state dict, a Lightning checkpoint (``state_dict`` with the
            model under some prefix such as ``model.``), or a MadryLab ``robustness``
            checkpoint, loaded with ``torch.load(weights_only=True)`` on CPU and strictly -- or, for
            ``torchvision:<arch>``, the name of torchvision's weights (``"IMAGENET1K_V1"``, ``"DEFAULT"``), read
            from torchvision's cache (``$TORCH_HOME``); ``num_classes`` must then be the number of their categories.
        clamp: clamp inputs to [0, 1] before normalizing (``robustness``'s behaviour).
        trusted_weights: allow the unsafe ``weights_only=False`` fallback for a weights file
            that holds arbitrary pickled objects (only for files from a trusted source).
        normalization: ``"auto"`` (as above) or ``"none"`` (identity; excludes mean/std).
        allow_download: whether torchvision weights missing from the cache may be downloaded (``None``: the
            ``LIT_ADVGAME_ALLOW_DOWNLOAD`` environment variable, else only inside the ``lit-advgame`` command).
        **kwargs: architecture options (e.g. ``width``, ``depth``, ``hidden_sizes``).

    Returns:
        The model on CPU, in training mode.

    >>> model = build_model("small_cnn", num_classes=10, in_channels=1, mean=[0.3], std=[0.3])
    >>> model(torch.rand(2, 1, 16, 16)).shape  # pixel-space input; normalization is the first layer
    torch.Size([2, 10])
    >>> model.normalize.mean.flatten().tolist()
    [0.30000001192092896]
    """
    net, stored_mean, stored_std, _ = build_net_with_weights(
        name,
        num_classes,
        in_channels,
        input_size,
        weights,
        trusted=trusted_weights,
        allow_download=allow_download,
        **kwargs,
    )
    mean_l, std_l = weights_normalization(
        mean, std, in_channels, stored_mean, stored_std, weights=weights, normalization=normalization
    )
    return NormalizedModel(net, mean_l, std_l, clamp=clamp)
