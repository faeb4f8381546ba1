"""A deterministic measure of autograd memory: the bytes of tensors saved for backward alive at once."""

from __future__ import annotations

from typing import Any

import torch


class SavedTensorMeter:
    """Count the bytes of tensors autograd saves for backward, alive at once (current and peak).

    A context manager over :class:`torch.autograd.graph.saved_tensors_hooks`: every tensor a graph
    saves inside the ``with`` block is counted until that graph frees it (after its backward, or
    when the graph is dropped). Each saved reference counts with its full size (a parameter saved by
    several layers or chunks counts each time), so this is a deterministic proxy of the activation
    memory a computation keeps for backward, independent of the allocator and the device; it
    does not see tensors outside autograd graphs.

    Example::

        >>> meter = SavedTensorMeter()
        >>> w = torch.ones(4, requires_grad=True)
        >>> with meter:
        ...     loss = (w * torch.arange(4.0)).sum()  # mul saves arange (4 floats) for w's gradient
        ...     loss.backward()
        >>> meter.peak, meter.live
        (16, 0)
    """

    def __init__(self) -> None:
        self.live = 0
        self.peak = 0
        self._hooks: Any = None

    def _pack(self, tensor: torch.Tensor) -> _Held:
        return _Held(tensor, self)

    def __enter__(self) -> SavedTensorMeter:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, _Held.unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)
        self._hooks = None


class _Held:
    """A saved tensor and its size; the meter's count drops when the graph frees it."""

    __slots__ = ("meter", "size", "tensor")

    def __init__(self, tensor: torch.Tensor, meter: SavedTensorMeter) -> None:
        self.tensor, self.meter = tensor, meter
        self.size = tensor.numel() * tensor.element_size()
        meter.live += self.size
        meter.peak = max(meter.peak, meter.live)

    def unpack(self) -> torch.Tensor:
        return self.tensor

    def __del__(self) -> None:
        self.meter.live -= self.size
