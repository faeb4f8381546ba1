"""Matplotlib figures of the callbacks (built on ``matplotlib.figure.Figure``: no pyplot state, no GUI backend).

TensorBoard's ``add_figure`` renders them with the Agg canvas and closes them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from matplotlib.figure import Figure


def _order_axis(ax, orders: Sequence[int], num_players: int) -> list[int]:
    ax.set_xlabel(f"order m  (n = {num_players} players)")
    ax.grid(True, alpha=0.3)
    return list(orders)


def multi_order_figure(result, epoch: int) -> Figure:
    """2x2 panels: ``I^(m)`` clean vs adversarial, ``ΔI^(m)``, ``ΔJ^(m)`` and the normalized share.

    ``result`` is an :class:`~lit_advgame.interactions.InteractionChangeResult`; error bars are
    one standard error.
    """
    fig = Figure(figsize=(10, 7))
    axes = fig.subplots(2, 2)
    n = result.clean.num_players
    m = _order_axis(axes[0, 0], result.orders, n)
    axes[0, 0].errorbar(
        m, result.clean.values.tolist(), yerr=result.clean.stderr.tolist(), marker="o", capsize=3, label="clean"
    )
    axes[0, 0].errorbar(
        m,
        result.adversarial.values.tolist(),
        yerr=result.adversarial.stderr.tolist(),
        marker="s",
        capsize=3,
        label="adversarial",
    )
    axes[0, 0].set_ylabel("I^(m)")
    axes[0, 0].legend()
    axes[0, 1].errorbar(
        _order_axis(axes[0, 1], result.orders, n),
        result.values.tolist(),
        yerr=result.stderr.tolist(),
        marker="o",
        capsize=3,
    )
    axes[0, 1].axhline(0.0, color="grey", lw=0.8)
    axes[0, 1].set_ylabel("ΔI^(m) = I(x) - I(x_adv)")
    axes[1, 0].errorbar(
        _order_axis(axes[1, 0], result.orders, n),
        result.utility.tolist(),
        yerr=result.utility_stderr.tolist(),
        marker="o",
        capsize=3,
    )
    axes[1, 0].axhline(0.0, color="grey", lw=0.8)
    axes[1, 0].set_ylabel("ΔJ^(m) = (n-1-m)/(n(n-1)) ΔI^(m)")
    axes[1, 1].plot(_order_axis(axes[1, 1], result.orders, n), result.share.tolist(), marker="o")
    axes[1, 1].set_ylabel("|ΔI^(m)| / Σ_m' |ΔI^(m')|")
    fig.suptitle(f"Multi-order interactions, epoch {epoch}")
    fig.tight_layout()
    return fig


def disentanglement_figure(result, epoch: int) -> Figure:
    """``D^(m)`` (ratio of means, with standard errors) and the per-pair form over orders."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    m = _order_axis(ax, result.orders, result.num_players)
    ax.errorbar(
        m, result.values.tolist(), yerr=result.stderr.tolist(), marker="o", capsize=3, label="D^(m) (ratio of means)"
    )
    ax.plot(m, result.per_pair_form.tolist(), marker="s", linestyle="--", label="per-pair form (Eq. 4)")
    ax.set_ylim(0.0, 1.05)
    ax.set_ylabel("D^(m)")
    ax.legend()
    ax.set_title(f"Interaction disentanglement, epoch {epoch}")
    fig.tight_layout()
    return fig


def transfer_figure(matrix: torch.Tensor, names: Sequence[str], num_points: int, epoch: int) -> Figure:
    """Heatmap of transfer success rates (rows: attacked source model, columns: target model)."""
    size = len(names)
    fig = Figure(figsize=(1.2 * size + 2.5, 1.0 * size + 2.0))
    ax = fig.subplots()
    values = matrix.detach().cpu().float()
    image = ax.imshow(values.numpy(), vmin=0.0, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(size), labels=list(names), rotation=45, ha="right")
    ax.set_yticks(range(size), labels=list(names))
    ax.set_xlabel("target model")
    ax.set_ylabel("source model (attacked)")
    for i in range(size):
        for j in range(size):
            v = float(values[i, j])
            ax.text(
                j, i, f"{100 * v:.0f}%", ha="center", va="center", color="black" if v > 0.5 else "white", fontsize=9
            )
    fig.colorbar(image, ax=ax, label="attack success rate")
    ax.set_title(f"Transferability ({num_points} probes), epoch {epoch}")
    fig.tight_layout()
    return fig
