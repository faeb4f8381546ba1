"""Aggregates of an attribution analysis over images, per model, and its Markdown table.

``aggregate(records, meta)`` turns the merged per-image records of
:class:`~lit_advgame.attributions.module.AttributionAnalysis` into one entry per model:

* regional (Wang et al., ICCV 2021, Sec. 3.1 and Table 1), over the analysed images: per norm the mean of
  ``cost(∅)``, ``cost(Λ)``, the efficiency residual and the failure rate of the restricted attacks, each ± its
  standard error over images, the pooled failure rate (failed / attempted coalitions), the number of images whose
  border-only attack failed, the mean importance map ``−φ`` (± the standard error of a mean of independent
  estimates, conditional on the images) and the mean magnitude map; with both norms the IoU of the L2 and L∞
  importance maps and of the regional magnitudes (± SE over images);
* components (Sec. 3.2, Tables 2–3), over the images whose targeted attack succeeded: components per image (± SE),
  the share of components in the foreground and the share that mainly decrease the true class (``Δy_ℓ > Δy_t``),
  pooled over the components with their binomial standard errors ``√(p(1−p)/N)``.

:func:`load_attributions` reads a run's folder (merged file and any shards) back as records and metadata.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import torch

from lit_advgame.interactions.stats import combine_stderr, mean_and_stderr
from lit_advgame.predict.shards import read_records

ATTRIBUTIONS_NAME = "attributions.pt"
#: per-norm regional scalars averaged over images (± SE)
REGIONAL_SCALARS = ("cost_empty", "cost_full", "efficiency_residual", "failure_rate")
#: the IoUs of Table 1
IOUS = ("iou_attributions", "iou_magnitudes")
NORM_SYMBOLS = {"l2": "L2", "linf": "L∞"}


def _mean_se(values: torch.Tensor) -> tuple[float, float]:
    """Mean and standard error over the finite entries (NaN when none; SE NaN for one)."""
    values = values[torch.isfinite(values)].double()
    if values.numel() == 0:
        return math.nan, math.nan
    mean, se = mean_and_stderr(values, dim=0)
    return float(mean), float(se)


def _share(hits: int, count: int) -> tuple[float, float]:
    """A pooled share and its binomial standard error."""
    if count == 0:
        return math.nan, math.nan
    p = hits / count
    return p, math.sqrt(p * (1 - p) / count)


def _regional(records: Mapping[str, torch.Tensor], k: int, norms: list[str]) -> dict[str, Any]:
    analyzed = records["regional_analyzed"][:, k]
    correct = records["clean_correct"][:, k]
    entry: dict[str, Any] = {"num_analyzed": int(analyzed.sum())}
    for norm in norms:
        prefix = f"regional_{norm}_"
        entry[f"{norm}_num_border_failed"] = int((correct & ~records[prefix + "border_ok"][:, k]).sum())
        for key in REGIONAL_SCALARS:
            entry[f"{norm}_{key}"], entry[f"{norm}_{key}_stderr"] = _mean_se(records[prefix + key][analyzed, k])
        failed, attempted = (int(records[prefix + key][analyzed, k].sum()) for key in ("num_failed", "num_attempted"))
        entry[f"{norm}_failure_rate_pooled"] = failed / attempted if attempted else math.nan
        entry[f"{norm}_num_attacks"] = int(records[prefix + "num_attacks"][:, k].sum())
        entry[f"{norm}_num_steps"] = int(records[prefix + "num_steps"][:, k].sum())
        maps = records[prefix + "importance"][analyzed, k]
        if maps.shape[0]:
            entry[f"{norm}_importance"] = maps.mean(dim=0).tolist()
            entry[f"{norm}_importance_stderr"] = combine_stderr(
                records[prefix + "importance_stderr"][analyzed, k], 0
            ).tolist()
            entry[f"{norm}_magnitude"] = records[prefix + "magnitude"][analyzed, k].mean(dim=0).tolist()
    for key in IOUS:
        entry[key], entry[f"{key}_stderr"] = _mean_se(records[f"regional_{key}"][analyzed, k])
    return entry


def _components(records: Mapping[str, torch.Tensor], k: int) -> dict[str, Any]:
    correct, analyzed = records["clean_correct"][:, k], records["components_analyzed"][:, k]
    counts = records["components_count"][analyzed, k]
    delta_true, delta_target = (
        records["components_delta_true"][analyzed, k],
        records["components_delta_target"][analyzed, k],
    )
    present = torch.isfinite(delta_true)
    total = int(present.sum())
    foreground = records["components_foreground"][analyzed, k]
    entry: dict[str, Any] = {
        "num_analyzed": int(analyzed.sum()),
        "attack_success": float(records["components_attack_success"][correct, k].float().mean())
        if correct.any()
        else math.nan,
        "delta_norm": _mean_se(records["components_delta_norm"][correct, k])[0],
        "num_components": total,
        "num_forward_passes": int(records["components_num_forward_passes"][:, k].sum()),
    }
    entry["components_per_image"], entry["components_per_image_stderr"] = _mean_se(counts.double())
    decreasing = int((delta_true > delta_target)[present].sum())
    entry["share_decreasing_true"], entry["share_decreasing_true_stderr"] = _share(decreasing, total)
    if bool(torch.isfinite(foreground[present]).all()):
        entry["share_foreground"], entry["share_foreground_stderr"] = _share(
            int((foreground[present] > 0.5).sum()), total
        )
    else:
        entry["share_foreground"] = entry["share_foreground_stderr"] = math.nan
    return entry


def aggregate(records: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> dict[str, Any]:
    """Per model (``meta["models"]`` names them): ``num_images``, ``clean_accuracy`` and the ``regional`` and
    ``components`` aggregates of the module docstring (those the run computed)."""
    regional, components = meta.get("regional"), meta.get("components")
    norms = list((regional or {}).get("norms") or [])
    out: dict[str, Any] = {
        "name": meta.get("name"),
        "norms": norms,
        "num_regions": (regional or {}).get("num_regions"),
        "models": {},
    }
    if not records:
        return out
    for k, model in enumerate(meta.get("models") or []):
        correct = records["clean_correct"][:, k]
        entry: dict[str, Any] = {"num_images": int(correct.numel()), "clean_accuracy": float(correct.float().mean())}
        if regional is not None:
            entry["regional"] = _regional(records, k, norms)
        if components is not None:
            entry["components"] = _components(records, k)
        out["models"][model] = entry
    return out


def _cell(value: Any, stderr: Any = None, fmt: str = ".3g") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if fmt == "%":
        text = f"{100 * value:.1f}"
        return text if stderr is None or math.isnan(stderr) else f"{text} ± {100 * stderr:.1f}"
    text = format(value, fmt)
    return text if stderr is None or math.isnan(stderr) else f"{text} ± {format(stderr, '.2g')}"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return [f"| {' | '.join(head)} |", f"|---|{'---:|' * (len(head) - 1)}", *(f"| {' | '.join(r)} |" for r in rows)]


def summary_table(summary: Mapping[str, Any]) -> str:
    """Markdown: the regional table (Table 1 shape) and the components table, one row per model, mean ± SE."""
    models = summary.get("models") or {}
    lines = [f"**{summary.get('name')}**"]
    regional = {name: e["regional"] for name, e in models.items() if "regional" in e}
    if regional:
        norms = summary.get("norms") or []
        head = ["model", "images", "clean acc. (%)", "analysed"]
        for norm in norms:
            symbol = NORM_SYMBOLS.get(norm, norm)
            head += [
                f"border failed {symbol}",
                f"cost(∅) {symbol}",
                f"cost(Λ) {symbol}",
                f"failed attacks {symbol} (%)",
                f"Σφ − (cost(Λ) − cost(∅)) {symbol}",
            ]
        head += ["IoU attributions L2 vs L∞", "IoU magnitudes L2 vs L∞"]
        rows = []
        for name, entry in regional.items():
            row = [
                name,
                str(models[name]["num_images"]),
                _cell(models[name]["clean_accuracy"], fmt="%"),
                str(entry["num_analyzed"]),
            ]
            for norm in norms:
                row += [
                    str(entry[f"{norm}_num_border_failed"]),
                    _cell(entry[f"{norm}_cost_empty"], entry[f"{norm}_cost_empty_stderr"]),
                    _cell(entry[f"{norm}_cost_full"], entry[f"{norm}_cost_full_stderr"]),
                    _cell(entry[f"{norm}_failure_rate_pooled"], fmt="%"),
                    _cell(entry[f"{norm}_efficiency_residual"], entry[f"{norm}_efficiency_residual_stderr"]),
                ]
            row += [_cell(entry[key], entry[f"{key}_stderr"]) for key in IOUS]
            rows.append(row)
        lines += ["", f"Regional attributions (L = {summary.get('num_regions')}, mean ± SE over analysed images):", ""]
        lines += _table(head, rows)
    components = {name: e["components"] for name, e in models.items() if "components" in e}
    if components:
        head = ["model", "images", "clean acc. (%)", "attack success (%)", "analysed", "components / image"]
        head += ["share in foreground", "share mainly decreasing the true class"]
        rows = [
            [
                name,
                str(models[name]["num_images"]),
                _cell(models[name]["clean_accuracy"], fmt="%"),
                _cell(entry["attack_success"], fmt="%"),
                str(entry["num_analyzed"]),
                _cell(entry["components_per_image"], entry["components_per_image_stderr"]),
                _cell(entry["share_foreground"], entry["share_foreground_stderr"]),
                _cell(entry["share_decreasing_true"], entry["share_decreasing_true_stderr"]),
            ]
            for name, entry in components.items()
        ]
        lines += ["", "Perturbation components (shares pooled over components, binomial SE):", ""]
        lines += _table(head, rows)
    return "\n".join(lines) + "\n"


def load_attributions(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The records (sorted by dataset index, each once) and metadata of an attribution analysis: a merged file or a
    run folder (its merged file plus any shards not merged yet)."""
    return read_records(path, ATTRIBUTIONS_NAME, what="attribution analysis results")
