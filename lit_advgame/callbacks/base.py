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

Logging (:mod:`lit_advgame.utils.tensorboard`): scalars use the **epoch** as the step (``trainer.current_epoch``),
not the global step that Lightning's own metrics use. A TensorBoard logger gets each estimate under its tag and,
for an estimate with a standard error (a metric ``<tag>_stderr``), the margins ``zz_margin/<tag>/lower`` and
``zz_margin/<tag>/upper`` (value ∓ 1 SE) instead of a ``_stderr`` card; figures (``add_figure``) and image grids
(``add_image``: clean probes, adversarial probes, amplified perturbations) with ``log_figure``; and, once per run
(written by the last probe callback at ``setup``, global rank 0), a Custom Scalars layout that draws every
callback's estimates as value ± 1 SE charts (:meth:`ProbeCallback.charts`), with the cost last. Other loggers get
``log_metrics(metrics, step=epoch)`` with the metrics as computed (``_stderr`` included; no figures). Every run
prints ``"<CallbackName>: <n> forward passes, <t>s (epoch <e>)"`` with ``rank_zero_info`` and logs the same two
numbers as ``zz_cost/<prefix>/forward_passes`` and ``zz_cost/<prefix>/seconds`` (one group of cost counters that
TensorBoard sorts last; an estimate's masked inputs are ``zz_cost/<prefix>/masked_forward_passes``); a forward
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

import re
import time
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
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
from lit_advgame.utils.tensorboard import (
    COST_GROUP,
    Chart,
    Layout,
    cost_tag,
    log_figures,
    log_scalars,
    merge_layouts,
    tensorboard_writers,
    write_layout,
)
from lit_advgame.vocabulary import Split

Metrics = dict[str, float]
#: tag -> matplotlib Figure or (3, H, W) image grid (see :func:`~lit_advgame.utils.tensorboard.log_figures`)
Figures = dict[str, Any]

#: the last category of the Custom Scalars layout: every callback's cost counters
COST_CHARTS: Layout = {
    "cost (all callbacks)": [
        Chart("forward passes per run (one image through one network)", (f"^{COST_GROUP}/.+/forward_passes$",)),
        Chart("seconds per run", (f"^{COST_GROUP}/.+/seconds$",)),
        Chart("masked inputs of the estimates", (f"^{COST_GROUP}/.+/masked_forward_passes$",)),
    ]
}


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
        log_figure: also log the callback's figures and image grids (TensorBoard only).
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
        log_figure: bool = True,
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
        self.log_figure = bool(log_figure)
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
        self._layout_dirs: set[str] = set()
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
        self.write_layout(trainer)

    def write_layout(self, trainer: pl.Trainer) -> None:
        """On global rank 0, the last probe callback of ``trainer`` writes the Custom Scalars layout of all of them
        (:meth:`charts`, then :data:`COST_CHARTS`) to the TensorBoard loggers, once per log dir."""
        probes = [cb for cb in trainer.callbacks if isinstance(cb, ProbeCallback)]
        if not trainer.is_global_zero or not probes or probes[-1] is not self:
            return
        dirs = {str(writer.log_dir) for writer in tensorboard_writers(trainer)}
        if dirs <= self._layout_dirs:
            return
        self._layout_dirs |= set(write_layout(trainer, merge_layouts([cb.charts() for cb in probes] + [COST_CHARTS])))

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
        metrics[self.cost_tag("forward_passes")] = float(counter.count)
        metrics[self.cost_tag("seconds")] = seconds
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
        """Metrics (tag -> value; an estimate's standard error as ``<tag>_stderr``) and figures (tag -> Figure or
        image grid; built only when :attr:`log_figure` is set) for the probes ``(x, y)`` on the model's device."""
        raise NotImplementedError

    def charts(self) -> Layout:
        """The callback's part of the Custom Scalars layout (category -> charts; known after ``setup``); none by
        default."""
        return {}

    # ----------------------------------------------------------------------------- helpers
    def _probe_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The probe set on ``device`` (moved once per device; called outside inference mode)."""
        if self._on_device is None or self._on_device[0] != device:
            x, y = self._probe
            self._on_device = (device, x.to(device), y.to(device))
        return self._on_device[1], self._on_device[2]

    def tag(self, *parts: str) -> str:
        return "/".join((self.prefix, *parts))

    def cost_tag(self, name: str) -> str:
        """``zz_cost/<prefix>/<name>``: a cost counter of this callback (one group TensorBoard sorts last)."""
        return cost_tag(self.prefix, name)

    def pattern(self, *parts: str, then: str = "$") -> str:
        """A regular expression (for multi-line charts) matching the tags that start with :meth:`tag` ``(*parts)``
        followed by the expression ``then`` (by default: exactly that tag)."""
        return f"^{re.escape(self.tag(*parts))}{then}"
