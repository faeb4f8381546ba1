"""``TransferReport``: tables (Markdown in the shape of the IR paper's Table 1, CSV, JSON), the transfer
utility vs interaction figure (the paper's Figure 1) and TensorBoard logging of a transfer evaluation."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.stats

from lit_advgame.evaluation.results import RowResult
from lit_advgame.utils.io import atomic_write, atomic_write_text

CSV_COLUMNS = (
    "name",
    "source",
    "method",
    "target",
    "num_images",
    "whitebox_success",
    "interaction",
    "interaction_stderr",
    "perturbation_l2",
    "perturbation_linf",
    "success",
    "success_loo",
    "utility",
    "utility_stderr",
    "target_clean_accuracy",
)
METRICS = {
    "success_loo": "LOO-selected success rate (%)",
    "success": "last-step success rate (%)",
    "utility": "transfer utility (mean change of the target's margin)",
}


def _pct(value: float, n: int | None = None, with_se: bool = True) -> str:
    if value is None or math.isnan(value):
        return "–"
    text = f"{100 * value:.1f}"
    if with_se and n:
        # binomial standard error sqrt(p (1 - p) / n) of a rate p over n examples
        text += f" ± {100 * math.sqrt(max(value * (1 - value), 0.0) / n):.1f}"
    return text


def _num(value: float, se: float | None = None, digits: int = 3, fmt: str = "f") -> str:
    if value is None or math.isnan(value):
        return "–"
    text = f"{value:.{digits}{fmt}}"
    if se is not None and not math.isnan(se):
        text += f" ± {se:.{digits if fmt == 'f' else 2}{fmt}}"
    return text


def pearson(xs: list[float], ys: list[float]) -> float:
    """Pearson correlation r of two lists (:func:`scipy.stats.pearsonr`).

    Pairs where either value is NaN are dropped first. The result is NaN (rather than an error or a
    warning) with fewer than 3 remaining points or when either list has no spread (all values equal).
    """
    x, y = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    if len(x) < 3 or np.all(x == x[0]) or np.all(y == y[0]):
        return float("nan")
    return float(scipy.stats.pearsonr(x, y).statistic)


@dataclass
class TransferReport:
    """Result of :func:`~lit_advgame.evaluation.transfer.evaluate_transfer`: one :class:`RowResult` per
    attack run, each with a :class:`TargetResult` per target."""

    rows: list[RowResult]
    targets: list[str]
    settings: dict[str, Any] = field(default_factory=dict)
    title: str = "Transfer success rates (%)"

    # ------------------------------------------------------------------ access
    def row(self, name: str) -> RowResult:
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(f"no row {name!r}; rows: {[r.name for r in self.rows]}")

    def matrix(self, metric: str) -> list[list[float]]:
        """rows × targets values of ``success``, ``success_loo``, ``utility`` or ``clean_accuracy``."""
        return [[getattr(row.targets[t], metric) for t in self.targets] for row in self.rows]

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "targets": self.targets,
            "settings": self.settings,
            "rows": [row.to_dict() for row in self.rows],
        }

    # ------------------------------------------------------------------ tables
    def csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for row in self.rows:
            for target in self.targets:
                cell = row.targets[target]
                writer.writerow(
                    [
                        row.name,
                        row.source,
                        row.method,
                        target,
                        cell.num_images,
                        row.whitebox_success,
                        row.interaction,
                        row.interaction_stderr,
                        row.perturbation_l2,
                        row.perturbation_linf,
                        cell.success,
                        cell.success_loo,
                        cell.utility,
                        cell.utility_stderr,
                        cell.clean_accuracy,
                    ]
                )
        return buffer.getvalue()

    def markdown_table(self, metric: str = "success_loo", with_se: bool = True) -> str:
        """Rows grouped by source (Table 1's layout): Source | Method | white-box | targets... | interaction | ‖δ‖₂."""
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; choose one of: {', '.join(METRICS)}")
        head = ["Source", "Method", "white-box", *self.targets, "interaction", "‖δ‖₂"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        previous = None
        for row in self.rows:
            source = row.source if row.source != previous else ""
            cells = [source, row.method, _pct(row.whitebox_success, row.num_images, with_se)]
            for target in self.targets:
                cell = row.targets[target]
                if metric == "utility":
                    cells.append(_num(cell.utility, cell.utility_stderr if with_se else None, 2))
                else:
                    cells.append(_pct(getattr(cell, metric), cell.num_images, with_se))
            cells.append(_num(row.interaction, row.interaction_stderr if with_se else None, 3, "g"))
            cells.append(_num(row.perturbation_l2, None, 2))
            lines.append("| " + " | ".join(cells) + " |")
            previous = row.source
        return "\n".join(lines)

    def markdown(self) -> str:
        interaction = self.settings.get("interaction")
        parts = [f"# {self.title}", ""]
        parts.append(
            f"Examples: `{self.settings.get('subset')}`; success = the target's margin max_(k≠y) z_k − z_y > 0; "
            "cells are mean ± standard error (binomial for rates, over images for utility and interaction); "
            "white-box = success on the source itself; ‖δ‖₂ = mean L2 norm of the perturbations."
        )
        if interaction:
            parts.append(
                f"Interaction: E_ij[I_ij(δ)] on the source, grid {interaction['grid']}, form `{interaction['form']}`, "
                f"{interaction['num_samples']} samples, value `{interaction['value']}`, scale `{interaction['scale']}`."
            )
        resized = self.settings.get("resized_targets")
        if resized:
            sizes = ", ".join(f"{name} {'×'.join(map(str, size))}" for name, size in resized.items())
            parts.append(
                f"Images ({'×'.join(map(str, self.settings.get('image_size') or []))}) resized to each target's input "
                f"size: {sizes} ({self.settings.get('resize')})."
            )
        for metric, caption in METRICS.items():
            if metric == "success_loo" and all(math.isnan(v) for r in self.matrix("success_loo") for v in r):
                continue
            parts += ["", f"## {caption}", "", self.markdown_table(metric)]
        return "\n".join(parts) + "\n"

    # ------------------------------------------------------------------ figure
    def figure_utility_vs_interaction(self):
        """Transfer utility against interaction, one panel per (source, target) pair (the paper's Figure 1)."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        sources = list(dict.fromkeys(row.source for row in self.rows))
        fig, axes = plt.subplots(
            len(sources), len(self.targets), figsize=(3.2 * len(self.targets), 2.8 * len(sources)), squeeze=False
        )
        for i, source in enumerate(sources):
            rows = [r for r in self.rows if r.source == source]
            for j, target in enumerate(self.targets):
                ax = axes[i][j]
                xs = [r.interaction for r in rows]
                ys = [r.targets[target].utility for r in rows]
                ax.errorbar(
                    xs,
                    ys,
                    xerr=[r.interaction_stderr for r in rows],
                    yerr=[r.targets[target].utility_stderr for r in rows],
                    fmt="o",
                    ms=4,
                    lw=0.8,
                )
                for r, x, y in zip(rows, xs, ys):
                    ax.annotate(r.method, (x, y), fontsize=6, xytext=(2, 2), textcoords="offset points")
                ax.set_title(f"{source} → {target}  r={pearson(xs, ys):.2f}", fontsize=8)
                ax.set_xlabel("interaction", fontsize=8)
                ax.set_ylabel("transfer utility", fontsize=8)
                ax.tick_params(labelsize=7)
        fig.tight_layout()
        return fig

    # ------------------------------------------------------------------ output
    def log_tensorboard(self, log_dir: str | os.PathLike) -> None:
        """Scalars ``transfer/<row>/<target>/<metric>``, ``source/<row>/...``, the tables as text, the figure."""
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(log_dir))
        try:
            for row in self.rows:
                writer.add_scalar(f"source/{row.name}/whitebox_success", row.whitebox_success, 0)
                if not math.isnan(row.interaction):
                    writer.add_scalar(f"source/{row.name}/interaction", row.interaction, 0)
                for target, cell in row.targets.items():
                    for metric in ("success", "success_loo", "utility", "clean_accuracy"):
                        value = getattr(cell, metric)
                        if not math.isnan(value):
                            writer.add_scalar(f"transfer/{row.name}/{target}/{metric}", value, 0)
                    for step, value in enumerate(cell.step_success or []):
                        writer.add_scalar(f"transfer_step/{row.name}/{target}/success", value, step + 1)
            writer.add_text("transfer/table", self.markdown(), 0)
            if any(not math.isnan(r.interaction) for r in self.rows):
                writer.add_figure("transfer/utility_vs_interaction", self.figure_utility_vs_interaction(), 0)
        finally:
            writer.close()

    def save(self, output_dir: str | os.PathLike, tensorboard: bool = True) -> Path:
        """Write ``report.json``, ``report.csv``, ``report.md`` (atomically), the figure and TensorBoard events."""
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "report.json", json.dumps(self.to_dict(), indent=2, default=str) + "\n")
        atomic_write_text(out / "report.csv", self.csv())
        atomic_write_text(out / "report.md", self.markdown())
        if any(not math.isnan(r.interaction) for r in self.rows):
            import matplotlib.pyplot as plt

            fig = self.figure_utility_vs_interaction()
            atomic_write(out / "utility_vs_interaction.png", lambda fh: fig.savefig(fh, format="png", dpi=120))
            plt.close(fig)
        if tensorboard:
            self.log_tensorboard(out / "tensorboard")
        return out
