"""Figures of an attribution analysis (``matplotlib.figure.Figure``: no pyplot state, no GUI backend).

* :func:`regional_figure`: the image beside, per norm, the heatmap of its regional attributions (the importance
  ``−φ_uv``, Wang et al., ICCV 2021, Fig. 2–3) and of the regional magnitudes of the unrestricted perturbation,
  each over the image's inner part (the border is left grey);
* the components' figure is :func:`~lit_advgame.attributions.components.component_figure` (image, ``|δ|``,
  components coloured by their effect).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from matplotlib.figure import Figure

from lit_advgame.attributions.regional import RegionGrid
from lit_advgame.attributions.results import NORM_SYMBOLS


def regional_figure(
    image: torch.Tensor,
    grid: RegionGrid,
    importance: Mapping[str, torch.Tensor],
    magnitudes: Mapping[str, torch.Tensor],
    title: str | None = None,
) -> Figure:
    """The image ``(C, H, W)`` and, per norm, the ``(L, L)`` (or ``(L²,)``) maps ``importance`` (``−φ``, red =
    allowing the region lowers the cost most) and ``magnitudes`` (``‖δ‖₂`` per region) drawn over the regions."""
    panels = [(f"importance −φ ({NORM_SYMBOLS.get(n, n)})", m, "RdBu_r") for n, m in importance.items()]
    panels += [(f"‖δ‖ per region ({NORM_SYMBOLS.get(n, n)})", m, "magma") for n, m in magnitudes.items()]
    fig = Figure(figsize=(2.4 * (1 + len(panels)), 2.8), dpi=100)
    axes = fig.subplots(1, 1 + len(panels), squeeze=False)[0]
    picture = image.detach().cpu().float().permute(1, 2, 0).squeeze(-1).clamp(0, 1).numpy()
    (bh, bw), side = grid.border, grid.num_regions
    extent = (bw - 0.5, grid.width - bw - 0.5, grid.height - bh - 0.5, bh - 0.5)  # the inner part, in pixels
    axes[0].imshow(picture, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    axes[0].set_title("image", fontsize=9)
    for ax, (name, values, cmap) in zip(axes[1:], panels, strict=True):
        values = values.detach().cpu().double().reshape(side, side)
        ax.imshow(picture, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        if cmap == "RdBu_r":  # diverging, centred at 0
            bound = float(values.abs().max()) or 1.0
            limits = {"vmin": -bound, "vmax": bound}
        else:
            limits = {"vmin": 0.0, "vmax": float(values.max()) or 1.0}
        ax.imshow(values.numpy(), cmap=cmap, extent=extent, alpha=0.75, interpolation="nearest", **limits)
        ax.set_xlim(-0.5, grid.width - 0.5)
        ax.set_ylim(grid.height - 0.5, -0.5)
        ax.set_title(name, fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(pad=0.4, rect=(0, 0, 1, 0.9 if title else 1))
    return fig
