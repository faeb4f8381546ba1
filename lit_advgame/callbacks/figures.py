"""Matplotlib figures of the callbacks (built on ``matplotlib.figure.Figure``: no pyplot state, no GUI backend).

One panel per figure, sized for TensorBoard's default image card: the cards are at least 335 px wide (three to
a row on a 1400-px screen) and the image is scaled to fit, so a :data:`FIGSIZE` figure at :data:`DPI` (400 x 300
px) is shown at about three quarters of its size, and the fonts of :data:`STYLE` (10 pt, 9 pt ticks: about 10 and
9 px on screen) stay legible. TensorBoard's ``add_figure`` renders them with the Agg canvas.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import wraps
from typing import Any

import torch
from matplotlib import rc_context
from matplotlib.figure import Figure

#: inches; at :data:`DPI` the size of the image in pixels (x 100)
FIGSIZE = (4.0, 3.0)
DPI = 100
#: matplotlib settings of every figure (font sizes in points)
STYLE = {
    "font.size": 10,
    "axes.titlesize": 10,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "lines.markersize": 4,
    "errorbar.capsize": 2,
}


def styled(build: Callable[..., Figure]) -> Callable[..., Figure]:
    """Build the figure under :data:`STYLE` and lay it out tightly."""

    @wraps(build)
    def wrapper(*args: Any, **kwargs: Any) -> Figure:
        with rc_context(STYLE):
            fig = build(*args, **kwargs)
            fig.tight_layout(pad=0.4)
        return fig

    return wrapper


def _order_axes(title: str, orders: Sequence[int], num_players: int, ylabel: str) -> tuple[Figure, Any, list[int]]:
    """A :data:`FIGSIZE` figure with one axes over the orders ``m`` (n players in the x label)."""
    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    ax = fig.subplots()
    ax.set_title(title)
    ax.set_xlabel(f"order m  (n = {num_players} players)")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax, list(orders)


def _errorbar(ax: Any, m: list[int], values: torch.Tensor, stderr: torch.Tensor, **kwargs: Any) -> None:
    ax.errorbar(m, values.tolist(), yerr=stderr.tolist(), marker="o", **kwargs)


@styled
def clean_vs_adversarial_figure(result, epoch: int) -> Figure:
    """``I^(m)`` on the clean and on the adversarial probes (± 1 SE) against the order (Ren et al., NeurIPS 2021,
    Eq. 2); ``result`` is an :class:`~lit_advgame.interactions.InteractionChangeResult`."""
    fig, ax, m = _order_axes(
        f"I(m) clean vs adversarial, epoch {epoch}", result.orders, result.clean.num_players, "I(m)"
    )
    _errorbar(ax, m, result.clean.values, result.clean.stderr, label="clean")
    _errorbar(ax, m, result.adversarial.values, result.adversarial.stderr, label="adversarial")
    ax.legend()
    return fig


def _signed_figure(result, title: str, ylabel: str, values: torch.Tensor, stderr: torch.Tensor) -> Figure:
    """A per-order quantity that changes sign (± 1 SE error bars), with the zero line."""
    fig, ax, m = _order_axes(title, result.orders, result.clean.num_players, ylabel)
    _errorbar(ax, m, values, stderr)
    ax.axhline(0.0, color="grey", lw=0.8)
    return fig


@styled
def delta_figure(result, epoch: int) -> Figure:
    """``ΔI^(m) = I^(m)(x) − I^(m)(x_adv)`` (± 1 SE) against the order."""
    title = f"ΔI(m) = I(m)(x) − I(m)(x_adv), epoch {epoch}"
    return _signed_figure(result, title, "ΔI(m)", result.values, result.stderr)


@styled
def utility_figure(result, epoch: int) -> Figure:
    """The attacking utility ``ΔJ^(m) = (n−1−m)/(n(n−1)) · ΔI^(m)`` (± 1 SE; Ren et al., NeurIPS 2021, Eq. 3)."""
    title = f"ΔJ(m) = (n−1−m)/(n(n−1)) ΔI(m), epoch {epoch}"
    return _signed_figure(result, title, "ΔJ(m)", result.utility, result.utility_stderr)


@styled
def share_figure(result, epoch: int) -> Figure:
    """The normalized share ``|ΔI^(m)| / Σ_m' |ΔI^(m')|`` against the order (Ren et al., supplement I.2)."""
    fig, ax, m = _order_axes(
        f"share of |ΔI(m)|, epoch {epoch}", result.orders, result.clean.num_players, "|ΔI(m)| / Σ |ΔI(m')|"
    )
    ax.plot(m, result.share.tolist(), marker="o")
    ax.set_ylim(bottom=0.0)
    return fig


#: the figures of the multi-order callback: tag suffix -> builder
MULTI_ORDER_FIGURES = {
    "clean_vs_adversarial": clean_vs_adversarial_figure,
    "delta": delta_figure,
    "utility": utility_figure,
    "share": share_figure,
}


def multi_order_figures(result, epoch: int) -> dict[str, Figure]:
    """The four one-panel figures of an :class:`~lit_advgame.interactions.InteractionChangeResult` by tag suffix:
    ``clean_vs_adversarial``, ``delta``, ``utility`` and ``share`` (error bars: one standard error)."""
    return {name: build(result, epoch) for name, build in MULTI_ORDER_FIGURES.items()}


@styled
def disentanglement_figure(result, epoch: int) -> Figure:
    """``D^(m)`` (ratio of means, ± 1 SE) and the per-pair form over orders (Ren et al., NeurIPS 2021, Eq. 4)."""
    fig, ax, m = _order_axes(f"disentanglement D(m), epoch {epoch}", result.orders, result.num_players, "D(m)")
    _errorbar(ax, m, result.values, result.stderr, label="ratio of means")
    ax.plot(m, result.per_pair_form.tolist(), marker="s", linestyle="--", label="per-pair form (Eq. 4)")
    ax.set_ylim(0.0, 1.05)
    ax.legend()
    return fig


@styled
def transfer_figure(matrix: torch.Tensor, names: Sequence[str], num_points: int, epoch: int) -> Figure:
    """Heatmap of transfer success rates (rows: attacked source model, columns: target model), in percent."""
    size = len(names)
    width = max(FIGSIZE[0], 1.9 + 0.55 * size)
    fig = Figure(figsize=(width, max(FIGSIZE[1], 1.5 + 0.45 * size)), dpi=DPI)
    ax = fig.subplots()
    values = 100 * matrix.detach().cpu().float()
    image = ax.imshow(values.numpy(), vmin=0.0, vmax=100.0, cmap="viridis")
    ax.set_xticks(range(size), labels=list(names), rotation=30, ha="right")
    ax.set_yticks(range(size), labels=list(names))
    ax.set_xlabel("target model")
    ax.set_ylabel("attacked source")
    for i in range(size):
        for j in range(size):
            v = float(values[i, j])
            ax.text(j, i, f"{v:.0f}", ha="center", va="center", color="black" if v > 50 else "white")
    fig.colorbar(image, ax=ax, fraction=0.05, pad=0.03)
    ax.set_title(f"transfer success (%), {num_points} probes, epoch {epoch}")
    return fig
