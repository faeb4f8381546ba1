"""Learning-rate schedules whose length follows the run (``trainer.max_epochs``).

torch's :class:`~torch.optim.lr_scheduler.CosineAnnealingLR` needs ``T_max`` in the config; a config
that hard-codes ``T_max: 8`` restarts the cosine at epoch 8 when the run is made longer with
``--trainer.max_epochs 30``. :class:`CosineAnnealingLR` here takes ``T_max: null`` (the default) for
"the whole run": :meth:`ClassifierModule.configure_optimizers
<lit_advgame.training.base.ClassifierModule.configure_optimizers>` sets it to ``trainer.max_epochs``
(``scheduler_interval: epoch``) or to the run's optimizer steps (``scheduler_interval: step``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from typing_extensions import override

from lit_advgame.utils.checks import check_int, check_positive


class RunLengthSchedule:
    """Mixin of schedules whose length can be the run's: :meth:`set_run_length` is called by the module."""

    follows_run: bool = False
    """Whether the length is the run's (set by :meth:`set_run_length`, kept across a resume)."""

    def set_run_length(self, length: int) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class CosineAnnealingLR(RunLengthSchedule, torch.optim.lr_scheduler.CosineAnnealingLR):
    """Cosine annealing from the optimizer's LR to ``eta_min`` over ``T_max`` scheduler steps, without restarts.

    ``lr_t = eta_min + (lr_0 - eta_min) · (1 + cos(π · min(t, T_max) / T_max)) / 2`` (closed form; constant
    ``eta_min`` after ``T_max``).

    Args:
        optimizer: the wrapped optimizer.
        T_max: length of the schedule in scheduler steps; ``None`` (default): the whole run, i.e.
            ``trainer.max_epochs`` epochs (or the run's optimizer steps with ``scheduler_interval: step``),
            set when training starts. A run resumed with another ``max_epochs`` anneals to its new end.
        eta_min: final learning rate (>= 0).
        last_epoch: index of the last step (torch's convention; -1 to start).
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, T_max: int | None = None, eta_min: float = 0.0, last_epoch: int = -1
    ) -> None:
        if T_max is not None:
            check_int(T_max, "T_max", minimum=1)
        check_positive(eta_min, "eta_min", allow_zero=True)
        self.follows_run = T_max is None
        # until set_run_length is called the schedule is constant: T_max = inf gives cos(0) = 1
        super().__init__(
            optimizer, T_max=T_max if T_max is not None else math.inf, eta_min=eta_min, last_epoch=last_epoch
        )

    def set_run_length(self, length: int) -> None:
        """Anneal over ``length`` steps when ``T_max`` was ``None`` (no-op for an explicit ``T_max``)."""
        check_int(length, "T_max (the run's length)", minimum=1)
        if self.follows_run:
            self.T_max = length

    @override
    def get_lr(self) -> list[float]:
        t = min(self.last_epoch, self.T_max)
        factor = (1 + math.cos(math.pi * t / self.T_max)) / 2
        return [self.eta_min + (base - self.eta_min) * factor for base in self.base_lrs]

    _get_closed_form_lr = get_lr

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the schedule's progress; a length that follows the run stays the current run's."""
        T_max, follows_run = self.T_max, self.follows_run
        super().load_state_dict(state_dict)
        self.follows_run = follows_run
        if follows_run:
            self.T_max = T_max
