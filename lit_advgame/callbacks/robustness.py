"""``RobustAccuracy``: PGD-k and AutoAttack robust accuracy of the tested model, in ``lit-advgame test``.

A thin shell over :mod:`lit_advgame.evaluation.robustness`: during ``trainer.test`` it attacks the test batches
(the first ``max_images`` images) of the module's pixel-space classifier (``pl_module.classifier``: an AT/TRADES
network, a TRS/GAL/ADP ensemble through its output, the base classifier of randomized smoothing), and at the end
of the test epoch

* logs ``<prefix>/clean_acc``, ``<prefix>/pgd_acc``, ``<prefix>/autoattack_acc``, ``<prefix>/worst_case_acc``,
  ``<prefix>/autoattack/<component>_acc`` (robust accuracy after each AutoAttack component, e.g. ``apgd-ce``),
  ``<prefix>/num_images`` and ``<prefix>/cost/seconds`` with ``pl_module.log`` (so they are in the printed test
  table, ``trainer.callback_metrics`` and the logger, e.g. TensorBoard);
* writes ``<filename>.json`` and ``<filename>.md`` (the table beside PGD-k) into the run folder
  (``trainer.log_dir``), atomically, on global rank 0;
* prints the Markdown table.

Add it to any config's test run with the fragment ``configs/robustness_digits.yaml``::

    lit-advgame test --config configs/adversarial_digits.yaml --config configs/robustness_digits.yaml \\
        --ckpt_path last

or on the command line (``--trainer.callbacks+=lit_advgame.callbacks.RobustAccuracy
--trainer.callbacks.evaluation.eps=0.1``). The attacks leave Lightning's inference mode themselves, so the
callback works with the default ``Trainer(inference_mode=True)``; ``AdversarialTraining``'s own robust test
metric (``test/adv_acc``) needs ``inference_mode: false``, which the fragment sets.

Under DDP each process attacks its share of the test batches (at most ``max_images / world_size`` images) and
the counts are summed over processes; ``cost/seconds`` is the attack time summed over processes. AutoAttack
needs the optional extra (``pip install -e ".[eval]"``): without it the test run stops at its start (``setup``),
with that command in the one-line error.
"""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch import nn
from typing_extensions import override

from lit_advgame.callbacks.game_settings import settings_argument
from lit_advgame.callbacks.probes import classifier_of
from lit_advgame.evaluation.robustness import (
    DEFAULT_ROBUSTNESS,
    RobustnessEvaluator,
    RobustnessResult,
    RobustnessSettings,
    require_torchattacks,
)
from lit_advgame.utils.checks import check_int

#: images the callback attacks by default (the first ones of the test batches)
DEFAULT_MAX_IMAGES = 1000


class RobustAccuracy(Callback):
    """Robust accuracy under PGD-k and AutoAttack at the end of ``trainer.test`` (see the module docstring).

    Args:
        evaluation: the threat model and attacks, a :class:`~lit_advgame.evaluation.robustness.RobustnessSettings`
            (in YAML a mapping such as ``{norm: linf, eps: 0.1, attacks: [pgd, autoattack], pgd: {steps: 20}}``).
        max_images: attack at most this many test images (the first ones); ``null``: every test image.
        prefix: first part of the logged names.
        filename: stem of the JSON and Markdown files written into the run folder.
    """

    def __init__(
        self,
        evaluation: RobustnessSettings = DEFAULT_ROBUSTNESS,
        max_images: int | None = DEFAULT_MAX_IMAGES,
        prefix: str = "robustness",
        filename: str = "robustness",
    ) -> None:
        super().__init__()
        self.settings = settings_argument(RobustnessSettings, evaluation, {}, type(self).__name__, "evaluation")
        if max_images is not None:
            check_int(max_images, "max_images", minimum=1)
        if not isinstance(prefix, str) or not prefix.strip("/"):
            raise ValueError(f"prefix must be a non-empty name such as 'robustness'; got {prefix!r}")
        if not isinstance(filename, str) or not filename or "/" in filename:
            raise ValueError(f"filename must be a file name stem such as 'robustness'; got {filename!r}")
        self.max_images = max_images
        self.prefix = prefix.strip("/")
        self.filename = filename
        self._evaluator: RobustnessEvaluator | None = None
        #: the result of the latest test run (on every process)
        self.result: RobustnessResult | None = None

    @staticmethod
    def classifier(pl_module: pl.LightningModule) -> nn.Module:
        """The module's pixel-space classifier: its ``classifier`` (the contract), else ``model``."""
        model = getattr(pl_module, "classifier", None)
        return model if isinstance(model, nn.Module) else classifier_of(pl_module, RobustAccuracy.__name__)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "test" and "autoattack" in self.settings.attacks:
            require_torchattacks()  # a missing extra stops the run at its start, before the checkpoint is loaded

    @override
    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        budget = None if self.max_images is None else math.ceil(self.max_images / trainer.world_size)
        self._evaluator = RobustnessEvaluator(self.classifier(pl_module), self.settings, max_images=budget)
        self.result = None
        s = self.settings
        attacks = " and ".join(s.describe(attack) for attack in s.attacks)
        images = "every test image" if self.max_images is None else f"at most {self.max_images} test images"
        rank_zero_info(f"{type(self).__name__}: {attacks} at {s.norm} ε = {s.eps:.6g} on {images}")

    @override
    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._evaluator is None or self._evaluator.full:
            return
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise TypeError(f"{type(self).__name__} needs (x, y) test batches; got {type(batch).__name__}")
        self._evaluator.update(batch[0], batch[1], key=(trainer.global_rank, dataloader_idx, batch_idx))

    @override
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        evaluator = self._evaluator
        if evaluator is None:
            return
        keys, attacks = evaluator.keys, list(evaluator.seconds)
        local = [evaluator.num_images, *(evaluator.counts[k] for k in keys), *(evaluator.seconds[a] for a in attacks)]
        totals = trainer.strategy.reduce(
            torch.tensor(local, dtype=torch.float64, device=pl_module.device), reduce_op="sum"
        ).tolist()
        num_images, counts, seconds = int(totals[0]), totals[1 : 1 + len(keys)], totals[1 + len(keys) :]
        self._evaluator = None
        if num_images == 0:
            rank_zero_warn(f"{type(self).__name__}: no test image was evaluated; nothing to report")
            return
        self.result = evaluator.result(
            counts={key: int(count) for key, count in zip(keys, counts)},
            num_images=num_images,
            seconds=dict(zip(attacks, seconds)),
            model_name=type(pl_module).__name__,
        )
        for name, value in self.result.metrics(self.prefix).items():
            pl_module.log(name, value, sync_dist=True)  # already summed: the mean of equal values
        folder = trainer.log_dir  # a collective call under DDP: every rank makes it
        if trainer.is_global_zero:
            if folder is not None:
                json_path, _ = self.result.save(folder, self.filename)
                rank_zero_info(f"{type(self).__name__}: wrote {json_path} and {json_path.with_suffix('.md').name}")
            rank_zero_info(self.result.to_markdown())
