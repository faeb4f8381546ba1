"""Attacks in train mode: a view that keeps the network's mode, and restoring BatchNorm statistics.

:class:`~lit_advgame.attacks.Attack` switches its model to eval mode for the attack (walking
``.modules()``). Adversarial training may instead attack in train mode (batch statistics, active
dropout), as MadryLab's ``robustness`` and the TRS inner PGD do: give the attack a
:class:`ModeLockedView` of the network and run it inside :func:`restored_buffers`, so the attack's
forward passes leave the BatchNorm running statistics as they were.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from typing_extensions import override


class ModeLockedView(nn.Module):
    """Calls ``net`` without registering it as a submodule, so the Attack's eval-mode switch
    (which walks ``.modules()``) leaves ``net`` in its current (train) mode."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "_net", net)

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._net(x)


@contextlib.contextmanager
def restored_buffers(model: nn.Module) -> Iterator[None]:
    """Restore every buffer of ``model`` (BatchNorm running statistics) on exit."""
    saved = [(buf, buf.detach().clone()) for buf in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, value in saved:
                buf.copy_(value)
