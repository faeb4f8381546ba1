"""Run an attack with the source model(s) in eval mode and restore each module's mode afterwards."""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

from torch import nn


@contextlib.contextmanager
def eval_mode(models: Sequence[nn.Module]) -> Iterator[None]:
    """Put every module of ``models`` in eval mode; restore each module's own ``training`` flag on exit.

    Flags are saved per module (not per model), so models with mixed modes (e.g. frozen
    BatchNorm inside a training model) come back exactly as they were, also after an error.
    """
    saved = [(module, module.training) for model in models for module in model.modules()]
    try:
        for model in models:
            model.eval()
        yield
    finally:
        for module, training in saved:
            module.training = training
