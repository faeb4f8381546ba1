"""``AttributionWriter``: save an attribution analysis per image, exactly once, resumable; aggregate it at the end.

The writer of :class:`~lit_advgame.attributions.module.AttributionAnalysis`. Saving is
:class:`~lit_advgame.predict.writer.AdversarialWriter`'s: the output-folder lock, ``meta.json`` written once and
compared on every resumed run, one atomic shard per batch written by the rank that ran it, the saved dataset
indices handed to the module at set-up (a restarted run analyses only the missing images), and at the end a
completeness check and the merge into ``attributions.pt`` on global rank 0.

Then rank 0 aggregates the merged records per model (:func:`~lit_advgame.attributions.results.aggregate`) and
writes, into ``output_dir``: ``summary.json`` and ``summary.md`` (the tables, also printed), and for the first
``num_figures`` analysed images of each model ``figures/regional_<model>_<index>.png`` (the image, the heatmaps of
the regional attributions and of the perturbation magnitudes) and ``figures/components_<model>_<index>.png``
(image, ``|δ|``, components coloured by their effect).

With a logger, the same figures go to TensorBoard as ``attributions/<model>/regional`` and
``attributions/<model>/components`` with the **dataset index as the step**, and the aggregates as scalars at step
0 (estimates with a standard error as value ± 1 SE margins, :mod:`lit_advgame.utils.tensorboard`):
``attributions/<model>/regional/<norm>/{cost_empty,cost_full,efficiency_residual,failure_rate}``,
``attributions/<model>/regional/{iou_attributions,iou_magnitudes}``,
``attributions/<model>/components/{components_per_image,share_foreground,share_decreasing_true,attack_success}``,
and the cost ``zz_cost/attributions/<model>/{restricted_attacks,gradient_steps,masked_forward_passes}``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from matplotlib.figure import Figure
from typing_extensions import override

from lit_advgame.analysis.writer import figure_name
from lit_advgame.attributions.components import component_figure
from lit_advgame.attributions.figures import regional_figure
from lit_advgame.attributions.module import AttributionAnalysis
from lit_advgame.attributions.regional import RegionGrid
from lit_advgame.attributions.results import ATTRIBUTIONS_NAME, IOUS, REGIONAL_SCALARS, aggregate, summary_table
from lit_advgame.interactions.players import grid_player_map
from lit_advgame.predict.progress import report
from lit_advgame.predict.writer import AdversarialWriter
from lit_advgame.utils.checks import check_int
from lit_advgame.utils.io import atomic_write, atomic_write_text
from lit_advgame.utils.tensorboard import cost_tag, log_figures, log_scalars

#: the default output folder
OUTPUT_DIR = "runs/attributions"
#: the components' aggregates logged as scalars (with their ``_stderr`` where they have one)
COMPONENT_SCALARS = ("components_per_image", "share_foreground", "share_decreasing_true", "attack_success")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def summary_scalars(summary: Mapping[str, Any]) -> dict[str, float]:
    """The scalars of a summary (module docstring), each estimate with its ``<tag>_stderr``; NaN left out."""
    out: dict[str, float] = {}
    for model, entry in (summary.get("models") or {}).items():
        base = f"attributions/{model}"
        sources = []
        if "regional" in entry:
            regional = entry["regional"]
            for norm in summary.get("norms") or []:
                sources += [(f"{base}/regional/{norm}/{key}", regional, f"{norm}_{key}") for key in REGIONAL_SCALARS]
            sources += [(f"{base}/regional/{key}", regional, key) for key in IOUS]
            attacks = sum(regional.get(f"{n}_num_attacks", 0) for n in summary.get("norms") or [])
            steps = sum(regional.get(f"{n}_num_steps", 0) for n in summary.get("norms") or [])
            out[cost_tag(f"attributions/{model}", "restricted_attacks")] = float(attacks)
            out[cost_tag(f"attributions/{model}", "gradient_steps")] = float(steps)
        if "components" in entry:
            sources += [(f"{base}/components/{key}", entry["components"], key) for key in COMPONENT_SCALARS]
            passes = entry["components"]["num_forward_passes"]
            out[cost_tag(f"attributions/{model}", "masked_forward_passes")] = float(passes)
        for tag, values, key in sources:
            if _finite(values.get(key)):
                out[tag] = float(values[key])
                if _finite(values.get(f"{key}_stderr")):
                    out[f"{tag}_stderr"] = float(values[f"{key}_stderr"])
    return out


def image_figures(
    records: Mapping[str, torch.Tensor], meta: Mapping[str, Any], num_figures: int
) -> dict[tuple[str, str, int], Figure]:
    """``(kind, model, dataset index) -> figure`` for the first ``num_figures`` analysed images of each model."""
    figures: dict[tuple[str, str, int], Figure] = {}
    if not records or num_figures == 0:
        return figures
    x, index = records["x"], records["index"].tolist()
    height, width = x.shape[-2:]
    regional, components = meta.get("regional"), meta.get("components")
    for k, model in enumerate(meta.get("models") or []):
        if regional is not None:
            grid = RegionGrid(height, width, regional["num_regions"], regional["beta"])
            for b in records["regional_analyzed"][:, k].nonzero().flatten()[:num_figures].tolist():
                maps = {n: records[f"regional_{n}_importance"][b, k] for n in regional["norms"]}
                sizes = {n: records[f"regional_{n}_magnitude"][b, k] for n in regional["norms"]}
                title = (
                    f"{model}, image {index[b]}: label {int(records['label'][b])} → target {int(records['target'][b])}"
                )
                figures["regional", model, index[b]] = regional_figure(x[b], grid, maps, sizes, title)
        if components is not None:
            side = components["superpixel"]
            player_map = grid_player_map(height, width, (height // side, width // side))
            for b in records["components_analyzed"][:, k].nonzero().flatten()[:num_figures].tolist():
                count = int(records["components_count"][b, k])
                decreases = (
                    records["components_delta_true"][b, k, :count] > records["components_delta_target"][b, k, :count]
                )
                delta = records["x_adv"][b, k] - x[b]
                figures["components", model, index[b]] = component_figure(
                    x[b], delta, player_map, records["components_map"][b, k], decreases
                )
    return figures


class AttributionWriter(AdversarialWriter):
    """Save :class:`~lit_advgame.attributions.module.AttributionAnalysis` results and aggregate them (module
    docstring).

    Args:
        output_dir: folder of the shards, ``meta.json``, ``attributions.pt``, the summaries and figures.
        num_figures: analysed images per model drawn (PNG files, and to the logger when one is configured; 0: none).
        keep_shards: keep the shard files after merging.
        resume: continue an analysis found in ``output_dir`` (the same settings); with ``False`` a folder that
            already holds results is an error.
    """

    def __init__(
        self, output_dir: str = OUTPUT_DIR, num_figures: int = 4, keep_shards: bool = False, resume: bool = True
    ) -> None:
        options = {"merge": True, "keep_shards": keep_shards, "resume": resume, "min_whitebox_success": 0.0}
        super().__init__(output_dir, merged_name=ATTRIBUTIONS_NAME, **options)
        check_int(num_figures, "num_figures", minimum=0)
        self.num_figures = int(num_figures)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "predict" and not isinstance(pl_module, AttributionAnalysis):
            raise TypeError(
                "AttributionWriter works with lit_advgame.attributions.AttributionAnalysis; got "
                f"{type(pl_module).__name__} (an attack run's writer is lit_advgame.predict.AdversarialWriter)"
            )
        super().setup(trainer, pl_module, stage)

    @override
    def _write_summary(self, trainer: pl.Trainer, pl_module: pl.LightningModule, served: set[int]) -> None:
        """Aggregate the merged records; write the summaries and figures; print the table; log (rank 0)."""
        summary = aggregate(self.merged or {}, self.meta)
        summary.update(seconds=time.perf_counter() - (self._started or time.perf_counter()))
        summary.update(analysed_this_run=self.to_attack)  # None when the batches could not be planned
        self.summary, table = summary, summary_table(summary)
        for name, text in (("summary.json", json.dumps(summary, indent=2) + "\n"), ("summary.md", table)):
            atomic_write_text(self.output_dir / name, text)
        report(trainer, table)
        figures = image_figures(self.merged or {}, self.meta, self.num_figures)
        for (kind, model, index), fig in figures.items():
            path = self.output_dir / "figures" / f"{kind}_{figure_name(model)}_{index}.png"
            atomic_write(path, lambda fh, fig=fig: fig.savefig(fh, format="png", dpi=100))
        if trainer.loggers:
            log_scalars(trainer, summary_scalars(self.summary), step=0)
            for (kind, model, index), fig in figures.items():
                log_figures(trainer, {f"attributions/{model}/{kind}": fig}, step=index)
            for logger in trainer.loggers:
                logger.save()
