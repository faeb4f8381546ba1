"""Aggregates of an interaction analysis over images, per model, and its files (JSON, CSV, Markdown).

``aggregate(records, meta)`` turns the merged per-image records of
:class:`~lit_advgame.analysis.module.InteractionAnalysis` into one entry per model: the attack's statistics over the
images (clean accuracy, the fraction of attacked images whose strength attack reached its window, white-box success,
mean logit drop and ‖δ‖∞) and, over the analysed images, every per-order quantity with its standard error:
``I^(m) = E_x E_ij I^(m)_ij(x)`` clean and adversarial, ``ΔI^(m)``, ``ΔJ^(m)`` (Ren et al., NeurIPS 2021, §4.1 and
Eq. 3) -- the mean of the per-image estimates, with the standard error ``sqrt(Σ_b se_b²) / B`` of
:mod:`lit_advgame.interactions.stats` (conditional on the images, as the functional estimators) -- and the share
``|ΔI^(m)| / Σ_m' |ΔI^(m')|`` (supplement Table 2).

:func:`load_analysis` reads a run's folder (merged file and any shards) back as records and metadata.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping
from typing import Any

import torch

from lit_advgame.interactions.stats import combine_stderr
from lit_advgame.predict.shards import read_records

ANALYSIS_NAME = "analysis.pt"
#: attack statistics per model: (key, header of the summary table, format)
SUMMARY_COLUMNS = (
    ("num_images", "images", "d"),
    ("clean_accuracy", "clean acc. (%)", "%"),
    ("reached_fraction", "reached (%)", "%"),
    ("success_rate", "white-box success (%)", "%"),
    ("logit_drop", "mean logit drop", ".3g"),
    ("linf", "mean ‖δ‖∞·255", "255"),
    ("num_analyzed", "analysed", "d"),
)


def order_quantities(records: Mapping[str, torch.Tensor]) -> list[str]:
    """The per-order records ``(N, K, O)`` that have a ``<name>_stderr`` partner, in record order."""
    return [k for k, v in records.items() if v.dim() == 3 and f"{k}_stderr" in records and v.is_floating_point()]


def _mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    return float(values[mask].float().mean()) if bool(mask.any()) else math.nan


def aggregate(records: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> dict[str, Any]:
    """Per model (``meta["models"]`` names them): the attack statistics and the per-order aggregates (see the
    module docstring). Lists are per order (``meta["orders"]``)."""
    names = list(meta.get("models") or [])
    out: dict[str, Any] = {
        "name": meta.get("name"),
        "orders": list(meta.get("orders") or []),
        "ratios": meta.get("ratios"),
        "num_players": meta.get("num_players"),
        "models": {},
    }
    if not records:
        return out
    quantities = order_quantities(records)
    for k, model in enumerate(names):
        correct, analyzed = records["clean_correct"][:, k], records["analyzed"][:, k]
        entry: dict[str, Any] = {
            "num_images": int(correct.numel()),
            "clean_accuracy": float(correct.float().mean()),
            "reached_fraction": _mean(records["reached"][:, k], correct),
            "success_rate": _mean(records["adv_misclassified"][:, k], correct),
            "logit_drop": _mean(records["logit_drop"][:, k], correct),
            "linf": _mean(records["linf"][:, k], correct),
            "num_analyzed": int(analyzed.sum()),
            "num_forward_passes": int(records["num_forward_passes"][:, k].sum()),
        }
        for q in quantities:
            values, stderr = records[q][analyzed, k], records[f"{q}_stderr"][analyzed, k]
            if values.shape[0] == 0:
                mean = se = torch.full((records[q].shape[-1],), math.nan, dtype=torch.float64)
            else:
                mean, se = values.mean(dim=0), combine_stderr(stderr, dim=0)
            entry[q], entry[f"{q}_stderr"] = mean.tolist(), se.tolist()
        if "delta" in entry:
            delta = torch.tensor(entry["delta"], dtype=torch.float64).abs()
            total = float(delta.sum())
            entry["share"] = (delta / total).tolist() if total > 0 else [math.nan] * delta.numel()
        out["models"][model] = entry
    return out


def _cell(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if fmt == "%":
        return f"{100 * value:.1f}"
    if fmt == "255":
        return f"{255 * value:.2f}"
    return format(int(value) if fmt == "d" else float(value), fmt)


def summary_table(summary: Mapping[str, Any]) -> str:
    """Markdown: one row of attack statistics per model, then ``ΔI^(m)`` (± SE) per order and model."""
    models = summary.get("models") or {}
    head = ["model", *(header for _, header, _ in SUMMARY_COLUMNS)]
    lines = [f"**{summary.get('name')}**", "", f"| {' | '.join(head)} |", f"|---|{'---:|' * (len(head) - 1)}"]
    for name, entry in models.items():
        cells = [_cell(entry.get(key), fmt) for key, _, fmt in SUMMARY_COLUMNS]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    orders = summary.get("orders") or []
    if models and orders and all("delta" in e for e in models.values()):
        lines += ["", f"| ΔI^(m) | {' | '.join(f'm = {m}' for m in orders)} |", f"|---|{'---:|' * len(orders)}"]
        for name, entry in models.items():
            cells = [
                f"{_cell(v, '.3g')} ± {_cell(s, '.2g')}"
                for v, s in zip(entry["delta"], entry["delta_stderr"], strict=True)
            ]
            lines.append(f"| {name} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def _rows_to_csv(header: list[str], rows: list[list[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def per_image_csv(records: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> str:
    """One row per image, model and order: the image's attack statistics and every per-order quantity."""
    names, orders = list(meta.get("models") or []), list(meta.get("orders") or [])
    ratios = meta.get("ratios") or [None] * len(orders)
    scalars = [k for k in ("clean_correct", "reached", "adv_misclassified", "logit_drop", "linf", "analyzed")]
    quantities = [name for q in order_quantities(records) for name in (q, f"{q}_stderr")]
    header = ["index", "label", "model", "order", "ratio", *scalars, *quantities]
    rows = []
    for b, index in enumerate(records["index"].tolist()):
        for k, model in enumerate(names):
            fixed = [records[s][b, k].item() for s in scalars]
            for o, (m, r) in enumerate(zip(orders, ratios, strict=True)):
                values = [records[q][b, k, o].item() for q in quantities]
                rows.append([index, int(records["label"][b]), model, m, r, *fixed, *values])
    return _rows_to_csv(header, rows)


def aggregate_csv(summary: Mapping[str, Any]) -> str:
    """One row per model and order: the aggregates of :func:`aggregate`."""
    models = summary.get("models") or {}
    orders = list(summary.get("orders") or [])
    ratios = summary.get("ratios") or [None] * len(orders)
    per_order = sorted({k for e in models.values() for k, v in e.items() if isinstance(v, list)})
    header = ["model", "order", "ratio", "num_analyzed", *per_order]
    rows = [
        [name, m, r, entry["num_analyzed"], *(entry[k][o] for k in per_order)]
        for name, entry in models.items()
        for o, (m, r) in enumerate(zip(orders, ratios, strict=True))
    ]
    return _rows_to_csv(header, rows)


def load_analysis(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The records (sorted by dataset index, each once) and metadata of an analysis: a merged file or a run folder
    (its merged file plus any shards not merged yet; the metadata from ``meta.json`` when present)."""
    return read_records(path, ANALYSIS_NAME, what="interaction analysis results")
