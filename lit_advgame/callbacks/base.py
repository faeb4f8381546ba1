"""Base class of the validation callbacks: fixed probe set, schedule, rank-zero work, epoch-step logging.

Life cycle of a :class:`ProbeCallback`:

* ``setup`` (every rank, at the start of ``fit`` and ``validate``): validate the configuration
  against the model and data and draw the fixed, seeded probe set (kept on the CPU). Configuration errors therefore stop
  the run at its start, on every rank alike, instead of after the first training epoch. Then rank 0 announces
  the cost it plans (:meth:`ProbeCallback.planned_forward_passes`), per run, per epoch and over ``max_epochs``:
  ``"<CallbackName>: plans <n> forward passes per run (<what they are>); every <k> epoch(s): ~<n/k> per epoch, <N>
  over max_epochs=<e>"``.
* ``on_validation_epoch_end``: skipped during the sanity check; during ``fit`` it runs every
  ``every_n_epochs`` epochs (epochs ``every_n_epochs - 1``, ``2 * every_n_epochs - 1``, ...) and at
  most once per epoch; under ``trainer.validate`` it always runs. Only global rank 0 computes
  and logs. The other ranks go on at once: nothing inside the computation communicates between
  processes (the classifier ``pl_module.model`` is called directly, not through the DDP wrapper),
  so no rank can wait on a collective that rank 0 never joins.
* The work runs outside Lightning's inference mode with grad enabled
  (:func:`~lit_advgame.callbacks.probes.autograd_allowed`), with the classifier in eval mode
  (each module's mode is restored after), so the default ``Trainer(inference_mode=True)`` works.

Logging: scalars use the **epoch** as the step (``trainer.current_epoch``), not the global step
that Lightning's own metrics use. With a :class:`~pytorch_lightning.loggers.TensorBoardLogger`
they are written with ``experiment.add_scalar(tag, value, global_step=epoch)`` and figures with
``experiment.add_figure(tag, figure, global_step=epoch)``; other loggers get
``log_metrics(metrics, step=epoch)`` (and no figures). Every run prints
``"<CallbackName>: <n> forward passes, <t>s (epoch <e>)"`` with ``rank_zero_info`` and logs the
same two numbers as ``<prefix>/cost/forward_passes`` and ``<prefix>/cost/seconds``; a forward
pass is one image through one network (an ensemble's forward counts once per member, so costs
scale with the number of members: use ``every_n_epochs`` or smaller budgets for big ensembles).
The latest scalars are also kept in :attr:`ProbeCallback.last_metrics` and every run's in
:attr:`ProbeCallback.history`.

Resuming: ``history``, ``last_metrics`` and the last computed fit epoch are the callback's
``state_dict`` and are saved in Lightning checkpoints (key :attr:`ProbeCallback.state_key`, which tells
apart two callbacks of one class by prefix, probe set and schedule); ``fit --ckpt_path`` restores them,
so a resumed run neither recomputes nor re-logs an epoch that the checkpoint already covers.
"""

from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as pl
import torch
from matplotlib.figure import Figure
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_info
from torch import nn
from typing_extensions import override

from lit_advgame.callbacks.probes import (
    ForwardCounter,
    autograd_allowed,
    check_probe_tensors,
    classifier_of,
    members_of,
    module_device,
    select_probe_set,
)
from lit_advgame.data.base import SPLITS
from lit_advgame.interactions import eval_mode
from lit_advgame.utils.checks import check_choice, check_int
from lit_advgame.vocabulary import Split

Metrics = dict[str, float]
Figures = dict[str, Figure]


def log_scalars(trainer: pl.Trainer, metrics: Metrics, epoch: int) -> None:
    """Write ``metrics`` with the epoch as step to every logger of ``trainer`` (call on rank 0 only)."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            experiment = logger.experiment
            for tag, value in metrics.items():
                experiment.add_scalar(tag, value, global_step=epoch)
            experiment.flush()
        else:
            logger.log_metrics(metrics, step=epoch)


def log_figures(trainer: pl.Trainer, figures: Figures, epoch: int) -> None:
    """Add ``figures`` with the epoch as step to the TensorBoard loggers of ``trainer`` (rank 0 only)."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            experiment = logger.experiment
            for tag, figure in figures.items():
                experiment.add_figure(tag, figure, global_step=epoch, close=False)
            experiment.flush()


#: probe examples of a callback (the transferability callback's default is 64)
DEFAULT_PROBE_SIZE = 16


class ProbeCallback(Callback):
    """A validation callback computing metrics on a fixed probe set (see the module docstring).

    The probe settings are defined here once: subclasses take their own options and forward the
    rest (``**kwargs``) to this constructor, so LightningCLI shows these options for every callback.

    Args:
        probe_size: number of probe examples (>= 1).
        probe_split: split of the DataModule they come from (``"train"``, ``"val"`` or ``"test"``).
        seed: seed of the probe subset and of every random draw of the computation.
        batch_size: images per forward pass.
        every_n_epochs: run every this many epochs (>= 1).
        prefix: first part of every logged tag.
        probe_x, probe_y: optional probe tensors (images in [0, 1] and labels) used instead of the
            DataModule (the first ``probe_size`` of them).

    Subclasses implement :meth:`compute` and may extend :meth:`check_setup` and :meth:`counted_modules`.
    """

    def __init__(
        self,
        *,
        probe_size: int = DEFAULT_PROBE_SIZE,
        probe_split: Split = "val",
        seed: int = 0,
        batch_size: int = 256,
        every_n_epochs: int = 1,
        prefix: str,
        probe_x: Any = None,
        probe_y: Any = None,
    ) -> None:
        super().__init__()
        check_int(probe_size, "probe_size", minimum=1)
        check_choice(probe_split, "probe_split", SPLITS)
        check_int(seed, "seed", minimum=0)
        check_int(batch_size, "batch_size", minimum=1)
        check_int(every_n_epochs, "every_n_epochs", minimum=1)
        if not isinstance(prefix, str) or not prefix.strip("/"):
            raise ValueError(f"prefix must be a non-empty tag prefix such as 'interaction'; got {prefix!r}")
        self.probe_size = probe_size
        self.probe_split = probe_split
        self.seed = seed
        self.batch_size = batch_size
        self.every_n_epochs = every_n_epochs
        self.prefix = prefix.strip("/")
        self._given = None
        if probe_x is not None or probe_y is not None:
            self._given = check_probe_tensors(probe_x, probe_y, type(self).__name__)
            if probe_size > self._given[0].shape[0]:
                raise ValueError(
                    f"{type(self).__name__}: probe_size={probe_size} is larger than the {self._given[0].shape[0]} "
                    "given probe examples"
                )
        self._probe: tuple[torch.Tensor, torch.Tensor] | None = None
        self._on_device: tuple[torch.device, torch.Tensor, torch.Tensor] | None = None
        self._last_fit_epoch: int | None = None
        self.last_metrics: Metrics = {}
        self.history: list[tuple[int, Metrics]] = []

    @property
    def name(self) -> str:
        return type(self).__name__

    # ----------------------------------------------------------------------------- checkpoint state
    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(
            prefix=self.prefix,
            probe_size=self.probe_size,
            probe_split=self.probe_split,
            seed=self.seed,
            every_n_epochs=self.every_n_epochs,
        )

    @override
    def state_dict(self) -> dict[str, Any]:
        """``history``, ``last_metrics`` and the last fit epoch computed (saved in checkpoints)."""
        return {
            "history": [(int(epoch), dict(metrics)) for epoch, metrics in self.history],
            "last_metrics": dict(self.last_metrics),
            "last_fit_epoch": self._last_fit_epoch,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (a resumed ``fit`` continues the history without repeating an epoch)."""
        self.history = [(int(epoch), dict(metrics)) for epoch, metrics in state_dict.get("history", [])]
        self.last_metrics = dict(state_dict.get("last_metrics", {}))
        self._last_fit_epoch = state_dict.get("last_fit_epoch")

    # ----------------------------------------------------------------------------- hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage not in ("fit", "validate"):
            return  # test/predict runs never call on_validation_epoch_end: no probes needed
        model = classifier_of(pl_module, self.name)
        x, y = select_probe_set(trainer, self.probe_size, self.probe_split, self.seed, self.name, self._given)
        self.check_setup(model, x, y)
        self._probe = (x, y)
        self._on_device = None
        self.announce_cost(trainer, model, x)

    def announce_cost(self, trainer: pl.Trainer, model: nn.Module, x: torch.Tensor) -> None:
        """Print (rank 0) the forward passes a run plans (:meth:`planned_forward_passes`), per run, per epoch and,
        during ``fit``, over ``trainer.max_epochs``; nothing when the callback plans none."""
        planned = self.planned_forward_passes(model, x)
        if planned is None:
            return
        passes, detail = planned
        line = f"{self.name}: plans {passes:,} forward passes per run ({detail})"
        if trainer.state.fn == "fit":
            line += f"; every {self.every_n_epochs} epoch(s): ~{passes / self.every_n_epochs:,.0f} per epoch"
            max_epochs = trainer.max_epochs
            if max_epochs is not None and max_epochs > 0:
                line += f", {passes * (max_epochs // self.every_n_epochs):,} over max_epochs={max_epochs}"
        rank_zero_info(line)

    def should_run(self, trainer: pl.Trainer) -> bool:
        """Whether this validation epoch computes the metrics (rank-independent)."""
        if trainer.sanity_checking:
            return False
        if trainer.state.fn != "fit":
            return True
        epoch = trainer.current_epoch
        return (epoch + 1) % self.every_n_epochs == 0 and self._last_fit_epoch != epoch

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.should_run(trainer):
            return
        epoch = trainer.current_epoch
        if trainer.state.fn == "fit":
            self._last_fit_epoch = epoch
        if not trainer.is_global_zero:
            return
        if self._probe is None:
            raise RuntimeError(f"{self.name}: setup() has not run; attach the callback to the Trainer")
        model = classifier_of(pl_module, self.name)
        start = time.perf_counter()
        with autograd_allowed(), eval_mode(model), ForwardCounter(self.counted_modules(model)) as counter:
            x, y = self._probe_on(module_device(model))
            metrics, figures = self.compute(model, x, y, epoch)
        seconds = time.perf_counter() - start
        metrics[f"{self.prefix}/cost/forward_passes"] = float(counter.count)
        metrics[f"{self.prefix}/cost/seconds"] = seconds
        self.last_metrics = dict(metrics)
        self.history.append((epoch, dict(metrics)))
        log_scalars(trainer, metrics, epoch)
        log_figures(trainer, figures, epoch)
        rank_zero_info(f"{self.name}: {counter.count} forward passes, {seconds:.1f}s (epoch {epoch})")

    # ----------------------------------------------------------------------------- subclass API
    def check_setup(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        """Validate the configuration against the classifier and the probe images (raise ValueError)."""

    def planned_forward_passes(self, model: nn.Module, x: torch.Tensor) -> tuple[int, str] | None:
        """The forward passes one run plans on the probe images ``x``, counted as the cost line counts them (one
        image through one network), and a short account of them; ``None`` (the default): nothing is announced."""
        return None

    def networks(self, model: nn.Module) -> int:
        """How many networks one forward pass of ``model`` counts (:meth:`counted_modules`)."""
        return len(self.counted_modules(model))

    def counted_modules(self, model: nn.Module) -> list[nn.Module]:
        """Modules whose forward passes are counted in the cost line: the classifier, or an ensemble's members."""
        return members_of(model) or [model]

    def compute(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epoch: int) -> tuple[Metrics, Figures]:
        """Metrics (tag -> value) and figures (tag -> Figure) for the probes ``(x, y)`` on the model's device."""
        raise NotImplementedError

    # ----------------------------------------------------------------------------- helpers
    def _probe_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The probe set on ``device`` (moved once per device; called outside inference mode)."""
        if self._on_device is None or self._on_device[0] != device:
            x, y = self._probe
            self._on_device = (device, x.to(device), y.to(device))
        return self._on_device[1], self._on_device[2]

    def tag(self, *parts: str) -> str:
        return "/".join((self.prefix, *parts))
