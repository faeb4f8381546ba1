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
      (``torchvision.models.list_models(module=torchvision.models)``), always built with
      ``weights=None``: nothing is ever downloaded; load a local file with ``weights=``.
"""

from __future__ import annotations

import difflib
import inspect
import os
from collections.abc import Sequence
from typing import Any

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
from lit_advgame.models.torchvision_models import torchvision_architectures, torchvision_builder
from lit_advgame.models.weights import load_weights_into_net
from lit_advgame.utils.checks import check_int

__all__ = [
    "TORCHVISION_PREFIX",
    "Builder",
    "available_models",
    "build_model",
    "build_net",
    "get_builder",
    "register_model",
    "resolve_normalization",
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
            ``None``, the constants stored in ``weights`` are used if it has any (a
            ``NormalizedModel`` state dict or a ``robustness`` checkpoint), otherwise the
            identity normalization (mean 0, std 1), i.e. the network sees raw [0, 1] pixels.
        weights: optional local file to load: a plain state dict of the network, a
            ``NormalizedModel`` state dict, a Lightning checkpoint (``state_dict`` with the
            model under some prefix such as ``model.``), or a MadryLab ``robustness``
            checkpoint. Loaded with ``torch.load(weights_only=True)`` on CPU and strictly.
        clamp: clamp inputs to [0, 1] before normalizing (``robustness``'s behaviour).
        trusted_weights: allow the unsafe ``weights_only=False`` fallback for a weights file
            that holds arbitrary pickled objects (only for files from a trusted source).
        **kwargs: architecture options (e.g. ``width``, ``depth``, ``hidden_sizes``).

    Returns:
        The model on CPU, in training mode.

    >>> model = build_model("small_cnn", num_classes=10, in_channels=1, mean=[0.3], std=[0.3])
    >>> model(torch.rand(2, 1, 16, 16)).shape  # pixel-space input; normalization is the first layer
    torch.Size([2, 10])
    >>> model.normalize.mean.flatten().tolist()
    [0.30000001192092896]
    """
    net = build_net(name, num_classes, in_channels, input_size, **kwargs)
    file_mean = file_std = None
    if weights is not None:
        file_mean, file_std = load_weights_into_net(net, weights, num_classes, trusted=trusted_weights)
    mean_l, std_l = resolve_normalization(mean, std, in_channels, file_mean, file_std, source=str(weights))
    return NormalizedModel(net, mean_l, std_l, clamp=clamp)
