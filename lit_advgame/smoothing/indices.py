"""Dataset indices of the examples in the current Lightning evaluation batch.

Per-example noise is seeded from the dataset index, so each step needs the indices of its batch:

* ``predict``: Lightning wraps the batch sampler in ``_IndexBatchSamplerWrapper``, which records the
  indices it served (``seen_batch_indices[batch_idx]``), also under DDP.
* ``validate``/``test``: the loader's batch sampler is deterministic when its sampler does not
  shuffle (``SequentialSampler``, or the ``DistributedSampler(shuffle=False)`` Lightning injects
  under DDP), so its batches are enumerated once per epoch and looked up by ``batch_idx``.
* anything else (a shuffling sampler, an iterable without a batch sampler): indices fall back to
  a running count of examples per dataloader, with a warning.
"""

from __future__ import annotations

from typing import Any

import torch
from pytorch_lightning.overrides.distributed import _IndexBatchSamplerWrapper
from pytorch_lightning.utilities import rank_zero_warn
from torch.utils.data import DistributedSampler, SequentialSampler


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


class BatchIndexTracker:
    """Look up the dataset indices of evaluation batches (call :meth:`reset` at each epoch start)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._batches: dict[tuple[str, int], list[list[int]] | None] = {}
        self._counters: dict[tuple[str, int], int] = {}
        self._warned = False

    def indices(self, trainer: Any, stage: str, batch_idx: int, dataloader_idx: int, batch_len: int) -> torch.Tensor:
        """(batch_len,) int64 dataset indices of batch ``batch_idx`` of ``stage`` ("val", "test", "predict")."""
        key = (stage, dataloader_idx)
        loader = _stage_dataloader(trainer, stage, dataloader_idx) if trainer is not None else None
        batch_sampler = getattr(loader, "batch_sampler", None)
        found: list[int] | None = None
        if isinstance(batch_sampler, _IndexBatchSamplerWrapper):
            seen = batch_sampler.seen_batch_indices
            found = list(seen[batch_idx]) if batch_idx < len(seen) else None
        elif batch_sampler is not None and _deterministic(getattr(loader, "sampler", None)):
            if key not in self._batches:
                self._batches[key] = [list(batch) for batch in batch_sampler]
            batches = self._batches[key]
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
