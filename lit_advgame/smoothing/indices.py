"""Dataset indices of the examples in the current Lightning evaluation batch.

Per-example noise is seeded from the dataset index, so each step needs the indices of its batch.
Only public APIs are used:

* ``predict`` with a batch-interval prediction writer in ``trainer.callbacks`` (``lit-advgame predict``
  attaches :class:`~lit_advgame.smoothing.writer.SmoothingPredictionWriter`): the indices Lightning's
  predict loop hands to the writer, ``trainer.predict_loop.current_batch_indices`` (also under DDP).
  Lightning tracks them only when such a writer is attached.
* otherwise, when the loader's sampler does not shuffle (``SequentialSampler``, or the
  ``DistributedSampler(shuffle=False)`` Lightning injects under DDP), its batches are enumerated
  once per epoch and looked up by ``batch_idx``: ``validate``/``test`` enumerate the loader's batch
  sampler; ``predict`` (where Lightning wraps the batch sampler to record indices, and iterating the
  wrapper would restart the running epoch) rebuilds a ``torch.utils.data.BatchSampler`` from the
  batch sampler's public ``sampler``/``batch_size``/``drop_last`` attributes.
* anything else (a shuffling sampler, an iterable without a batch sampler): indices fall back to
  a running count of examples per dataloader, with a warning.
"""

from __future__ import annotations

from typing import Any

import torch
from pytorch_lightning.callbacks import BasePredictionWriter
from pytorch_lightning.utilities import rank_zero_warn
from torch.utils.data import BatchSampler, DistributedSampler, SequentialSampler


def _stage_dataloader(trainer: Any, stage: str, dataloader_idx: int) -> Any:
    loaders = getattr(trainer, f"{stage}_dataloaders", None)
    if isinstance(loaders, (list, tuple)):
        return loaders[dataloader_idx] if dataloader_idx < len(loaders) else None
    if isinstance(loaders, dict):
        values = list(loaders.values())
        return values[dataloader_idx] if dataloader_idx < len(values) else None
    return loaders


def _deterministic(sampler: Any) -> bool:
    if isinstance(sampler, SequentialSampler):
        return True
    if isinstance(sampler, DistributedSampler):
        return not sampler.shuffle
    return False


def _predict_loop_indices(trainer: Any) -> list[int] | None:
    """``trainer.predict_loop.current_batch_indices`` when Lightning tracks them (a batch-interval
    prediction writer is attached), else ``None``."""
    callbacks = getattr(trainer, "callbacks", None) or []
    if not any(isinstance(cb, BasePredictionWriter) and cb.interval.on_batch for cb in callbacks):
        return None
    indices = getattr(getattr(trainer, "predict_loop", None), "current_batch_indices", None)
    return [int(i) for i in indices] if indices else None


def _rebuilt_batches(batch_sampler: Any) -> list[list[int]] | None:
    """The batches of a ``BatchSampler``-like object, enumerated through a fresh ``BatchSampler`` over its
    ``sampler`` (``None`` when it has no such attributes or its sampler shuffles)."""
    sampler = getattr(batch_sampler, "sampler", None)
    batch_size = getattr(batch_sampler, "batch_size", None)
    drop_last = getattr(batch_sampler, "drop_last", None)
    if not (_deterministic(sampler) and isinstance(batch_size, int) and isinstance(drop_last, bool)):
        return None
    return [list(batch) for batch in BatchSampler(sampler, batch_size, drop_last)]


class BatchIndexTracker:
    """Look up the dataset indices of evaluation batches (call :meth:`reset` at each epoch start)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._batches: dict[tuple[str, int], list[list[int]] | None] = {}
        self._counters: dict[tuple[str, int], int] = {}
        self._warned = False

    def _enumerated(self, loader: Any, stage: str, key: tuple[str, int]) -> list[list[int]] | None:
        if key not in self._batches:
            batch_sampler = getattr(loader, "batch_sampler", None)
            if batch_sampler is None:
                batches = None
            elif stage == "predict":
                batches = _rebuilt_batches(batch_sampler)
            elif _deterministic(getattr(loader, "sampler", None)):
                batches = [list(batch) for batch in batch_sampler]
            else:
                batches = None
            self._batches[key] = batches
        return self._batches[key]

    def indices(self, trainer: Any, stage: str, batch_idx: int, dataloader_idx: int, batch_len: int) -> torch.Tensor:
        """(batch_len,) int64 dataset indices of batch ``batch_idx`` of ``stage`` ("val", "test", "predict")."""
        key = (stage, dataloader_idx)
        found: list[int] | None = None
        if trainer is not None and stage == "predict":
            found = _predict_loop_indices(trainer)
        if found is None or len(found) != batch_len:
            loader = _stage_dataloader(trainer, stage, dataloader_idx) if trainer is not None else None
            batches = self._enumerated(loader, stage, key) if loader is not None else None
            found = batches[batch_idx] if batches is not None and batch_idx < len(batches) else None
        if found is not None and len(found) == batch_len:
            return torch.as_tensor(found, dtype=torch.int64)
        if not self._warned:
            rank_zero_warn(
                f"could not infer the dataset indices of {stage} batches (shuffled or non-DataLoader input); "
                "seeding per-example noise from a running example count instead, so results depend on batch order"
            )
            self._warned = True
        start = self._counters.get(key, 0)
        self._counters[key] = start + batch_len
        return torch.arange(start, start + batch_len, dtype=torch.int64)
