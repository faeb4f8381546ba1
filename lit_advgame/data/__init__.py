"""DataModules serving pixel-space images in [0, 1] with int64 labels, and a name registry."""
from __future__ import annotations

from typing import Any

from lit_advgame.data.base import DataNotFoundError, ImageDataModule
from lit_advgame.data.cifar10 import CIFAR10DataModule
from lit_advgame.data.digits import DigitsDataModule
from lit_advgame.data.imagefolder import ImageFolderDataModule
from lit_advgame.data.mnist import MNISTDataModule

DATAMODULES: dict[str, type[ImageDataModule]] = {
    "digits": DigitsDataModule,
    "mnist": MNISTDataModule,
    "cifar10": CIFAR10DataModule,
    "imagefolder": ImageFolderDataModule,
}


def get_datamodule(name: str, **kwargs: Any) -> ImageDataModule:
    """Build the DataModule registered as ``name`` (case-insensitive) with ``kwargs``."""
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
]
