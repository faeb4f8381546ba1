"""The bookkeeping shared by the sharded ``trainer.predict`` jobs: which batches this rank runs, which are saved.

:class:`ShardedPredictModule` is the base of the LightningModules whose ``predict_step`` results a batch-interval
prediction writer saves as shards (:class:`~lit_advgame.predict.writer.AdversarialWriter` and its subclasses):
:class:`~lit_advgame.predict.attack_module.AttackModule` and
:class:`~lit_advgame.analysis.InteractionAnalysis`. It holds what the writer and the progress bar ask of a module:

* :meth:`set_finished` / :meth:`batch_finished`: the dataset indices an earlier run saved (resuming);
* :meth:`planned_batches` / :meth:`planned_images`: the batches this run serves (the resumed line, the progress bar);
* :attr:`seen_indices`: every dataset index the predict loop served to this rank (the completeness check);
* :meth:`claim_batch`: the checks at the start of ``predict_step`` and whether this rank runs the batch (under DDP
  without a distributed sampler, batch ``b`` runs on rank ``b % world_size``; the others return at once);
* the Lightning hooks: gradients needed (``trainer.inference_mode: false``), one predict dataloader, a
  batch-interval writer in ``trainer.callbacks``, a run that served no batch reported, the default progress bar
  replaced by an :class:`~lit_advgame.predict.progress.AttackProgressBar`.

Subclasses implement :meth:`run_metadata` (the JSON-able description the writer stores as ``meta.json`` and compares
on resume) and ``predict_step`` (starting with :meth:`claim_batch`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter, Callback, TQDMProgressBar
from pytorch_lightning.utilities import rank_zero_warn
from torch.utils.data import DistributedSampler
from typing_extensions import override

from lit_advgame.predict.models import LoadedModel, load_classifiers
from lit_advgame.predict.progress import AttackProgressBar, loader_batches


def inference_mode_message(owner: str) -> str:
    """The error of a job that needs gradients but runs under ``torch.inference_mode()``."""
    return (
        f"{owner} needs gradients but predict is running under torch.inference_mode(); "
        "set `trainer.inference_mode: false` in the config (or Trainer(inference_mode=False))"
    )


def check_normalization(what: str, loaded: LoadedModel, mean: Sequence[float] | None, std: Sequence[float] | None):
    """The data's mean/std must equal the normalization a loaded classifier applies (each member's, for an
    ensemble)."""
    for member, part in [(m, f" (member {i})") for i, m in enumerate(loaded.members)] or [(loaded, "")]:
        for name, data_value in (("mean", mean), ("std", std)):
            stored_list = getattr(member, name)
            if data_value is None or stored_list is None:
                continue
            data_list = [float(v) for v in data_value]
            if len(data_list) == 1 and len(stored_list) > 1:
                data_list = data_list * len(stored_list)
            if len(stored_list) == 1 and len(data_list) > 1:
                stored_list = stored_list * len(data_list)
            same = len(stored_list) == len(data_list) and all(
                abs(a - b) <= 1e-6 + 1e-5 * abs(b) for a, b in zip(stored_list, data_list, strict=True)
            )
            if not same:
                raise ValueError(
                    f"{what}{part} normalizes inputs with {name}={stored_list} but the data's {name} is {data_list}; "
                    f"the model was trained on differently normalized data: use a checkpoint trained on this data, or "
                    f"set the DataModule's mean/std to the checkpoint's"
                )


class ShardedPredictModule(pl.LightningModule):
    """Base of the predict jobs saved by a shard writer (see the module docstring)."""

    #: the writer named in the messages
    writer_class_path: ClassVar[str] = "lit_advgame.predict.AdversarialWriter"
    #: results are per image (seeded by the dataset index alone): a batch is finished when all its images are
    #: saved, from any batch (see :meth:`batch_finished`), and :meth:`claim_images` skips the saved ones
    per_image_results: ClassVar[bool] = False
    #: the job's work, as the progress bar names it (``Attacking: 40%|████ | 48/128``) and the writer's first line
    #: (``attacking 128 images into ...``); the verb of ``80 to attack``
    progress_description: ClassVar[str] = "Attacking"
    work_verb: ClassVar[str] = "attack"

    def __init__(self) -> None:
        super().__init__()
        self._finished: dict[int, tuple[int, int] | None] = {}
        self._distributed_sampler = False
        self._predict_started = False
        #: dataset indices of every batch the predict loop served to this rank (for the writer's completeness check)
        self.seen_indices: set[int] = set()

    @property
    def job_name(self) -> str:
        """The class name, used in messages."""
        return type(self).__name__

    def run_metadata(self) -> dict[str, Any]:  # pragma: no cover - implemented by every subclass
        """JSON-able description of this run (written next to the shards, checked on resume)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ saved and planned batches
    def set_finished(self, indices: Mapping[int, tuple[int, int] | None] | set[int] | Sequence[int]) -> None:
        """Dataset indices already saved, each with the ``(batch_first, batch_len)`` of the batch it was
        run in (see :func:`~lit_advgame.predict.shards.saved_batches`; ``None`` or a plain set of
        indices: batch unknown). A batch is skipped when all its examples are saved from a batch
        with the same first index and at least its length."""
        if isinstance(indices, Mapping):
            self._finished = {int(i): None if b is None else (int(b[0]), int(b[1])) for i, b in indices.items()}
        else:
            self._finished = {int(i): None for i in indices}

    def batch_finished(self, indices: Sequence[int]) -> bool:
        """Whether the batch of dataset ``indices`` is saved already (see :meth:`set_finished`)."""
        if self.per_image_results:
            return all(int(i) in self._finished for i in indices)
        for i in indices:
            if i not in self._finished:
                return False
            batch = self._finished[i]
            if batch is not None and (batch[0] != indices[0] or batch[1] < len(indices)):
                return False
        return True

    def planned_batches(self) -> list[list[int]] | None:
        """The dataset indices of every batch this predict run serves (``None`` when the predict dataloader's
        batches cannot be known in advance, see :func:`~lit_advgame.predict.progress.loader_batches`)."""
        loaders = self.trainer.predict_dataloaders
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        limits = self.trainer.num_predict_batches
        return loader_batches(loader, limits[0] if limits else None)

    def planned_images(self) -> int | None:
        """The number of images this predict run serves (``None`` when unknown)."""
        batches = self.planned_batches()
        return None if batches is None else sum(len(b) for b in batches)

    # ------------------------------------------------------------------ Lightning hooks
    @override
    def configure_callbacks(self) -> list[Callback]:
        """Lightning's default progress bar becomes an :class:`~lit_advgame.predict.progress.AttackProgressBar`
        (images, images/s, ETA); a progress bar given in ``trainer.callbacks`` or ``enable_progress_bar: false``
        is left alone."""
        bar = self.trainer.progress_bar_callback
        if type(bar) is not TQDMProgressBar:
            return []
        return [AttackProgressBar(refresh_rate=bar.refresh_rate, process_position=bar.process_position)]

    @override
    def on_predict_start(self) -> None:
        if torch.is_inference_mode_enabled():
            raise RuntimeError(inference_mode_message(self.job_name))
        self._predict_started = True
        self.seen_indices = set()
        if not any(isinstance(cb, BasePredictionWriter) and cb.interval.on_batch for cb in self.trainer.callbacks):
            raise ValueError(
                f"{self.job_name} needs a batch-interval prediction writer in trainer.callbacks (e.g. "
                f"{self.writer_class_path}): it saves the batches' results and Lightning hands the "
                "batches' dataset indices to it, from which the random streams are seeded"
            )
        loaders = self.trainer.predict_dataloaders
        loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders]
        if len(loaders) != 1:
            raise ValueError(f"{self.job_name} takes one predict dataloader; got {len(loaders)}")
        loader = loaders[0]
        sampler = getattr(getattr(loader, "batch_sampler", None), "sampler", None) or getattr(loader, "sampler", None)
        self._distributed_sampler = isinstance(sampler, DistributedSampler)
        if self.trainer.world_size > 1 and self._distributed_sampler:
            rank_zero_warn(
                f"{self.job_name} under a distributed sampler: every example is run once, but the batches (and, "
                "where a random stream is seeded per batch, the results) depend on the world size. Set "
                "`trainer.use_distributed_sampler: false` to run exactly the batches of a one-process run."
            )

    @override
    def teardown(self, stage: str) -> None:
        if stage != "predict":
            return
        started, self._predict_started = self._predict_started, False
        if not started:  # Lightning skips the predict loop silently when there is no batch
            raise ValueError(
                f"{self.job_name}: the predict dataloader served no batch (the predict split is empty, or "
                "trainer.limit_predict_batches is 0); check the DataModule's predict_split/predict_limit"
            )

    def owns_batch(self, batch_idx: int) -> bool:
        """Whether this rank runs batch ``batch_idx`` (always, unless DDP without a distributed sampler)."""
        if self.trainer.world_size == 1 or self._distributed_sampler:
            return True
        return batch_idx % self.trainer.world_size == self.trainer.global_rank

    def _batch_indices(self, batch_idx: int, size: int) -> list[int]:
        """The dataset indices of the current batch, as Lightning's predict loop hands them to prediction writers
        (``trainer.predict_loop.current_batch_indices``, the ``batch_indices`` of ``write_on_batch_end``)."""
        indices = [int(i) for i in self.trainer.predict_loop.current_batch_indices]
        if not indices:
            raise RuntimeError(
                f"{self.job_name} could not find the dataset indices of the batch: Lightning tracks them for a "
                "torch DataLoader when a batch-interval prediction writer is in trainer.callbacks; add "
                f"{self.writer_class_path} and use a torch DataLoader as predict dataloader"
            )
        if len(indices) != size:
            raise RuntimeError(f"batch {batch_idx} has {size} images but {len(indices)} tracked dataset indices")
        return indices

    def claim_batch(self, batch: Any, batch_idx: int) -> tuple[torch.Tensor, torch.Tensor, list[int]] | dict[str, str]:
        """The start of ``predict_step``: check the batch, record its dataset indices, and return ``(x, y,
        indices)`` when this rank runs it, else ``{"skipped": "other rank"}`` or ``{"skipped": "finished"}``
        (all its examples saved by an earlier run, see :meth:`batch_finished`)."""
        if torch.is_inference_mode_enabled():
            raise RuntimeError(inference_mode_message(self.job_name))
        if not isinstance(batch, (list, tuple)) or len(batch) < 2:
            raise TypeError(f"{self.job_name} needs batches of (images, labels)")
        x, y = batch[0], batch[1]
        if len(y) == 0:
            raise ValueError(
                f"{self.job_name} got an empty batch (batch {batch_idx}: 0 images) from the predict dataloader"
            )
        indices = self._batch_indices(batch_idx, len(y))
        self.seen_indices.update(indices)
        if not self.owns_batch(batch_idx):
            return {"skipped": "other rank"}
        if self.batch_finished(indices):
            return {"skipped": "finished"}
        return x, y, indices

    def claim_images(self, batch: Any, batch_idx: int) -> tuple[torch.Tensor, torch.Tensor, list[int]] | dict[str, str]:
        """:meth:`claim_batch` for a job whose results are per image (:attr:`per_image_results`): ``(x, y,
        indices)`` of the batch's images that no earlier run saved."""
        claimed = self.claim_batch(batch, batch_idx)
        if isinstance(claimed, dict):
            return claimed
        x, y, indices = claimed
        todo = [b for b, i in enumerate(indices) if i not in self._finished]
        return x[todo], y[todo], [indices[b] for b in todo]


def load_checked_models(
    models: Any,
    what: str = "models",
    *,
    num_classes: int | None = None,
    input_shape: Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> list[LoadedModel]:
    """The model specs of a predict job loaded (:func:`~lit_advgame.classifiers.load_classifiers`), each checked
    against the data's ``num_classes``/``input_shape`` and its normalization against the data's ``mean``/``std``
    (:func:`check_normalization`)."""
    shape = None if input_shape is None else tuple(int(s) for s in input_shape)
    loaded = load_classifiers(models, what, num_classes=num_classes, input_shape=shape, mean=mean, std=std)
    for m in loaded:
        check_normalization(f"model {m.name!r}", m, mean, std)
    return loaded


def image_indices(x: torch.Tensor, indices: Sequence[int] | torch.Tensor) -> list[int]:
    """The dataset ``indices`` of the images ``x`` of a batch as ints, one per image (at least one image)."""
    out = [int(i) for i in torch.as_tensor(indices).flatten().tolist()]
    if x.shape[0] == 0 or len(out) != x.shape[0]:
        raise ValueError(f"got {len(out)} dataset indices for a batch of {x.shape[0]} images (need >= 1)")
    return out
