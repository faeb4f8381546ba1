"""DataModules serving pixel-space images in [0, 1] with int64 labels, and a name registry."""

from __future__ import annotations

from typing import Any

from lit_advgame.data.base import DataNotFoundError, ImageDataModule
from lit_advgame.data.cifar10 import CIFAR10DataModule
from lit_advgame.data.digits import DigitsDataModule
from lit_advgame.data.imagefolder import ImageFolderDataModule, read_class_index
from lit_advgame.data.mnist import MNISTDataModule

DATAMODULES: dict[str, type[ImageDataModule]] = {
    "digits": DigitsDataModule,
    "mnist": MNISTDataModule,
    "cifar10": CIFAR10DataModule,
    "imagefolder": ImageFolderDataModule,
}


def get_datamodule(name: str, **kwargs: Any) -> ImageDataModule:
    """Build the DataModule registered as ``name`` (case-insensitive) with ``kwargs``.

    >>> dm = get_datamodule("digits", image_size=12, batch_size=32)
    >>> dm.input_shape, dm.num_classes, dm.split_sizes()
    ((1, 12, 12), 10, {'train': 1257, 'val': 270, 'test': 270})
    >>> x, y = next(iter(dm.train_dataloader()))
    >>> tuple(x.shape), x.dtype, float(x.min()) >= 0.0, float(x.max()) <= 1.0, y.dtype
    ((32, 1, 12, 12), torch.float32, True, True, torch.int64)
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in DATAMODULES:
        raise ValueError(f"unknown datamodule {name!r}; choose one of: {', '.join(sorted(DATAMODULES))}")
    return DATAMODULES[key](**kwargs)


__all__ = [
    "CIFAR10DataModule",
    "DATAMODULES",
    "DataNotFoundError",
    "DigitsDataModule",
    "ImageDataModule",
    "ImageFolderDataModule",
    "MNISTDataModule",
    "get_datamodule",
    "read_class_index",
]
