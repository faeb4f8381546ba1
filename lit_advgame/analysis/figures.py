"""Figures of an interaction analysis (``matplotlib.figure.Figure``: no pyplot state, no GUI backend), one panel each.

* :func:`interactions_figure`: ``I^(m)`` of normal and adversarial images against the order, for one model
  (Ren et al., NeurIPS 2021, Figure 3);
* :func:`comparison_figure`: one per-order quantity for every model on one axis -- ``ΔJ^(m)`` (Figure 4), the
  share ``|ΔI^(m)| / Σ|ΔI|`` (supplement Table 2) or ``ΔI^(m)`` -- e.g. a standard against an adversarially trained
  model.

Error bars are one standard error; the x axis is the order ``m`` (the paper plots ``m / n``: the ratios).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

from matplotlib.figure import Figure

#: the per-order quantities :func:`comparison_figure` draws, with their axis labels
COMPARISONS = {
    "utility": "ΔJ^(m) = (n-1-m)/(n(n-1)) ΔI^(m)",
    "share": "|ΔI^(m)| / Σ_m' |ΔI^(m')|",
    "delta": "ΔI^(m) = I^(m)(x) - I^(m)(x_adv)",
}
FONT_SIZE = 12


def _axes(title: str, summary: Mapping[str, Any], ylabel: str) -> tuple[Figure, Any]:
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.subplots()
    ax.set_xlabel(f"order m  (n = {summary.get('num_players')} players)", fontsize=FONT_SIZE)
    ax.set_ylabel(ylabel, fontsize=FONT_SIZE)
    ax.set_title(title, fontsize=FONT_SIZE + 1)
    ax.tick_params(labelsize=FONT_SIZE - 1)
    ax.grid(True, alpha=0.3)
    ax.axhline(0.0, color="grey", lw=0.8)
    return fig, ax


def _curve(ax: Any, orders: list[int], entry: Mapping[str, Any], key: str, label: str, marker: str) -> None:
    stderr = entry.get(f"{key}_stderr")
    ax.errorbar(orders, entry[key], yerr=stderr, marker=marker, capsize=3, label=label)


def interactions_figure(summary: Mapping[str, Any], model: str) -> Figure:
    """``I^(m)`` clean and adversarial (± 1 SE) against the order, for ``model`` (an entry of ``summary["models"]``,
    see :func:`~lit_advgame.analysis.results.aggregate`)."""
    entry = summary["models"][model]
    fig, ax = _axes(f"{model}: I^(m), {entry['num_analyzed']} images", summary, "I^(m)")
    _curve(ax, summary["orders"], entry, "clean", "normal x", "o")
    _curve(ax, summary["orders"], entry, "adversarial", "adversarial x_adv", "s")
    ax.legend(fontsize=FONT_SIZE - 1)
    fig.tight_layout()
    return fig


def comparison_figure(summary: Mapping[str, Any], key: str) -> Figure:
    """``key`` (one of :data:`COMPARISONS`) against the order for every model of ``summary``."""
    if key not in COMPARISONS:
        raise ValueError(f"unknown comparison {key!r}; choose one of: {', '.join(COMPARISONS)}")
    fig, ax = _axes(COMPARISONS[key].split(" = ")[0], summary, COMPARISONS[key])
    for (name, entry), marker in zip(summary["models"].items(), itertools.cycle("osD^v<>")):
        _curve(ax, summary["orders"], entry, key, f"{name} ({entry['num_analyzed']} images)", marker)
    ax.legend(fontsize=FONT_SIZE - 1)
    fig.tight_layout()
    return fig
