"""Progress of an attack run: a progress bar that counts images, and the plan it counts against.

:class:`AttackProgressBar` is Lightning's :class:`~pytorch_lightning.callbacks.TQDMProgressBar` counting
*images* instead of batches: ``Attacking: 40%|████ | 48/128 [00:12<00:20, 3.9img/s]``. The rate and the ETA
count only the images attacked by this run: batches already saved by an earlier run (skipped on resume)
move the bar without counting as work done. :class:`~lit_advgame.predict.attack_module.AttackModule` puts it
in place of Lightning's default progress bar (``trainer.enable_progress_bar``, on by default); a progress bar
given in ``trainer.callbacks`` is kept as it is. Like Lightning's bars it is shown on global rank 0 only.
"""

from __future__ import annotations

import math
import sys
from itertools import islice
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.callbacks.progress.tqdm_progress import Tqdm
from torch.utils.data import SequentialSampler
from typing_extensions import override


def loader_batches(loader: Any, max_batches: int | float | None = None) -> list[list[int]] | None:
    """The dataset indices of each batch ``loader`` serves (at most ``max_batches``), read from its sequential
    sampler without loading data; ``None`` when they cannot be known in advance without side effects (a random
    or distributed sampler, a custom batch sampler, an iterable dataset)."""
    batch_sampler = getattr(loader, "batch_sampler", None)
    sampler = getattr(batch_sampler, "sampler", None)
    batch_size = getattr(batch_sampler, "batch_size", None)
    if not isinstance(sampler, SequentialSampler) or not isinstance(batch_size, int) or batch_size < 1:
        return None
    indices = list(sampler)
    batches = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
    if batches and getattr(batch_sampler, "drop_last", False) and len(batches[-1]) < batch_size:
        batches.pop()
    if max_batches is not None and not math.isinf(max_batches):
        batches = list(islice(batches, int(max_batches)))
    return batches


def report(trainer: pl.Trainer, text: str) -> None:
    """Print ``text`` to stdout on global rank 0, above a progress bar if one is shown (``tqdm.write``)."""
    if trainer.is_global_zero:
        Tqdm.write(text, file=sys.stdout)


def batch_size_of(batch: Any) -> int:
    """Images in a batch of ``(images, labels, ...)`` (0 when unknown)."""
    if isinstance(batch, (list, tuple)) and batch:
        try:
            return len(batch[0])
        except TypeError:
            return 0
    return 0


class AttackProgressBar(TQDMProgressBar):
    """A TQDM progress bar of ``trainer.predict`` counting images (images/s, ETA) instead of batches.

    The total is the number of images the predict loop serves (``AttackModule.planned_images()``; unknown
    for loaders whose batches cannot be planned: the bar then counts without a total). A batch the module
    skips because an earlier run saved it moves the bar and its start (``tqdm``'s ``initial``), so the rate
    and ETA are those of the images attacked now. Under DDP without a distributed sampler, rank 0 serves
    every batch and counts those the other ranks attack as done when it passes them.

    Args: those of :class:`~pytorch_lightning.callbacks.TQDMProgressBar`.
    """

    def __init__(self, refresh_rate: int = 1, process_position: int = 0, leave: bool = False) -> None:
        super().__init__(refresh_rate=refresh_rate, process_position=process_position, leave=leave)
        self.images = 0
        self.total_images: int | None = None
        self.description = "Attacking"

    @override
    def init_predict_tqdm(self) -> Tqdm:
        return Tqdm(
            desc=self.description,
            total=self.total_images,
            unit="img",
            position=2 * self.process_position,
            disable=self.is_disabled,
            leave=True,
            dynamic_ncols=True,
            file=sys.stdout,
            smoothing=0,
            bar_format=self.BAR_FORMAT,
        )

    @override
    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        planned = getattr(pl_module, "planned_images", None)
        self.total_images = planned() if callable(planned) else None
        self.images = 0
        self.description = str(getattr(pl_module, "progress_description", "Attacking"))  # the job's work
        super().on_predict_start(trainer, pl_module)

    @override
    def on_predict_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        """Nothing: the bar counts images from the start of the run (Lightning's resets it per dataloader)."""

    @override
    def on_predict_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        size = batch_size_of(batch)
        self.images += size
        bar = self.predict_progress_bar
        if bar.disable:
            return
        if isinstance(outputs, dict) and outputs.get("skipped") == "finished":
            bar.initial += size  # saved by an earlier run: not work of this one (rate and ETA)
        if (batch_idx + 1) % self.refresh_rate == 0 or (self.total_images and self.images >= self.total_images):
            bar.n = self.images
            bar.refresh()
