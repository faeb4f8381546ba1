"""``AnalysisWriter``: save an interaction analysis per image, exactly once, resumable; aggregate it at the end.

The writer of :class:`~lit_advgame.analysis.module.InteractionAnalysis`. Saving is
:class:`~lit_advgame.predict.writer.AdversarialWriter`'s: the output-folder lock, ``meta.json`` written once and
compared on every resumed run (a folder never mixes two analyses), one atomic shard per batch written by the rank
that ran it, the saved dataset indices handed to the module at set-up (a restarted run analyses only the missing
images), and at the end a completeness check and the merge into ``analysis.pt`` on global rank 0.

Then rank 0 aggregates the merged records per model (:func:`~lit_advgame.analysis.results.aggregate`) and writes,
into ``output_dir``:

* ``summary.json`` -- per model the attack statistics and, per order, ``I^(m)`` clean and adversarial, ``ΔI^(m)``,
  ``ΔJ^(m)`` with standard errors, and the share; ``summary.md`` -- the same as Markdown tables (also printed);
* ``per_image.csv`` (one row per image, model and order) and ``aggregate.csv`` (one row per model and order);
* ``figures/interactions_<model>.png`` (``I^(m)`` normal vs adversarial, the paper's Figure 3) and
  ``figures/{utility,share,delta}.png`` (every model on one axis: ``ΔJ^(m)``, Figure 4; the share, supplement
  Table 2; ``ΔI^(m)``).

With a logger, the same figures go to TensorBoard (``analysis/interactions/<model>``, ``analysis/utility``,
``analysis/share``, ``analysis/delta``) and the aggregates as scalars: ``analysis/<model>/<quantity>`` with the
**order m as the step** (one curve over the orders per chart; quantities ``clean``, ``adversarial``, ``delta``,
``utility``, ``share``) and the attack statistics ``analysis/<model>/attack/<statistic>`` at step 0.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
from matplotlib.figure import Figure
from typing_extensions import override

from lit_advgame.analysis.figures import COMPARISONS, comparison_figure, interactions_figure
from lit_advgame.analysis.module import InteractionAnalysis
from lit_advgame.analysis.results import (
    ANALYSIS_NAME,
    SUMMARY_COLUMNS,
    aggregate,
    aggregate_csv,
    per_image_csv,
    summary_table,
)
from lit_advgame.predict.progress import report
from lit_advgame.predict.writer import AdversarialWriter
from lit_advgame.utils.io import atomic_write, atomic_write_text

#: the per-order aggregates logged as scalars over the orders
LOGGED_QUANTITIES = ("clean", "adversarial", "delta", "utility", "share")


def figure_name(model: str) -> str:
    """A file-name-safe form of a model name."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in model)


class AnalysisWriter(AdversarialWriter):
    """Save :class:`~lit_advgame.analysis.module.InteractionAnalysis` results and aggregate them (module docstring).

    Args:
        output_dir: folder of the shards, ``meta.json``, ``analysis.pt``, the summaries, tables and figures.
        keep_shards: keep the shard files after merging.
        resume: continue an analysis found in ``output_dir`` (the same settings); with ``False`` a folder that
            already holds results is an error.
        figures: write the figures (PNG files, and to the logger when one is configured).
    """

    def __init__(
        self, output_dir: str = "runs/analysis", keep_shards: bool = False, resume: bool = True, figures: bool = True
    ) -> None:
        options = {"merge": True, "keep_shards": keep_shards, "resume": resume, "min_whitebox_success": 0.0}
        super().__init__(output_dir, merged_name=ANALYSIS_NAME, **options)
        self.figures = bool(figures)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "predict" and not isinstance(pl_module, InteractionAnalysis):
            raise TypeError(
                f"AnalysisWriter works with lit_advgame.analysis.InteractionAnalysis; got {type(pl_module).__name__} "
                "(an AttackModule's writer is lit_advgame.predict.AdversarialWriter)"
            )
        super().setup(trainer, pl_module, stage)

    def aggregate(self, records: Mapping[str, Any]) -> dict[str, Any]:
        """The aggregates of the merged records (``summary.json``): :func:`~lit_advgame.analysis.results.aggregate`;
        subclasses add theirs."""
        return aggregate(records, self.meta)

    def tables(self, summary: Mapping[str, Any]) -> str:
        """The Markdown of ``summary.md`` (printed at the end): :func:`~lit_advgame.analysis.results.summary_table`."""
        return summary_table(summary)

    def write_files(self, records: Mapping[str, Any]) -> None:
        """Further files of a subclass from the merged records (none here)."""

    def _figures(self, summary: Mapping[str, Any]) -> dict[str, Figure]:
        figures = {f"interactions/{model}": interactions_figure(summary, model) for model in summary["models"]}
        figures.update({key: comparison_figure(summary, key) for key in COMPARISONS})
        return figures

    @override
    def _write_summary(self, trainer: pl.Trainer, pl_module: pl.LightningModule, served: set[int]) -> None:
        """Aggregate the merged records; write the summaries, tables and figures; print the table; log (rank 0)."""
        seconds = time.perf_counter() - (self._started or time.perf_counter())
        self.summary = {**self.aggregate(self.merged or {}), "seconds": seconds}
        if self.to_attack is not None:
            self.summary["analysed_this_run"] = int(self.to_attack)
        atomic_write_text(self.output_dir / "summary.json", json.dumps(self.summary, indent=2) + "\n")
        table = self.tables(self.summary)
        atomic_write_text(self.output_dir / "summary.md", table)
        if self.merged:
            atomic_write_text(self.output_dir / "per_image.csv", per_image_csv(self.merged, self.meta))
            atomic_write_text(self.output_dir / "aggregate.csv", aggregate_csv(self.summary))
            self.write_files(self.merged)
        report(trainer, table)
        figures = self._figures(self.summary) if self.figures and self.summary["models"] else {}
        for tag, fig in figures.items():
            name = tag.replace("interactions/", "interactions_")
            path = self.output_dir / "figures" / f"{figure_name(name)}.png"
            atomic_write(path, lambda fh, fig=fig: fig.savefig(fh, format="png", dpi=100))
        self._log(trainer, figures)

    def _log(self, trainer: pl.Trainer, figures: Mapping[str, Figure]) -> None:
        logger = trainer.logger
        if logger is None or self.summary is None:
            return
        models: Mapping[str, Mapping[str, Any]] = self.summary["models"]
        attack = {
            f"analysis/{model}/attack/{key}": float(entry[key])
            for model, entry in models.items()
            for key, _, _ in SUMMARY_COLUMNS
        }
        logger.log_metrics(attack, step=0)
        for o, order in enumerate(self.summary["orders"]):
            logger.log_metrics(
                {
                    f"analysis/{model}/{q}": float(entry[q][o])
                    for model, entry in models.items()
                    for q in LOGGED_QUANTITIES
                    if q in entry
                },
                step=int(order),
            )
        experiment = getattr(logger, "experiment", None)
        if hasattr(experiment, "add_figure"):
            for tag, fig in figures.items():
                experiment.add_figure(f"analysis/{tag}", fig, global_step=0)
        logger.save()
