"""CIFAR-10 (Krizhevsky 2009) on ``torchvision.datasets.CIFAR10``.

Training augmentation follows the standard recipe used by Cohen et al. (2019) and the TRS/PGD-AT
baselines: ``RandomCrop(32, padding=4)`` and a random horizontal flip; evaluation images are
only converted to tensors in [0, 1].
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from jsonargparse.typing import PositiveInt
from torch.utils.data import Subset
from torchvision import transforms
from torchvision.datasets import CIFAR10

from lit_advgame.data.base import DataNotFoundError, ImageDataModule, missing_data_message
from lit_advgame.data.datasets import TransformedDataset, pil_to_float
from lit_advgame.data.splits import check_fractions, stratified_split

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
CIFAR10_FOLDER = "cifar-10-batches-py"


class CIFAR10DataModule(ImageDataModule):
    """CIFAR-10 (32×32 RGB, 10 classes) in pixel space [0, 1].

    The 50000 training images are split (seeded, stratified) into train and val
    (``val_fraction``); test is the official 10000-image test set.

    Args:
        data_dir: root passed to torchvision (which reads ``data_dir/cifar-10-batches-py``).
        download: let torchvision download and extract the archive when missing (needs internet).
        augment: ``RandomCrop(32, padding=4)`` + horizontal flip on training images.
        val_fraction: fraction of the 50000 training images held out for validation, in (0, 1).
        batch_size: examples per batch (default 128).
        **kwargs: the other loader options of :class:`ImageDataModule` (``num_workers``, ``seed``: of the
            split and of the training shuffle, ``predict_split``, ``predict_limit``, ``pin_memory``).

    ``mean``/``std`` are the usual CIFAR-10 constants (0.4914, 0.4822, 0.4465)/(0.2023, 0.1994, 0.2010).
    """

    num_classes = 10
    input_shape = (3, 32, 32)

    def __init__(
        self,
        data_dir: str = "data/cifar10",
        download: bool = False,
        augment: bool = True,
        val_fraction: float = 0.1,
        batch_size: PositiveInt = 128,
        **kwargs: Any,
    ) -> None:
        super().__init__(batch_size=batch_size, **kwargs)
        check_fractions(val_fraction, 0.0, allow_zero_test=True)
        self.data_dir = Path(data_dir).expanduser()
        self.download = bool(download)
        self.augment = bool(augment)
        self.val_fraction = val_fraction
        self.mean = CIFAR10_MEAN
        self.std = CIFAR10_STD

    def _open(self, train: bool):
        try:
            return CIFAR10(root=str(self.data_dir), train=train, download=self.download)
        except Exception as err:
            if self.download:
                extra = f"Download failed: {type(err).__name__}: {err}"
            elif isinstance(err, RuntimeError) and "not found" in str(err).lower():
                extra = None
            else:
                raise
            message = missing_data_message(
                "CIFAR-10 (python version)",
                [str((self.data_dir / CIFAR10_FOLDER).resolve())],
                [
                    "pass download=True (--data.download true) to let torchvision fetch it, or",
                    "download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and "
                    f"extract it into {self.data_dir} (giving {self.data_dir / CIFAR10_FOLDER}/data_batch_1 ...)",
                ],
            )
            raise DataNotFoundError(message if extra is None else f"{message}\n{extra}") from err

    def prepare_data(self) -> None:
        """Download when ``download=True`` and the data is missing; else fail clearly if missing."""
        self._open(train=True)
        self._open(train=False)

    def _load_splits(self):
        train_full = self._open(train=True)
        test = self._open(train=False)
        labels = torch.as_tensor(train_full.targets, dtype=torch.int64)
        train_idx, val_idx, _ = stratified_split(labels, self.val_fraction, 0.0, self.seed)
        train_base = Subset(train_full, train_idx.tolist())
        splits = {
            "train": TransformedDataset(train_base, pil_to_float),
            "val": TransformedDataset(Subset(train_full, val_idx.tolist()), pil_to_float),
            "test": TransformedDataset(test, pil_to_float),
        }
        augmented = None
        if self.augment:
            augmentation = transforms.Compose(
                [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), pil_to_float]
            )
            augmented = TransformedDataset(train_base, augmentation)
        return splits, augmented
