"""MNIST (LeCun et al. 1998) read from its IDX files, with a test-set-only mode.

Files are looked for in ``data_dir`` and in ``data_dir/MNIST/raw`` (torchvision's layout), each
either plain or gzip-compressed:

- ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte`` (60000 training images),
- ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (10000 test images).

Standard mode (both pairs present): train/val is a seeded stratified split of the 60000 training
images (``val_fraction``), test is the official 10000-image test set.

Test-set-only mode (only the t10k pair present, e.g. ``shared/data/mnist-t10k``): the 10000 test
images are split, seeded and stratified, into train/val/test with ``val_fraction`` and
``test_fraction``. Results in this mode are not comparable with the official test protocol.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from jsonargparse.typing import PositiveInt

from lit_advgame.data.base import DataNotFoundError, ImageDataModule, missing_data_message
from lit_advgame.data.datasets import InMemoryImageDataset, resize_images
from lit_advgame.data.idx import IdxFormatError, read_idx
from lit_advgame.data.splits import check_fractions, stratified_split
from lit_advgame.utils.checks import check_int
from lit_advgame.vocabulary import MNISTMode

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def mnist_search_dirs(data_dir: str | Path) -> list[Path]:
    """Folders searched for the IDX files: ``data_dir`` and ``data_dir/MNIST/raw``."""
    root = Path(data_dir).expanduser()
    return [root, root / "MNIST" / "raw"]


def _find_file(dirs: list[Path], name: str) -> Path | None:
    for folder in dirs:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def find_mnist_files(data_dir: str | Path) -> dict[str, tuple[Path, Path]]:
    """The complete (images, labels) pairs found, keyed by ``"train"`` / ``"test"``."""
    dirs = mnist_search_dirs(data_dir)
    found = {}
    for part, (images_name, labels_name) in MNIST_FILES.items():
        images, labels = _find_file(dirs, images_name), _find_file(dirs, labels_name)
        if images is not None and labels is not None:
            found[part] = (images, labels)
    return found


def read_mnist_pair(images_path: Path, labels_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Read one IDX pair as ``(images (N, 1, H, W) uint8, labels (N,) int64)``, checking consistency."""
    images = read_idx(images_path, expected_ndim=3)
    labels = read_idx(labels_path, expected_ndim=1)
    if images.dtype.kind != "u" or labels.dtype.kind != "u":
        raise IdxFormatError(f"MNIST IDX files must hold uint8 data: {images_path}, {labels_path}")
    if images.shape[0] != labels.shape[0]:
        raise IdxFormatError(
            f"{images_path} holds {images.shape[0]} images but {labels_path} holds {labels.shape[0]} labels"
        )
    if labels.size and labels.max() > 9:
        raise IdxFormatError(f"{labels_path} holds labels up to {labels.max()}; MNIST labels are 0..9")
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype("int64"))


class MNISTDataModule(ImageDataModule):
    """MNIST handwritten digits in pixel space [0, 1] (see the module docstring for the two modes).

    Args:
        data_dir: folder holding the IDX files (or ``MNIST/raw`` below it).
        download: download with ``torchvision.datasets.MNIST`` into ``data_dir/MNIST/raw`` when
            the files are missing (needs internet).
        image_size: side of the square images; 28 keeps the originals, other sizes are resized
            with antialiased bilinear interpolation (clamped to [0, 1]).
        channels: 1, or 3 (the gray image repeated).
        val_fraction: fraction of the training images (standard mode) or of the 10000 test
            images (test-set-only mode) used for validation.
        test_fraction: fraction of the 10000 test images used as test split in test-set-only mode
            (ignored in standard mode).
        batch_size: examples per batch (default 128).
        **kwargs: the other loader options of :class:`ImageDataModule` (``num_workers``, ``seed``: of the
            split and of the training shuffle, ``predict_split``, ``predict_limit``, ``pin_memory``).

    ``mean``/``std`` are the standard MNIST constants (0.1307, 0.3081), repeated per channel.
    """

    num_classes = 10

    def __init__(
        self,
        data_dir: str = "data/mnist",
        download: bool = False,
        image_size: PositiveInt = 28,
        channels: Literal[1, 3] = 1,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        batch_size: PositiveInt = 128,
        **kwargs: Any,
    ) -> None:
        super().__init__(batch_size=batch_size, **kwargs)
        check_int(image_size, "image_size", minimum=8)
        check_int(channels, "channels")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grayscale) or 3 (gray repeated); got {channels}")
        check_fractions(val_fraction, test_fraction)
        self.data_dir = Path(data_dir).expanduser()
        self.download = bool(download)
        self.image_size = int(image_size)  # a plain int (jsonargparse passes a PositiveInt)
        self.channels = channels
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.mean = (MNIST_MEAN,) * channels
        self.std = (MNIST_STD,) * channels
        self.input_shape = (int(channels), self.image_size, self.image_size)
        self.mode: MNISTMode | None = None  # known after setup

    # ----------------------------------------------------------------- locating / downloading
    def _missing_message(self, extra: str | None = None) -> str:
        searched = [str(folder.resolve()) for folder in mnist_search_dirs(self.data_dir)]
        files = ", ".join(f"{name}[.gz]" for pair in MNIST_FILES.values() for name in pair)
        message = missing_data_message(
            f"MNIST IDX files ({files})",
            searched,
            [
                f"pass download=True (--data.download true) to fetch them into {self.data_dir / 'MNIST' / 'raw'}, or",
                f"copy the four IDX files (gzip or not) into {self.data_dir}, or",
                "copy only t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz there (test-set-only mode: "
                "the 10000 test images are split into train/val/test with val_fraction/test_fraction)",
            ],
        )
        return message if extra is None else f"{message}\n{extra}"

    def _locate(self) -> dict[str, tuple[Path, Path]]:
        found = find_mnist_files(self.data_dir)
        if "test" in found:
            return found
        if not self.download:
            hint = None
            if "train" in found:
                hint = "Found the training files but not the t10k test files, which every mode needs."
            raise DataNotFoundError(self._missing_message(hint))
        try:
            from torchvision.datasets import MNIST

            for train in (True, False):
                MNIST(root=str(self.data_dir), train=train, download=True)
        except Exception as err:  # network, disk or checksum failure
            raise DataNotFoundError(self._missing_message(f"Download failed: {type(err).__name__}: {err}")) from err
        found = find_mnist_files(self.data_dir)
        if "test" not in found:
            raise DataNotFoundError(self._missing_message("The download finished but the files are still missing."))
        return found

    def prepare_data(self) -> None:
        """Download the files if they are missing and ``download=True``; else fail clearly."""
        self._locate()

    # ----------------------------------------------------------------- loading
    def _prepare_images(self, images: torch.Tensor) -> torch.Tensor:
        if self.image_size == images.shape[-1] and self.image_size == images.shape[-2]:
            return images  # keep uint8; converted per item
        return resize_images(images.float().div_(255.0), self.image_size)

    def _load_splits(self):
        found = self._locate()
        test_images, test_labels = read_mnist_pair(*found["test"])
        test_images = self._prepare_images(test_images)
        if "train" in found:
            self.mode = "standard"
            images, labels = read_mnist_pair(*found["train"])
            images = self._prepare_images(images)
            train_idx, val_idx, _ = stratified_split(labels, self.val_fraction, 0.0, self.seed)
            parts = {
                "train": (images[train_idx], labels[train_idx]),
                "val": (images[val_idx], labels[val_idx]),
                "test": (test_images, test_labels),
            }
        else:
            self.mode = "test_only"
            idx = stratified_split(test_labels, self.val_fraction, self.test_fraction, self.seed)
            parts = {name: (test_images[i], test_labels[i]) for name, i in zip(("train", "val", "test"), idx)}
        splits = {name: InMemoryImageDataset(x, y, channels=self.channels) for name, (x, y) in parts.items()}
        return splits, None
