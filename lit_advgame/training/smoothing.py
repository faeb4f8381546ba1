"""Randomized smoothing (Cohen, Rosenfeld & Kolter, ICML 2019) as a LightningModule.

Training (Cohen's ``train.py``): cross-entropy of the base classifier on Gaussian-noised images
``x + ε``, ``ε ~ N(0, σ² I)``, added to the **[0, 1] pixel-space** image before the model's in-model
normalizer and **not clamped** (Sec. 3, "training with noise"). Labels are unchanged.

Evaluation: validation and test report both

* ``<stage>/acc`` and ``<stage>/loss`` — the base classifier **under noise** (Cohen's convention: his
  training script's test accuracy is accuracy under noise), with per-example noise seeded from
  ``(seed, dataset index)``, and
* ``<stage>/acc_clean`` and ``<stage>/loss_clean`` — the base classifier on clean images.

``test`` and ``predict`` evaluate the smoothed classifier at σ = ``certify_sigma`` (default: the training
``sigma``), so a model can be certified at another noise level than it was trained with, as Cohen's
``certify.py`` allows; validation always uses the training σ.

With ``certify=True``, ``test`` also runs CERTIFY (:class:`~lit_advgame.smoothing.certify.Smooth`,
with ``n0``, ``n``, ``alpha``) on the selected test examples and logs, once per run, the certified
accuracy at each radius of ``radii`` (``test/certified_acc@<r>``), the smoothed classifier's
accuracy and abstain rate (``test/smoothed_acc``, ``test/abstain_rate``) and the number of certified
examples, plus a certified-accuracy-vs-radius figure and a histogram of radii on TensorBoard and a
TSV of per-example results (``certify_test.tsv`` in the logger's folder). ``predict`` returns
per-example CERTIFY (or PREDICT) results keyed by dataset index; pair it with
:class:`~lit_advgame.smoothing.writer.SmoothingPredictionWriter` to stream them to disk.

Results are merged by dataset index over all processes, so DDP's padded test sampler does not
double-count, and per-example seeding makes them independent of batch order and world size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from pytorch_lightning.utilities import rank_zero_warn
from torch import nn
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from lit_advgame.smoothing.certify import Smooth
from lit_advgame.smoothing.indices import BatchIndexTracker
from lit_advgame.smoothing.noise import (
    STREAM_CERTIFY,
    STREAM_PREDICT,
    STREAM_TEST,
    STREAM_VALIDATION,
    add_gaussian_noise,
    add_per_example_noise,
    example_generators,
)
from lit_advgame.smoothing.results import SmoothingRecords, format_radius
from lit_advgame.smoothing.statistics import check_alpha, check_sigma
from lit_advgame.training.base import ClassifierModule
from lit_advgame.utils.checks import check_choice, check_int
from lit_advgame.vocabulary import PREDICT_METHODS, PredictMethod

EVALUATION_OPTIONS = (
    "certify_sigma",
    "certify",
    "n0",
    "n",
    "alpha",
    "certify_batch_size",
    "radii",
    "certify_skip",
    "certify_limit",
    "predict_method",
    "seed",
)
"""Arguments kept out of the checkpoint's hyper-parameters: LightningCLI (2.6) overwrites the config with
a checkpoint's hyper-parameters on ``test/predict --ckpt_path``, which would silently replace the
certification settings of the config or command line by those used at training time."""


class RandomizedSmoothing(ClassifierModule):
    """Gaussian data augmentation training and CERTIFY/PREDICT evaluation of randomized smoothing.

    Args:
        sigma: noise level σ > 0 of training and validation (std in [0, 1] pixel units; Cohen et al. use
            0.12, 0.25, 0.5, 1.0). A hyper-parameter of the trained model, restored from the checkpoint.
        certify_sigma: σ of the smoothed classifier of ``test``/``predict`` (CERTIFY/PREDICT and the noisy
            ``test/acc``, ``test/loss``); ``None`` (default): ``sigma``. Cohen's ``certify.py`` takes σ as an
            argument too: a base model may be certified at another σ than it was trained with.
        certify: run CERTIFY in ``test`` (in addition to the noisy/clean accuracy of the base model).
        n0: selection samples of CERTIFY (Cohen: 100).
        n: estimation samples of CERTIFY and samples of PREDICT (Cohen: 100000).
        alpha: failure probability α of CERTIFY/PREDICT (Cohen: 0.001).
        certify_batch_size: noisy images per forward pass while sampling (Cohen: 400-1000).
        radii: radii at which certified accuracy is reported.
        certify_skip: certify only examples whose dataset index is a multiple of this (Cohen's ``--skip``).
        certify_limit: certify at most this many examples (those with ``index // certify_skip < limit``).
        predict_method: what ``predict`` runs: ``"certify"`` (rows with radius) or ``"predict"``.
        seed: seed of all evaluation noise, combined per example with the dataset index (>= 0).

    The evaluation options (``certify_sigma``, ``certify`` ... ``seed``) are plain attributes, deliberately left out of
    the checkpoint's hyper-parameters (see ``EVALUATION_OPTIONS``) so that
    ``lit-advgame test/predict --config ... --ckpt_path ...`` uses the values of the config and command
    line; ``sigma`` is a hyper-parameter of the trained model: a ``--ckpt_path`` run with another ``sigma`` stops
    with an error (set ``certify_sigma`` to certify at another σ).

    The other arguments (``**kwargs``: ``arch``, ``num_classes``, ``input_shape``, ``mean``, ``std``, ``arch_kwargs``,
    ``weights``, ``optimizer``, ``lr_scheduler``, ``scheduler_interval``, ``scheduler_monitor``) are
    those of :class:`~lit_advgame.training.base.ClassifierModule`.

    The classifier contract: :attr:`classifier` is the *base* classifier f (pixel space, normalization inside);
    the smoothed classifier g, whose prediction and certificates ``test``/``predict`` report, is
    :meth:`smoothed_classifier` (a :class:`~lit_advgame.smoothing.certify.Smooth` around f).
    """

    hparams_ignore = ("optimizer", "lr_scheduler", *EVALUATION_OPTIONS)

    def __init__(
        self,
        sigma: float = 0.25,
        certify_sigma: float | None = None,
        certify: bool = True,
        n0: int = 100,
        n: int = 100_000,
        alpha: float = 0.001,
        certify_batch_size: int = 1000,
        radii: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
        certify_skip: int = 1,
        certify_limit: int | None = None,
        predict_method: PredictMethod = "certify",
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        check_sigma(sigma)
        if certify_sigma is not None:
            check_sigma(certify_sigma, "certify_sigma")
        check_int(n0, "n0", minimum=1)
        check_int(n, "n", minimum=1)
        check_alpha(alpha)
        check_int(certify_batch_size, "certify_batch_size", minimum=1)
        radii = [float(r) for r in radii]
        if not radii or any(not math.isfinite(r) or r < 0 for r in radii):
            raise ValueError(f"radii must be a non-empty list of finite radii >= 0; got {radii}")
        check_int(certify_skip, "certify_skip", minimum=1)
        if certify_limit is not None:
            check_int(certify_limit, "certify_limit", minimum=1)
        check_choice(predict_method, "predict_method", PREDICT_METHODS)
        check_int(seed, "seed", minimum=0)
        super().__init__(**kwargs)
        self.certify_sigma = None if certify_sigma is None else float(certify_sigma)
        self.certify = bool(certify)
        self.n0, self.n, self.alpha = n0, n, float(alpha)
        self.certify_batch_size = certify_batch_size
        self.radii = radii
        self.certify_skip, self.certify_limit = certify_skip, certify_limit
        self.predict_method = predict_method
        self.seed = seed
        num_classes = self.hparams.num_classes
        self.val_acc_clean = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_acc_clean = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self._indices = BatchIndexTracker()
        self._certify_parts: list[SmoothingRecords] = []
        self.certified: SmoothingRecords | None = None
        """Per-example CERTIFY results of the last ``test`` run (merged over ranks, sorted by index)."""

    # ----------------------------------------------------------------- smoothing
    checkpoint_conflict_hints = {
        "sigma": "sigma is the checkpoint's training noise; certify at another noise level with "
        "--model.init_args.certify_sigma instead"
    }
    """Explanations the CLI adds to a ``--ckpt_path`` hyper-parameter conflict."""

    @property
    def sigma(self) -> float:
        """σ of training and validation (the trained model's hyper-parameter)."""
        return float(self.hparams.sigma)

    @property
    def eval_sigma(self) -> float:
        """σ of the smoothed classifier in ``test``/``predict``: ``certify_sigma``, or ``sigma`` if not given."""
        return self.sigma if self.certify_sigma is None else self.certify_sigma

    def smoothed_classifier(self) -> Smooth:
        """The smoothed classifier ``g`` of the current base model, at σ = :attr:`eval_sigma`."""
        return Smooth(self.classifier, self.hparams.num_classes, self.eval_sigma)

    @override
    def training_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy on ``x + N(0, σ² I)`` (pixel space, unclamped; global RNG seeded by ``seed_everything``)."""
        logits = self(add_gaussian_noise(x, self.sigma))
        return nn.functional.cross_entropy(logits, y), logits

    def _selected(self, index: torch.Tensor) -> torch.Tensor:
        """Bool mask of the examples CERTIFY/PREDICT run on (``certify_skip``/``certify_limit``)."""
        skip, limit = self.certify_skip, self.certify_limit
        mask = index % skip == 0
        if limit is not None:
            mask &= index // skip < limit
        return mask

    # ----------------------------------------------------------------- evaluation
    def _evaluate_noisy(self, batch: Any, batch_idx: int, dataloader_idx: int, stage: str) -> torch.Tensor:
        x, y = batch[0], batch[1]
        index = self._indices.indices(self.trainer, stage, batch_idx, dataloader_idx, len(y))
        stream = STREAM_VALIDATION if stage == "val" else STREAM_TEST
        generators = example_generators(self.seed, index.tolist(), x.device, stream)
        sigma = self.sigma if stage == "val" else self.eval_sigma
        logits = self(add_per_example_noise(x, sigma, generators))
        logits_clean = self(x)
        metric = self.val_acc if stage == "val" else self.test_acc
        metric_clean = self.val_acc_clean if stage == "val" else self.test_acc_clean
        metric(logits, y)
        metric_clean(logits_clean, y)
        size = len(y)
        self.log(
            f"{stage}/loss",
            nn.functional.cross_entropy(logits, y),
            on_epoch=True,
            prog_bar=True,
            sync_dist=True,
            batch_size=size,
        )
        self.log(f"{stage}/acc", metric, on_epoch=True, prog_bar=True, batch_size=size)
        self.log(
            f"{stage}/loss_clean",
            nn.functional.cross_entropy(logits_clean, y),
            on_epoch=True,
            sync_dist=True,
            batch_size=size,
        )
        self.log(f"{stage}/acc_clean", metric_clean, on_epoch=True, prog_bar=True, batch_size=size)
        return index

    @override
    def on_validation_epoch_start(self) -> None:
        self._indices.reset()

    @override
    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate_noisy(batch, batch_idx, dataloader_idx, "val")

    @override
    def on_test_epoch_start(self) -> None:
        self._indices.reset()
        self._certify_parts = []
        self.certified = None

    @override
    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        index = self._evaluate_noisy(batch, batch_idx, dataloader_idx, "test")
        if self.certify:
            records = self._run_smoothing(batch[0], batch[1], index, "certify")
            if len(records):
                self._certify_parts.append(records)

    @override
    def on_test_epoch_end(self) -> None:
        if not self.certify:
            return
        records = _gather_records(SmoothingRecords.concat(self._certify_parts)).merge()
        self.certified = records
        if len(records) == 0:
            rank_zero_warn("certify=True but no test example was selected (check certify_skip/certify_limit)")
            return
        radii = self.radii
        for radius, accuracy in zip(radii, records.certified_accuracy(radii)):
            self.log(f"test/certified_acc@{format_radius(radius)}", float(accuracy), sync_dist=True)
        self.log("test/smoothed_acc", records.accuracy(), sync_dist=True)
        self.log("test/abstain_rate", records.abstain_rate(), sync_dist=True)
        self.log("test/certified_examples", float(len(records)), sync_dist=True)
        self.log("test/certify_sigma", self.eval_sigma, sync_dist=True)
        log_dir = self.trainer.log_dir  # a collective call under DDP: every rank must make it
        if self.trainer.is_global_zero:
            self._write_certification(records, log_dir)

    @override
    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, torch.Tensor]:
        """Per-example CERTIFY (or PREDICT) rows: ``index``, ``label``, ``predict``, ``correct``, and
        ``radius``/``p_lower`` for CERTIFY or ``p_lower`` = binomial p-value for PREDICT.

        Only examples selected by ``certify_skip``/``certify_limit`` get rows; ``label`` is −1 for
        unlabelled batches."""
        if isinstance(batch, (tuple, list)):
            x = batch[0]
            y = batch[1] if len(batch) > 1 else None
        else:
            x, y = batch, None
        if y is None:
            y = torch.full((x.shape[0],), -1, dtype=torch.int64, device=x.device)
        index = self._indices.indices(self.trainer, "predict", batch_idx, dataloader_idx, x.shape[0])
        records = self._run_smoothing(x, y, index, self.predict_method)
        out = {"index": records.index, "label": records.label, "predict": records.predict, "correct": records.correct}
        if records.radius is not None:
            out["radius"] = records.radius
        if records.p_lower is not None:
            out["p_lower"] = records.p_lower
        return out

    @override
    def on_predict_epoch_start(self) -> None:
        self._indices.reset()

    def _run_smoothing(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor, method: str) -> SmoothingRecords:
        keep = self._selected(index)
        index, x_sel, y_sel = index[keep], x[keep.to(x.device)], y[keep.to(y.device)]
        smooth = self.smoothed_classifier()
        empty = torch.zeros(0)
        if method == "certify":
            if len(index) == 0:
                return SmoothingRecords(index=index, label=y_sel.cpu(), predict=empty, radius=empty, p_lower=empty)
            generators = example_generators(self.seed, index.tolist(), x.device, STREAM_CERTIFY)
            result = smooth.certify_batch(x_sel, self.n0, self.n, self.alpha, self.certify_batch_size, generators)
            return SmoothingRecords(
                index=index, label=y_sel.cpu(), predict=result.prediction, radius=result.radius, p_lower=result.p_lower
            )
        if len(index) == 0:
            return SmoothingRecords(index=index, label=y_sel.cpu(), predict=empty, p_lower=empty)
        generators = example_generators(self.seed, index.tolist(), x.device, STREAM_PREDICT)
        result = smooth.predict_batch(x_sel, self.n, self.alpha, self.certify_batch_size, generators)
        return SmoothingRecords(index=index, label=y_sel.cpu(), predict=result.prediction, p_lower=result.p_value)

    def _write_certification(self, records: SmoothingRecords, log_dir: str | None) -> None:
        """Rank 0: TSV of per-example results, figure and radius histogram on TensorBoard."""
        if log_dir:
            records.write_tsv(f"{log_dir}/certify_test.tsv")
        experiment = getattr(self.logger, "experiment", None) if self.logger is not None else None
        if experiment is None or not hasattr(experiment, "add_figure"):
            return
        from lit_advgame.smoothing.plots import certified_accuracy_figure

        figure = certified_accuracy_figure({f"σ={self.eval_sigma:g}": records}, self.radii)
        experiment.add_figure("test/certified_accuracy", figure, self.global_step)
        certified = records.radius[~records.abstained]
        if len(certified) and hasattr(experiment, "add_histogram"):
            experiment.add_histogram("test/certified_radius", certified, self.global_step)


def _gather_records(records: SmoothingRecords) -> SmoothingRecords:
    """All ranks' records (every rank gets the concatenation); the input itself without DDP."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return records
    gathered: list[SmoothingRecords | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, records)
    return SmoothingRecords.concat(gathered)
