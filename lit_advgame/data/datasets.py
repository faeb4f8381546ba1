"""Small dataset wrappers that yield ``(image float32 C×H×W in [0, 1], label int64 scalar)``."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

Transform = Callable[[torch.Tensor], torch.Tensor]


def pil_to_float(image) -> torch.Tensor:
    """Convert a PIL image (or H×W / H×W×C uint8 array) to a float32 C×H×W tensor in [0, 1]."""
    array = np.array(image)  # a writable copy (PIL arrays are read-only)
    if array.ndim == 2:
        array = array[:, :, None]
    tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)
    if tensor.dtype == torch.uint8:
        return tensor.float().div_(255.0)
    return tensor.float().clamp_(0.0, 1.0)


def resize_images(images: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """Resize an (N, C, H, W) float batch in [0, 1] to ``size``×``size`` with antialiased
    bilinear interpolation, clamped back to [0, 1]. Processed in chunks to bound memory."""
    if images.shape[-2:] == (size, size):
        return images
    out = [
        F.interpolate(part, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        for part in images.split(chunk)
    ]
    return torch.cat(out).clamp_(0.0, 1.0)


class InMemoryImageDataset(Dataset):
    """Images held in memory as an (N, C0, H, W) tensor.

    Args:
        images: uint8 (scaled by 1/255) or float tensor in [0, 1], shape (N, C0, H, W).
        labels: (N,) integer labels (stored as int64).
        channels: output channels; a 1-channel image is repeated to 3 when ``channels=3``.
        transform: optional tensor transform applied per item (e.g. augmentation).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        channels: int | None = None,
        transform: Transform | None = None,
    ) -> None:
        if images.dim() != 4 or images.shape[0] != len(labels):
            raise ValueError(
                f"images must be (N, C, H, W) with N == len(labels); got {tuple(images.shape)} and {len(labels)} labels"
            )
        self.images = images
        self.labels = torch.as_tensor(labels).long()
        self.channels = images.shape[1] if channels is None else int(channels)
        if images.shape[1] not in (1, self.channels):
            raise ValueError(f"cannot turn {images.shape[1]}-channel images into {self.channels} channels")
        self.transform = transform

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index]
        image = image.float().div(255.0) if image.dtype == torch.uint8 else image.float()
        if image.shape[0] != self.channels:
            image = image.expand(self.channels, -1, -1)
        image = image.contiguous()
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[index]


class TransformedDataset(Dataset):
    """Apply ``transform`` to the image of ``base[i]`` and return the label as an int64 scalar tensor.

    ``base`` yields ``(image, label)`` with any image type ``transform`` accepts (e.g. PIL) and
    an int or tensor label; ``transform`` must return a float tensor in [0, 1].
    """

    def __init__(self, base: Dataset, transform: Callable) -> None:
        self.base = base
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.base[index]
        return self.transform(image), torch.as_tensor(label, dtype=torch.int64)
