"""``DefenseWriter``: save a :class:`~lit_advgame.defenses.DefenseAnalysis` per image and aggregate it per model.

Saving (shards, exactly once under DDP, resuming, ``analysis.pt``) and the base aggregates (``summary.json``,
``per_image.csv``, ``aggregate.csv``, the interaction figures) are :class:`~lit_advgame.analysis.AnalysisWriter`'s.
:func:`defense_aggregates` adds, per model, to ``summary["models"][<model>]``:

* ``detection``: per detector (``ml_loo``, ``shapley``, ``interaction``) and order, the ROC-AUC of the adversarial
  against the clean scores of the analysed images (:func:`~lit_advgame.defenses.detection_auc`, adversarial
  positive) with the Hanley–McNeil standard error (:func:`auc_stderr`), ``separation = max(AUC, 1 − AUC)`` and the
  counts;
* ``dropout``: over the correctly classified images, the early-stopped attack's success rate and, per transform,
  the correction ratio (corrected / misclassified adversarial examples, Table 1) and the fraction of clean images
  the transform misclassifies (a control), each ± SE (the mean of 0/1 outcomes over iid images);
* ``recovery``: :meth:`~lit_advgame.defenses.RecoveryResult.summary` over all evaluated images and the fooled ones;
* ``forward_passes``: per analysis, the forward passes spent;
* the rank-reduction changes are ``(B, K, O)`` records with ``_stderr``: aggregated per order by
  :func:`~lit_advgame.analysis.aggregate` like ``delta`` (``rank_k4_difference``, ...).

Files in ``output_dir``, besides the base job's: ``summary.md`` (also printed) with the tables of
:func:`defense_tables` (detection AUC, correction, recoverability, rank reduction by order);
``defenses_per_image.csv`` / ``.json`` (one row per image and model: dropout, recovery, costs; the JSON rows also
hold the detection scores) and ``detection_per_image.csv`` (one row per image, model, detector and order);
``figures/detection_auc_<model>.png``, ``figures/rank_difference.png``, ``figures/correction.png``.

TensorBoard (with a logger): the figures as ``analysis/detection_auc/<model>``, ``analysis/rank_difference`` and
``analysis/correction``; scalars ``analysis/<model>/detection/<detector>/auc`` (step: the order ``m``),
``analysis/<model>/rank/<k4|k16>/difference`` (step ``m``), ``analysis/<model>/dropout/<transform>/corrected`` and
``.../clean_broken`` (step 0), ``analysis/<model>/recovery/<quantity>`` (step 0: ``adversarial_distance``,
``recovered_distance``, ``closer``, ``restored``, ``fooled``).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from matplotlib.figure import Figure
from typing_extensions import override

from lit_advgame.analysis.figures import FONT_SIZE
from lit_advgame.analysis.results import summary_table
from lit_advgame.analysis.writer import AnalysisWriter
from lit_advgame.defenses.detection import detection_auc
from lit_advgame.defenses.module import DefenseAnalysis, analyses_of
from lit_advgame.defenses.recovery import RecoveryResult, recoverability_table
from lit_advgame.interactions.stats import mean_and_stderr
from lit_advgame.utils.io import atomic_write_text, json_safe

#: the recoverability numbers logged as scalars
RECOVERY_SCALARS = ("adversarial_distance", "recovered_distance", "closer", "restored", "fooled")
ANALYSES_WITH_COSTS = ("detection", "dropout", "recovery", "rank")


def auc_stderr(auc: float, num_positive: int, num_negative: int) -> float:
    """The standard error of a ROC-AUC ``A`` from ``n₁`` positive and ``n₂`` negative scores (Hanley & McNeil,
    Radiology 143:29–36, 1982, the formula of SE(θ) with ``Q₁ = A/(2 − A)``, ``Q₂ = 2A²/(1 + A)``):
    ``sqrt((A(1−A) + (n₁−1)(Q₁−A²) + (n₂−1)(Q₂−A²)) / (n₁ n₂))``; NaN without scores of both kinds.

    >>> round(auc_stderr(0.8, 20, 20), 4)
    0.071
    """
    if num_positive < 1 or num_negative < 1 or math.isnan(auc):
        return math.nan
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    variance = auc * (1 - auc) + (num_positive - 1) * (q1 - auc**2) + (num_negative - 1) * (q2 - auc**2)
    return math.sqrt(max(variance, 0.0) / (num_positive * num_negative))


def _mean_se(values: torch.Tensor) -> tuple[float, float]:
    if values.numel() == 0:
        return math.nan, math.nan
    mean, se = mean_and_stderr(values.double(), dim=0)
    return float(mean), float(se)


def detection_entry(records: Mapping[str, torch.Tensor], meta: Mapping[str, Any], k: int) -> dict[str, Any]:
    """Model ``k``'s ROC-AUC per detector and order over its analysed images (see the module docstring)."""
    analyzed = records["analyzed"][:, k]
    clean, adversarial = records["detection_clean"][analyzed, k], records["detection_adversarial"][analyzed, k]
    count = int(analyzed.sum())
    out: dict[str, Any] = {"num_images": count}
    for c, column in enumerate(meta["detection_columns"]):
        auc = detection_auc(clean[:, c], adversarial[:, c]) if count else math.nan
        entry = out.setdefault(
            column["detector"],
            {
                "statistic": column["statistic"],
                "orders": [],
                "labels": [],
                "auc": [],
                "auc_stderr": [],
                "separation": [],
            },
        )
        entry["orders"].append(column["order"])
        entry["labels"].append(column["label"])
        entry["auc"].append(auc)
        entry["auc_stderr"].append(auc_stderr(auc, count, count))
        entry["separation"].append(max(auc, 1 - auc) if not math.isnan(auc) else math.nan)
    return out


def dropout_entry(records: Mapping[str, torch.Tensor], meta: Mapping[str, Any], k: int) -> dict[str, Any]:
    """Model ``k``'s correction ratios (Table 1) and clean controls over its correctly classified images."""
    attacked = records["clean_correct"][:, k]
    fooled = records["dropout_fooled"][:, k] & attacked
    out: dict[str, Any] = {
        "num_attacked": int(attacked.sum()),
        "num_fooled": int(fooled.sum()),
        "success_rate": _mean_se(fooled[attacked].double())[0],
        "mean_steps": _mean_se(records["dropout_steps"][fooled, k].double())[0],
        "transforms": {},
    }
    for t, label in enumerate(meta["dropout_transforms"]):
        ratio, ratio_se = _mean_se(records["dropout_corrected"][fooled, k, t].double())
        broken, broken_se = _mean_se(records["dropout_clean_broken"][attacked, k, t].double())
        out["transforms"][label] = {
            "correction_ratio": ratio,
            "correction_ratio_stderr": ratio_se,
            "num_corrected": int(records["dropout_corrected"][fooled, k, t].sum()),
            "clean_broken": broken,
            "clean_broken_stderr": broken_se,
        }
    return out


def recovery_result(records: Mapping[str, torch.Tensor], k: int) -> RecoveryResult:
    """Model ``k``'s evaluated images as a :class:`~lit_advgame.defenses.RecoveryResult` (its distances and flags;
    no images), whose :meth:`~lit_advgame.defenses.RecoveryResult.summary` is the recoverability aggregate."""
    evaluated = records["recovery_evaluated"][:, k]
    empty = torch.empty(0)
    return RecoveryResult(
        x_adv=empty,
        x_recovered=empty,
        adversarial_distance=records["recovery_adversarial_distance"][evaluated, k],
        recovered_distance=records["recovery_recovered_distance"][evaluated, k],
        fooled=records["recovery_fooled"][evaluated, k],
        restored=records["recovery_restored"][evaluated, k],
        num_forward_passes=int(records["recovery_forward_passes"][evaluated, k].sum()),
    )


def defense_aggregates(records: Mapping[str, torch.Tensor], meta: Mapping[str, Any], summary: dict[str, Any]) -> None:
    """Add the defense aggregates of every model to ``summary["models"]`` (see the module docstring), and the run's
    ``analyses``, ``detection_players`` and ``rank_labels`` to ``summary``."""
    analyses = analyses_of(meta)
    summary.update(
        analyses=analyses,
        detection_players=meta.get("detection_players"),
        rank_labels=list(meta.get("rank_labels") or []),
    )
    if not records:
        return
    for k, model in enumerate(meta.get("models") or []):
        entry = summary["models"][model]
        if "detection" in analyses:
            entry["detection"] = detection_entry(records, meta, k)
        if "dropout" in analyses:
            entry["dropout"] = dropout_entry(records, meta, k)
        if "recovery" in analyses:
            result = recovery_result(records, k)
            entry["recovery"] = {subset: result.summary(subset) for subset in ("all", "fooled")}
        entry["forward_passes"] = {
            name: int(records[f"{name}_forward_passes"][:, k].sum()) for name in ANALYSES_WITH_COSTS if name in analyses
        }
        if "interactions" in analyses:
            entry["forward_passes"]["interactions"] = entry["num_forward_passes"]


class _Summaries:
    """Saved recoverability summaries with :meth:`RecoveryResult.summary`'s interface (for ``recoverability_table``)."""

    def __init__(self, summaries: Mapping[str, Mapping[str, float]]) -> None:
        self.summaries = summaries

    def summary(self, subset: str) -> Mapping[str, float]:
        return self.summaries[subset]


def _pm(value: float, stderr: float, digits: int = 3) -> str:
    if value is None or math.isnan(value):
        return "–"
    return f"{value:.{digits}f} ± {stderr:.{digits}f}" if not math.isnan(stderr) else f"{value:.{digits}f}"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    lines = [f"| {' | '.join(head)} |", f"|---|{'---:|' * (len(head) - 1)}"]
    return lines + [f"| {' | '.join(row)} |" for row in rows]


def defense_tables(summary: Mapping[str, Any]) -> str:
    """Markdown tables of the defense aggregates: detection AUC per detector and order, correction ratios (and the
    clean control), recoverability (all images, the fooled ones), rank-reduction differences by order."""
    models: Mapping[str, Mapping[str, Any]] = summary.get("models") or {}
    lines: list[str] = []
    detectors = list(dict.fromkeys(d for e in models.values() for d in e.get("detection", {}) if d != "num_images"))
    for detector in detectors:
        first = next(e["detection"][detector] for e in models.values() if "detection" in e)
        lines += ["", f"Detection ROC-AUC (adversarial positive) ± SE, {detector}[{first['statistic']}]:", ""]
        rows = []
        for name, entry in models.items():
            d = entry["detection"][detector]
            cells = [_pm(a, s) for a, s in zip(d["auc"], d["auc_stderr"], strict=True)]
            rows.append([name, str(entry["detection"]["num_images"]), *cells])
        lines += _table(["model", "images", *(f"m = {m}" for m in first["orders"])], rows)
    if any("dropout" in e for e in models.values()):
        labels = list(next(e["dropout"]["transforms"] for e in models.values() if "dropout" in e))
        rows, control = [], []
        for name, entry in models.items():
            d = entry["dropout"]
            cells = [
                _pm(d["transforms"][t]["correction_ratio"], d["transforms"][t]["correction_ratio_stderr"])
                for t in labels
            ]
            rows.append([name, str(d["num_attacked"]), str(d["num_fooled"]), f"{d['mean_steps']:.1f}", *cells])
            control.append(
                [
                    name,
                    *(
                        _pm(d["transforms"][t]["clean_broken"], d["transforms"][t]["clean_broken_stderr"])
                        for t in labels
                    ),
                ]
            )
        lines += ["", "Adversarial examples (early-stopped attack) corrected by the transform, ratio ± SE:", ""]
        lines += _table(["model", "attacked", "fooled", "mean steps", *labels], rows)
        lines += ["", "Control: clean images the transform misclassifies, ± SE:", ""]
        lines += _table(["model", *labels], control)
    if any("recovery" in e for e in models.values()):
        for subset in ("all", "fooled"):
            results = {name: _Summaries(e["recovery"]) for name, e in models.items() if "recovery" in e}
            lines += ["", f"Recoverability ({subset} images):", "", recoverability_table(results, subset)]
    labels = list(summary.get("rank_labels") or [])
    if labels:
        orders = summary.get("orders") or []
        lines += ["", "Rank reduction: change of I^(m) of adversarial − normal images, ± SE, by order:", ""]
        rows = []
        for name, entry in models.items():
            for label in labels:
                key = f"rank_{label}_difference"
                cells = [_pm(v, s) for v, s in zip(entry[key], entry[f"{key}_stderr"], strict=True)]
                rows.append([f"{name}, {label}", *cells])
        lines += _table(["model, rank", *(f"m = {m}" for m in orders)], rows)
    return "\n".join(lines) + "\n"


def _rows_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return buffer.getvalue()


def per_image_rows(records: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per image and model: the analyses' per-image outcomes (no detection scores)."""
    rows = []
    transforms = list(meta.get("dropout_transforms") or [])
    scalars = [
        key
        for key, value in records.items()
        if value.dim() == 2 and (key.startswith(("dropout_", "recovery_")) or key.endswith("_forward_passes"))
    ]
    for b, index in enumerate(records["index"].tolist()):
        for k, model in enumerate(meta.get("models") or []):
            row: dict[str, Any] = {"index": index, "label": int(records["label"][b]), "model": model}
            for key in ("clean_correct", "analyzed", "adv_misclassified", *scalars):
                row[key] = records[key][b, k].item()
            for key in ("dropout_corrected", "dropout_clean_broken"):
                if key in records:
                    row.update({f"{key}_{t}": bool(records[key][b, k, i]) for i, t in enumerate(transforms)})
            rows.append(row)
    return rows


def detection_rows(records: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per analysed image, model, detector and order: the clean and the adversarial score."""
    rows = []
    for b, index in enumerate(records["index"].tolist()):
        for k, model in enumerate(meta.get("models") or []):
            if not bool(records["analyzed"][b, k]):
                continue
            for c, column in enumerate(meta["detection_columns"]):
                rows.append(
                    {
                        "index": index,
                        "label": int(records["label"][b]),
                        "model": model,
                        **column,
                        "clean": float(records["detection_clean"][b, k, c]),
                        "adversarial": float(records["detection_adversarial"][b, k, c]),
                    }
                )
    return rows


# ----------------------------------------------------------------------------- figures
def _axes(title: str, xlabel: str, ylabel: str) -> tuple[Figure, Any]:
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.subplots()
    ax.set_xlabel(xlabel, fontsize=FONT_SIZE)
    ax.set_ylabel(ylabel, fontsize=FONT_SIZE)
    ax.set_title(title, fontsize=FONT_SIZE + 1)
    ax.grid(True, alpha=0.3)
    return fig, ax


def detection_figure(summary: Mapping[str, Any], model: str) -> Figure:
    """ROC-AUC (± 1 SE) against the order for each detector of ``model`` (Figure 6 left); ML-LOO, a single order
    ``n − 1``, as a dashed line."""
    detection = summary["models"][model]["detection"]
    fig, ax = _axes(
        f"{model}: detection, {detection['num_images']} images",
        f"order m  (n = {summary.get('detection_players')})",
        "ROC-AUC",
    )
    ax.axhline(0.5, color="grey", lw=0.8)
    for (name, d), marker in zip(((k, v) for k, v in detection.items() if k != "num_images"), itertools.cycle("os^D")):
        label = f"{name}[{d['statistic']}]"
        if len(d["orders"]) == 1:
            ax.axhline(d["auc"][0], ls="--", color="black", label=f"{label} (m = {d['orders'][0]})")
        else:
            ax.errorbar(d["orders"], d["auc"], yerr=d["auc_stderr"], marker=marker, capsize=3, label=label)
    ax.legend(fontsize=FONT_SIZE - 2)
    fig.tight_layout()
    return fig


def rank_figure(summary: Mapping[str, Any]) -> Figure:
    """The rank-reduction difference (change of adversarial − normal ``I^(m)``, ± 1 SE) against the order, per model
    and fraction (Figure 6 right)."""
    fig, ax = _axes(
        "rank reduction: adversarial − normal change",
        f"order m  (n = {summary.get('num_players')} players)",
        "Δ of I^(m) change",
    )
    ax.axhline(0.0, color="grey", lw=0.8)
    markers = itertools.cycle("osD^v<>")
    for name, entry in summary["models"].items():
        for label in summary.get("rank_labels") or []:
            key = f"rank_{label}_difference"
            ax.errorbar(
                summary["orders"],
                entry[key],
                yerr=entry[f"{key}_stderr"],
                marker=next(markers),
                capsize=3,
                label=f"{name}, {label}",
            )
    ax.legend(fontsize=FONT_SIZE - 2)
    fig.tight_layout()
    return fig


def correction_figure(summary: Mapping[str, Any]) -> Figure:
    """Correction ratio (± 1 SE) per transform, one bar per model (Table 1)."""
    models = {name: e["dropout"] for name, e in summary["models"].items() if "dropout" in e}
    labels = list(next(iter(models.values()))["transforms"])
    fig, ax = _axes("adversarial examples corrected", "transform", "correction ratio")
    width = 0.8 / max(len(models), 1)
    for j, (name, d) in enumerate(models.items()):
        xs = [t + j * width for t in range(len(labels))]
        ratios = [d["transforms"][t]["correction_ratio"] for t in labels]
        errors = [d["transforms"][t]["correction_ratio_stderr"] for t in labels]
        ax.bar(xs, ratios, width, yerr=errors, capsize=3, label=f"{name} ({d['num_fooled']} fooled)")
    ax.set_xticks([t + 0.4 - width / 2 for t in range(len(labels))], labels)
    ax.legend(fontsize=FONT_SIZE - 2)
    fig.tight_layout()
    return fig


class DefenseWriter(AnalysisWriter):
    """Save :class:`~lit_advgame.defenses.DefenseAnalysis` results and aggregate them (module docstring).

    Args: those of :class:`~lit_advgame.analysis.AnalysisWriter` (``output_dir``, ``keep_shards``, ``resume``,
    ``figures``).
    """

    def __init__(
        self, output_dir: str = "runs/defenses", keep_shards: bool = False, resume: bool = True, figures: bool = True
    ) -> None:
        super().__init__(output_dir, keep_shards=keep_shards, resume=resume, figures=figures)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "predict" and not isinstance(pl_module, DefenseAnalysis):
            raise TypeError(
                f"DefenseWriter works with lit_advgame.defenses.DefenseAnalysis; got {type(pl_module).__name__}"
            )
        super().setup(trainer, pl_module, stage)

    @override
    def aggregate(self, records: Mapping[str, Any]) -> dict[str, Any]:
        summary = super().aggregate(records)
        defense_aggregates(records, self.meta, summary)
        return summary

    @override
    def tables(self, summary: Mapping[str, Any]) -> str:
        return summary_table(summary) + defense_tables(summary)

    @override
    def write_files(self, records: Mapping[str, Any]) -> None:
        rows = per_image_rows(records, self.meta)
        atomic_write_text(self.output_dir / "defenses_per_image.csv", _rows_csv(rows))
        if "detection_clean" in records:
            detection = detection_rows(records, self.meta)
            atomic_write_text(self.output_dir / "detection_per_image.csv", _rows_csv(detection))
            for row, b_k in zip(rows, itertools.product(range(len(records["index"])), range(len(self.meta["models"])))):
                b, k = b_k
                row["detection_clean"] = records["detection_clean"][b, k].tolist()
                row["detection_adversarial"] = records["detection_adversarial"][b, k].tolist()
        payload = json_safe({"detection_columns": self.meta.get("detection_columns"), "rows": rows})
        atomic_write_text(self.output_dir / "defenses_per_image.json", json.dumps(payload, indent=1) + "\n")

    @override
    def _figures(self, summary: Mapping[str, Any]) -> dict[str, Figure]:
        analyses = summary.get("analyses") or []
        figures = super()._figures(summary) if "interactions" in analyses else {}
        if "detection" in analyses:
            figures.update({f"detection_auc/{model}": detection_figure(summary, model) for model in summary["models"]})
        if "rank" in analyses:
            figures["rank_difference"] = rank_figure(summary)
        if "dropout" in analyses:
            figures["correction"] = correction_figure(summary)
        return figures

    @override
    def _log(self, trainer: pl.Trainer, figures: Mapping[str, Figure]) -> None:
        super()._log(trainer, figures)
        logger = trainer.logger
        if logger is None or self.summary is None:
            return
        by_step: dict[int, dict[str, float]] = {}
        for model, entry in self.summary["models"].items():
            at = f"analysis/{model}"
            for detector, d in entry.get("detection", {}).items():
                if detector != "num_images":
                    for m, auc in zip(d["orders"], d["auc"], strict=True):
                        by_step.setdefault(int(m), {})[f"{at}/detection/{detector}/auc"] = float(auc)
            for label in self.summary.get("rank_labels") or []:
                key = f"rank_{label}_difference"
                for m, value in zip(self.summary["orders"], entry[key], strict=True):
                    by_step.setdefault(int(m), {})[f"{at}/rank/{label}/difference"] = float(value)
            for label, t in entry.get("dropout", {}).get("transforms", {}).items():
                by_step.setdefault(0, {})[f"{at}/dropout/{label}/corrected"] = float(t["correction_ratio"])
                by_step[0][f"{at}/dropout/{label}/clean_broken"] = float(t["clean_broken"])
            recovery = entry.get("recovery", {}).get("all", {})
            by_step.setdefault(0, {}).update(
                {f"{at}/recovery/{q}": float(recovery[q]) for q in RECOVERY_SCALARS if q in recovery}
            )
        for step in sorted(by_step):
            logger.log_metrics(by_step[step], step=step)
        logger.save()
