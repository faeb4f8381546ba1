"""Target-model scores of adversarial examples, batched: margins at the last step and at every step."""

from __future__ import annotations

import torch
from torch import nn

from lit_advgame.predict.models import margins
from lit_advgame.predict.shards import AdversarialSet


@torch.no_grad()
def batched_margins(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """``max_{k≠y} z_k − z_y`` of ``model`` for each image (N,), on CPU (> 0 ⇔ misclassified)."""
    out = []
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size].to(device, torch.float32)
        y = labels[start : start + batch_size].to(device)
        out.append(margins(model(x), y).float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


@torch.no_grad()
def candidate_margins(
    model: nn.Module, adversarial: AdversarialSet, batch_size: int = 256, device: torch.device | str = "cpu"
) -> torch.Tensor | None:
    """Margins of ``model`` on every recorded per-step image, (N, T); ``None`` without candidates."""
    if "candidates" not in adversarial.records:
        return None
    num, steps = adversarial.records["candidates"].shape[:2]
    per_chunk = max(1, batch_size // steps)
    rows = []
    for start in range(0, num, per_chunk):
        images = adversarial.candidates(start, start + per_chunk)  # (n, T, C, H, W)
        n = images.shape[0]
        labels = adversarial.label[start : start + n].repeat_interleave(steps)
        flat = batched_margins(model, images.flatten(0, 1), labels, batch_size, device)
        rows.append(flat.view(n, steps))
    return torch.cat(rows)
