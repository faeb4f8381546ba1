"""Certified accuracy against radius (the curves of Cohen et al. 2019, Fig. 6-7) with matplotlib."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from lit_advgame.smoothing.results import SmoothingRecords


def radius_grid(records: Mapping[str, SmoothingRecords], radii: Sequence[float] = (), points: int = 201) -> np.ndarray:
    """A fine grid from 0 to a little beyond the largest certified radius (and the requested radii)."""
    largest = [float(r.radius.max()) for r in records.values() if r.radius is not None and len(r)]
    top = max([*largest, *map(float, radii), 1e-3])
    return np.linspace(0.0, 1.05 * top, points)


def certified_accuracy_figure(
    records: Mapping[str, SmoothingRecords],
    radii: Sequence[float] = (),
    title: str = "Certified accuracy (randomized smoothing)",
):
    """Figure of certified accuracy vs L2 radius, one curve per entry of ``records`` (e.g. per σ).

    The requested ``radii`` are marked on each curve. Returns a ``matplotlib.figure.Figure``
    (built without pyplot, so it never opens a window and is safe in worker processes).
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.0, 3.6), dpi=100)
    axes = figure.add_subplot(1, 1, 1)
    grid = radius_grid(records, radii)
    for name, rec in records.items():
        line = axes.plot(grid, rec.certified_accuracy(grid), label=name)[0]
        if len(radii):
            axes.plot(radii, rec.certified_accuracy(radii), "o", color=line.get_color(), markersize=4)
    axes.set_xlabel("L2 radius (pixel space, [0, 1] scale)")
    axes.set_ylabel("certified accuracy")
    axes.set_ylim(0.0, 1.0)
    axes.set_xlim(0.0, float(grid[-1]))
    axes.grid(alpha=0.3)
    axes.set_title(title, fontsize=10)
    if records:
        axes.legend(fontsize=8)
    figure.tight_layout()
    return figure
