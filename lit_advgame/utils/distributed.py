"""One collective pattern of the prediction writers: every rank has written its part, rank 0 merges.

:func:`run_on_rank_zero` lets all ranks meet at a barrier, runs the merge on global rank 0 and then raises
rank 0's error, if any, on *every* rank (broadcast), so that no rank waits forever at the next collective
call for a rank that failed; then all ranks meet again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import pytorch_lightning as pl

T = TypeVar("T")


def run_on_rank_zero(trainer: pl.Trainer, fn: Callable[[], T], name: str) -> T | None:
    """Barrier, ``fn()`` on global rank 0, its error raised on every rank, barrier; ``fn``'s result on rank 0
    (``None`` on the other ranks). ``name`` labels the barriers."""
    strategy = trainer.strategy
    strategy.barrier(name)
    result: T | None = None
    error: BaseException | None = None
    if trainer.is_global_zero:
        try:
            result = fn()
        except Exception as err:  # noqa: BLE001 - re-raised on every rank below
            error = err
    message = strategy.broadcast(None if error is None else f"{type(error).__name__}: {error}", src=0)
    if error is not None:
        raise error
    if message is not None:
        raise RuntimeError(message)
    strategy.barrier(f"{name}_done")
    return result
