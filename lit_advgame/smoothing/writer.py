"""A ``BasePredictionWriter`` streaming per-example smoothing results to a TSV per rank, merged by index.

Use it with ``lit-advgame predict`` and :class:`~lit_advgame.training.smoothing.RandomizedSmoothing`
(whose ``predict_step`` runs CERTIFY or PREDICT). Each process appends its rows after every batch to
``<output_dir>/predictions_rank<r>.tsv`` (memory stays flat; a crash loses at most a batch); at
the end of the epoch all ranks meet at a barrier and rank 0 merges the files by dataset index
(duplicates removed) into ``<output_dir>/<filename>``, writes ``certified_accuracy.tsv`` (CERTIFY
only) and logs a certified-accuracy figure to a TensorBoard logger when one is attached. An error of
the merge is raised on every rank (:func:`~lit_advgame.utils.distributed.run_on_rank_zero`), so no
rank waits for a failed one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import BasePredictionWriter
from typing_extensions import override

from lit_advgame.smoothing.results import SmoothingRecords, format_radius
from lit_advgame.utils.distributed import run_on_rank_zero
from lit_advgame.utils.io import atomic_write_text


def records_from_prediction(prediction: Any) -> SmoothingRecords | None:
    """The :class:`SmoothingRecords` of one ``predict_step`` output (a dict of tensors), or ``None``."""
    if isinstance(prediction, SmoothingRecords):
        return prediction
    if not isinstance(prediction, dict) or "index" not in prediction:
        return None
    return SmoothingRecords(
        index=prediction["index"],
        label=prediction["label"],
        predict=prediction["predict"],
        radius=prediction.get("radius"),
        p_lower=prediction.get("p_lower"),
    )


class SmoothingPredictionWriter(BasePredictionWriter):
    """Write smoothing predictions per rank and merge them on rank 0.

    Args:
        output_dir: folder of the per-rank and merged files (created if needed).
        filename: name of the merged file (Cohen's columns ``idx label predict radius correct p_lower``).
        radii: radii of the ``certified_accuracy.tsv`` summary; by default the module's ``radii``
            attribute (or 0, 0.25, 0.5, 0.75, 1).
        keep_rank_files: keep ``predictions_rank<r>.tsv`` after merging.
    """

    def __init__(
        self,
        output_dir: str = "predictions",
        filename: str = "predictions.tsv",
        radii: Sequence[float] | None = None,
        keep_rank_files: bool = False,
    ) -> None:
        super().__init__(write_interval="batch")
        if not isinstance(filename, str) or not filename or "/" in filename:
            raise ValueError(f"filename must be a plain file name; got {filename!r}")
        if radii is not None and any(float(r) < 0 for r in radii):
            raise ValueError(f"radii must be >= 0; got {list(radii)}")
        self.output_dir = Path(output_dir)
        self.filename = filename
        self.radii = None if radii is None else [float(r) for r in radii]
        self.keep_rank_files = bool(keep_rank_files)
        self.merged: SmoothingRecords | None = None
        self._header_written = False

    def rank_file(self, rank: int) -> Path:
        return self.output_dir / f"predictions_rank{rank}.tsv"

    @override
    def on_predict_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.rank_file(trainer.global_rank).write_text("")
        self._header_written = False
        self.merged = None

    @override
    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        records = records_from_prediction(prediction)
        if records is None:
            raise TypeError(
                "SmoothingPredictionWriter needs predict_step to return a dict with 'index', 'label', 'predict' "
                f"(e.g. RandomizedSmoothing); got {type(prediction).__name__}"
            )
        lines = records.tsv_lines(with_header=not self._header_written)
        self._header_written = True
        with self.rank_file(trainer.global_rank).open("a") as fh:
            fh.write("\n".join(lines) + "\n")

    @override
    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_predict_epoch_end(trainer, pl_module)
        self.merged = run_on_rank_zero(trainer, lambda: self._merge(trainer, pl_module), "smoothing_prediction_writer")

    def _merge(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> SmoothingRecords:
        parts = []
        for rank in range(trainer.world_size):
            path = self.rank_file(rank)
            if path.is_file() and path.read_text().strip():
                parts.append(SmoothingRecords.read_tsv(path))
        merged = SmoothingRecords.concat(parts).merge()
        merged.write_tsv(self.output_dir / self.filename)
        if merged.radius is not None and len(merged):
            radii = (
                self.radii if self.radii is not None else list(getattr(pl_module, "radii", (0.0, 0.25, 0.5, 0.75, 1.0)))
            )
            accuracy = merged.certified_accuracy(radii)
            lines = ["radius\tcertified_accuracy"] + [f"{format_radius(r)}\t{a:.6f}" for r, a in zip(radii, accuracy)]
            lines.append(f"abstain_rate\t{merged.abstain_rate():.6f}")
            atomic_write_text(self.output_dir / "certified_accuracy.tsv", "\n".join(lines) + "\n")
            self._log_figure(trainer, pl_module, merged, radii)
        if not self.keep_rank_files:
            for rank in range(trainer.world_size):
                self.rank_file(rank).unlink(missing_ok=True)
        return merged

    @staticmethod
    def _log_figure(
        trainer: pl.Trainer, pl_module: pl.LightningModule, records: SmoothingRecords, radii: list[float]
    ) -> None:
        from lit_advgame.smoothing.plots import certified_accuracy_figure

        experiment = getattr(trainer.logger, "experiment", None) if trainer.logger is not None else None
        if experiment is None or not hasattr(experiment, "add_figure"):
            return
        sigma = getattr(pl_module.hparams, "sigma", None)
        name = f"σ={sigma:g}" if sigma is not None else "smoothed"
        experiment.add_figure(
            "predict/certified_accuracy", certified_accuracy_figure({name: records}, radii), trainer.global_step
        )
