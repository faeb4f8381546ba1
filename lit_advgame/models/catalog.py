"""The table of architecture names: a leaf module that the architecture modules register into.

``register_model(name)`` adds a builder ``builder(num_classes, in_channels, input_size, **kwargs)``
returning the bare network; :mod:`lit_advgame.models.registry` looks names up here and adds the
normalization layer. This module imports nothing from the package, so every architecture module
can import it without an import cycle.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

Builder = Callable[..., nn.Module]

TORCHVISION_PREFIX = "torchvision:"

_REGISTRY: dict[str, Builder] = {}


def register_model(name: str) -> Callable[[Builder], Builder]:
    """Decorator registering ``builder(num_classes, in_channels, input_size, **kwargs) -> nn.Module``.

    The builder returns the bare network (it sees standardised input);
    :func:`~lit_advgame.models.registry.build_model` adds the normalization layer. ``input_size`` is
    ``(H, W)`` or ``None``.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"model name must be a non-empty string; got {name!r}")
    if name.startswith(TORCHVISION_PREFIX):
        raise ValueError(f"names starting with {TORCHVISION_PREFIX!r} are reserved for torchvision architectures")

    def decorator(builder: Builder) -> Builder:
        if name in _REGISTRY and _REGISTRY[name] is not builder:
            raise ValueError(f"a model named {name!r} is already registered")
        _REGISTRY[name] = builder
        return builder

    return decorator


def registered_builder(name: str) -> Builder | None:
    """The builder registered as ``name``, or ``None``."""
    return _REGISTRY.get(name)


def registered_names() -> list[str]:
    """Sorted names registered so far."""
    return sorted(_REGISTRY)
