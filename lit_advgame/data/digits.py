"""scikit-learn's handwritten digits (1797 images of 8×8 pixels, 10 classes) as a DataModule.

The data ships inside scikit-learn (``sklearn.datasets.load_digits``), so no network is needed;
it is the default dataset of lit_advgame's small, fast experiments.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from jsonargparse.typing import PositiveInt
from torchvision.transforms import RandomCrop

from lit_advgame.data.base import ImageDataModule
from lit_advgame.data.datasets import InMemoryImageDataset, resize_images
from lit_advgame.data.splits import check_fractions, stratified_split
from lit_advgame.utils.checks import check_int


def load_digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 digits as ``(images (N, 1, 8, 8) float32 in [0, 1], labels (N,) int64)``.

    Raw pixel values are integers 0..16, so they are divided by 16."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    return images.clamp_(0.0, 1.0), labels


class DigitsDataModule(ImageDataModule):
    """scikit-learn digits in pixel space, resized and split with a fixed seed.

    Images are scaled to [0, 1] (raw values / 16), resized from 8×8 to ``image_size`` with
    antialiased bilinear interpolation (clamped back to [0, 1]) and repeated to 3 channels when
    ``channels=3``. The 1797 images are split once, in ``__init__``, into train/val/test by a
    seeded stratified split (:func:`lit_advgame.data.splits.stratified_split`) and kept in memory.

    ``mean``/``std`` are the per-channel mean and (population) standard deviation of the
    *training split* at the chosen size, computed in ``__init__`` (cheap: the data is tiny),
    so they depend on ``image_size``, the fractions and ``seed``.

    Args:
        image_size: side of the square images (>= 8; default 16 so a grid of players fits).
        channels: 1 (grayscale) or 3 (the gray image repeated).
        val_fraction: fraction of all images in the validation split, in (0, 1).
        test_fraction: fraction of all images in the test split, in (0, 1).
        augment: random translation of the training images by up to one original (8×8) pixel
            (``RandomCrop`` with zero padding ``image_size // 8``).
        **kwargs: the loader options of :class:`ImageDataModule` (``batch_size`` 64, ``num_workers``,
            ``seed``: of the split and of the training shuffle, ``predict_split``, ``predict_limit``,
            ``pin_memory``).
    """

    num_classes = 10

    def __init__(
        self,
        image_size: PositiveInt = 16,
        channels: Literal[1, 3] = 1,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        augment: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_int(image_size, "image_size", minimum=8)
        check_int(channels, "channels")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grayscale) or 3 (gray repeated); got {channels}")
        check_fractions(val_fraction, test_fraction)
        self.image_size = int(image_size)  # a plain int (jsonargparse passes a PositiveInt)
        self.channels = channels
        self.augment = bool(augment)
        self.input_shape = (int(channels), self.image_size, self.image_size)

        images, labels = load_digits_tensors()
        images = resize_images(images, self.image_size)
        train_idx, val_idx, test_idx = stratified_split(labels, val_fraction, test_fraction, self.seed)
        self._indices = {"train": train_idx, "val": val_idx, "test": test_idx}
        self._images, self._labels = images, labels

        train_images = images[train_idx]
        channel_mean = float(train_images.mean())
        channel_std = float(train_images.std(unbiased=False))
        self.mean = (channel_mean,) * channels
        self.std = (channel_std,) * channels

    def _load_splits(self):
        splits = {
            name: InMemoryImageDataset(self._images[idx], self._labels[idx], channels=self.channels)
            for name, idx in self._indices.items()
        }
        augmented = None
        if self.augment:
            crop = RandomCrop(self.image_size, padding=max(1, self.image_size // 8))
            train_idx = self._indices["train"]
            augmented = InMemoryImageDataset(
                self._images[train_idx], self._labels[train_idx], channels=self.channels, transform=crop
            )
        return splits, augmented
