"""Module-mode helpers: the one :func:`eval_mode` context manager of the package."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

from torch import nn

T = TypeVar("T")


def _modules(models: Any) -> list[nn.Module]:
    """The ``nn.Module`` objects in ``models`` (one module, or a sequence); other callables are skipped."""
    if isinstance(models, nn.Module):
        return [models]
    if isinstance(models, Sequence) and not isinstance(models, (str, bytes)):
        return [model for model in models if isinstance(model, nn.Module)]
    return []


@contextlib.contextmanager
def eval_mode(models: T) -> Iterator[T]:
    """Put ``models`` (one ``nn.Module`` or a sequence of them) in eval mode; restore every
    submodule's own ``training`` flag on exit, also after an error. Yields ``models`` unchanged.

    Flags are saved per submodule (not per model), so a model with mixed modes (e.g. a frozen
    BatchNorm inside a training model) comes back exactly as it was. Callables that are not
    ``nn.Module`` (a plain function classifier) are left alone.

    >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    >>> _ = net[1].eval()  # mixed modes: the BatchNorm is frozen
    >>> with eval_mode(net) as same:
    ...     print(same is net, net.training, net[0].training)
    True False False
    >>> net.training, net[0].training, net[1].training
    (True, True, False)
    >>> with eval_mode([net, lambda x: x]):  # a sequence; non-modules are skipped
    ...     net.training
    False
    """
    modules = _modules(models)
    saved = [(module, module.training) for model in modules for module in model.modules()]
    try:
        for model in modules:
            model.eval()
        yield models
    finally:
        for module, training in saved:
            module.training = training
