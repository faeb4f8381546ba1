"""Common base of lit_advgame's classifier LightningModules.

A :class:`ClassifierModule` owns a pixel-space classifier built from the model registry
(normalization is its first layer), torchmetrics accuracy for each stage, and an optimizer and
LR scheduler injected from the config (any ``torch.optim`` class and any
``torch.optim.lr_scheduler`` class, given as ``class_path``/``init_args`` in YAML). Schedules of
:mod:`lit_advgame.training.schedules` (e.g. ``lit_advgame.training.CosineAnnealingLR`` with ``T_max``
left out) follow the run's length, ``trainer.max_epochs``.

Subclasses (standard, adversarial, smoothing, ensembles) take their own arguments and forward the others
(``**kwargs``) to this class, so its 11 arguments are declared once; jsonargparse follows the ``super().__init__``
call, so LightningCLI still shows and links every one of them. They override :meth:`training_loss` and, where
they evaluate differently, the step hooks.

The classifier contract: every module exposes :attr:`ClassifierModule.classifier`, one ``nn.Module`` mapping
pixel-space images in [0, 1] to logits with its normalization inside (an ensemble: the combined ensemble model
with ``.members``; randomized smoothing: the base classifier), and :meth:`ClassifierModule.classifier_metadata`
describing it (architecture, classes, input shape, normalization, members).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from lit_advgame.models import build_model
from lit_advgame.models.normalize import find_normalizer
from lit_advgame.training.interaction_penalty import InteractionPenalty
from lit_advgame.training.schedules import RunLengthSchedule
from lit_advgame.utils.checks import check_choice
from lit_advgame.vocabulary import SchedulerInterval


def default_optimizer(params: Any) -> torch.optim.Optimizer:
    """Adam(lr=1e-3): the default optimizer factory of every classifier module."""
    return torch.optim.Adam(params, lr=1e-3)


class ClassifierModule(pl.LightningModule):
    """Base LightningModule for a classifier on pixel-space images.

    Args:
        arch: model registry name (see :func:`lit_advgame.models.available_models`).
        num_classes: number of classes (linked from the DataModule by the CLI).
        input_shape: (C, H, W) of the images (linked from the DataModule by the CLI).
        mean: per-channel normalization mean (linked from the DataModule by the CLI).
        std: per-channel normalization std (linked from the DataModule by the CLI).
        arch_kwargs: extra keyword arguments of the architecture builder.
        weights: optional local weights file to initialise the network from, or for ``torchvision:<arch>``
            torchvision's weights by name (``IMAGENET1K_V1``, ``DEFAULT``; see :func:`lit_advgame.models.build_model`).
        optimizer: optimizer factory (``params -> Optimizer``); default Adam(lr=1e-3).
        lr_scheduler: optional scheduler factory (``optimizer -> LRScheduler``); a
            :class:`~lit_advgame.training.schedules.RunLengthSchedule` (``lit_advgame.training.CosineAnnealingLR``
            without ``T_max``) anneals over the whole run, ``trainer.max_epochs`` epochs (see :meth:`run_length`).
        scheduler_interval: step the scheduler every ``"epoch"`` or ``"step"``.
        scheduler_monitor: metric monitored by ``ReduceLROnPlateau``.
        penalty: optional interaction penalty added to the training loss,
            :class:`~lit_advgame.training.interaction_penalty.InteractionPenalty` (YAML: a mapping such as
            ``penalty: {weight: 1.0, grid: 4, num_samples: 16}``); logs ``train/penalty`` (the unweighted
            estimate) and ``train/penalty_forward_passes``. ``None`` (default) or ``weight: 0``: plain training.
    """

    hparams_ignore: tuple[str, ...] = ("optimizer", "lr_scheduler")
    """Arguments kept out of the checkpoint's hyper-parameters (the injected factories; subclasses may add some)."""

    def __init__(
        self,
        arch: str = "small_cnn",
        num_classes: int = 10,
        input_shape: Sequence[int] = (1, 16, 16),
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        arch_kwargs: dict[str, Any] | None = None,
        weights: str | None = None,
        optimizer: OptimizerCallable = default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: SchedulerInterval = "epoch",
        scheduler_monitor: str = "val/loss",
        penalty: InteractionPenalty | None = None,
    ) -> None:
        super().__init__()
        check_choice(scheduler_interval, "scheduler_interval", ("epoch", "step"))
        penalty_settings = None if penalty is None else InteractionPenalty.coerce(penalty, "penalty")
        penalty = None if penalty_settings is None else penalty_settings.as_dict()  # hyper-parameters: a plain dict
        input_shape = tuple(int(s) for s in input_shape)
        if len(input_shape) != 3:
            raise ValueError(f"input_shape must be (C, H, W); got {input_shape}")
        if penalty_settings is not None:
            penalty_settings.check_input(input_shape)
        self.save_hyperparameters(ignore=list(self.hparams_ignore))
        self.model = self.build_network()
        #: the :class:`InteractionPenalty` given as ``penalty`` (``None``: none)
        self.penalty = penalty_settings
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.train_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")

    # ----------------------------------------------------------------- model
    def build_network(self) -> nn.Module:
        """Build the classifier from the hyper-parameters (override for ensembles)."""
        hp = self.hparams
        c, h, w = hp.input_shape
        return build_model(
            hp.arch,
            num_classes=hp.num_classes,
            in_channels=c,
            input_size=(h, w),
            mean=hp.mean,
            std=hp.std,
            weights=hp.weights,
            **(hp.arch_kwargs or {}),
        )

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    @property
    def classifier(self) -> nn.Module:
        """The pixel-space classifier (normalization inside): images in [0, 1] -> logits."""
        return self.model

    def classifier_metadata(self) -> dict[str, Any]:
        """What a loader needs to rebuild and describe :attr:`classifier`: ``arch``, ``arch_kwargs``,
        ``num_classes``, ``input_shape``, ``mean``/``std`` (of the classifier's normalization layer) and
        ``members`` (``None``, or one dict ``{"arch": ...}`` per ensemble member)."""
        hp = self.hparams
        normalizer = find_normalizer(self.classifier)
        mean = std = None
        if normalizer is not None:
            mean, std = normalizer.mean.flatten().tolist(), normalizer.std.flatten().tolist()
        return {
            "arch": hp.arch,
            "arch_kwargs": dict(hp.arch_kwargs or {}),
            "num_classes": int(hp.num_classes),
            "input_shape": [int(s) for s in hp.input_shape],
            "mean": mean,
            "std": std,
            "members": self.member_metadata(),
        }

    def member_metadata(self) -> list[dict[str, Any]] | None:
        """Per-member descriptions of an ensemble classifier (``None``: a single network)."""
        return None

    # ------------------------------------------------------------------ steps
    def training_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(loss, logits)`` for a training batch; subclasses change the objective here."""
        logits = self(x)
        return nn.functional.cross_entropy(logits, y), logits

    def add_penalty(self, loss: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``loss + λ · penalty`` on the clean batch ``(x, y)`` when an active :attr:`penalty` is set (else ``loss``
        itself); logs ``train/penalty`` and ``train/penalty_forward_passes`` when attached to a Trainer."""
        if self.penalty is None or not self.penalty.active:
            return loss
        attached = self.attached_trainer() is not None
        rank, step = (self.global_rank, self.global_step) if attached else (0, 0)
        estimate = self.penalty(self.classifier, x, y, self.penalty.step_generator(rank, step))
        if attached:
            self.log("train/penalty", estimate.value.detach(), on_step=True, on_epoch=True, batch_size=len(y))
            self.log(
                "train/penalty_forward_passes",
                float(estimate.forward_passes),
                on_step=True,
                on_epoch=False,
                batch_size=len(y),
            )
        return loss + self.penalty.weight * estimate.value.to(loss.dtype)

    @override
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss, logits = self.training_loss(x, y)
        loss = self.add_penalty(loss, x, y)
        self.train_acc(logits.detach(), y)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(y))
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
        return loss

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str, metric: MulticlassAccuracy) -> None:
        x, y = batch
        logits = self(x)
        loss = nn.functional.cross_entropy(logits, y)
        metric(logits, y)
        self.log(f"{stage}/loss", loss, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=len(y))
        self.log(f"{stage}/acc", metric, on_epoch=True, prog_bar=True, batch_size=len(y))

    @override
    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_acc)

    @override
    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_acc)

    @override
    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, torch.Tensor]:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        logits = self(x)
        out = {"logits": logits, "pred": logits.argmax(dim=1)}
        if isinstance(batch, (tuple, list)) and len(batch) > 1:
            out["label"] = batch[1]
        return out

    def attached_trainer(self) -> pl.Trainer | None:
        """The Trainer this module is attached to, or ``None`` when it is used on its own (a test, a notebook).

        Lightning has no public "is attached" query: its public ``trainer`` property raises ``RuntimeError``
        without a Trainer, which this turns into ``None``.
        """
        try:
            return self.trainer
        except RuntimeError:
            return None

    # -------------------------------------------------------------- optimizer
    def run_length(self) -> int:
        """Scheduler steps of the whole run: ``trainer.max_epochs`` (``scheduler_interval: epoch``) or the
        run's optimizer steps (``scheduler_interval: step``); the length of a ``T_max: null`` schedule."""
        if self.attached_trainer() is None:
            raise RuntimeError("run_length() needs the module to be attached to a Trainer")
        if self.hparams.scheduler_interval == "step":
            steps = self.trainer.estimated_stepping_batches
            if not math.isfinite(steps):
                raise ValueError(
                    "lr_scheduler with T_max: null and scheduler_interval 'step' needs a finite run: "
                    "set trainer.max_epochs or trainer.max_steps"
                )
            return int(steps)
        max_epochs = self.trainer.max_epochs
        if max_epochs is None or max_epochs < 0:
            raise ValueError(
                "lr_scheduler with T_max: null follows trainer.max_epochs, which is unbounded "
                f"(got {max_epochs}); set trainer.max_epochs or give the schedule's T_max"
            )
        return max(1, int(max_epochs))

    @override
    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameters())
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        if isinstance(scheduler, RunLengthSchedule):
            scheduler.set_run_length(self.run_length())
        config: dict[str, Any] = {"scheduler": scheduler, "interval": self.hparams.scheduler_interval}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config["monitor"] = self.hparams.scheduler_monitor
        return {"optimizer": optimizer, "lr_scheduler": config}
