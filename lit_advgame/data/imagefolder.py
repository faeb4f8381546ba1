"""ImageNet-style image folders (``root/<split>/<class>/<image>``) on ``torchvision.datasets.ImageFolder``.

The main use is the ImageNet validation set for transfer attacks and interaction studies
(Wang et al. 2021; Ren et al. 2021), whose evaluation transform is Resize(256) → CenterCrop(224)
→ tensor in [0, 1]. Only the validation folder is required; without a training folder the module
serves val/test/predict only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jsonargparse.typing import PositiveInt
from torchvision import transforms
from torchvision.datasets import ImageFolder

from lit_advgame.data.base import DataNotFoundError, ImageDataModule
from lit_advgame.data.datasets import TransformedDataset, pil_to_float
from lit_advgame.utils.checks import check_int

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def class_folders(folder: Path) -> list[str]:
    """Sorted names of the class sub-folders of ``folder`` (hidden ones skipped), as ImageFolder sees them."""
    return sorted(entry.name for entry in folder.iterdir() if entry.is_dir() and not entry.name.startswith("."))


class ImageFolderDataModule(ImageDataModule):
    """Images in class folders, served in pixel space [0, 1] as 3×``image_size``×``image_size``.

    Layout: ``root/<val_dir>/<class>/<image>`` (required), optionally ``root/<train_dir>/...`` and
    ``root/<test_dir>/...``; test falls back to val when ``test_dir`` is None. Class indices are the
    sorted class-folder names, which must be the same in every split.

    Transforms: evaluation ``Resize(resize)`` → ``CenterCrop(image_size)``; training (with ``augment``)
    ``RandomResizedCrop(image_size)`` + horizontal flip, else the evaluation transform.

    Args:
        root: dataset root folder.
        train_dir, val_dir, test_dir: split folder names below ``root``.
        image_size: side of the (square) output images.
        resize: shorter-side size before the center crop (>= image_size).
        mean, std: per-channel normalization constants for the model (default ImageNet's).
        num_classes: number of classes; counted from the class folders of the val folder when it
            exists at construction (a given value must then match), else this value is used.
        augment: augment training images.
        **kwargs: the loader options of :class:`ImageDataModule` (``batch_size`` 64, ``num_workers``,
            ``seed``, ``predict_split``, ``predict_limit``, ``pin_memory``).
    """

    def __init__(
        self,
        root: str,
        train_dir: str = "train",
        val_dir: str = "val",
        test_dir: str | None = None,
        image_size: PositiveInt = 224,
        resize: PositiveInt = 256,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        num_classes: PositiveInt | None = None,
        augment: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_int(image_size, "image_size", minimum=1)
        check_int(resize, "resize", minimum=image_size)
        if len(mean) != 3 or len(std) != 3 or any(float(s) <= 0 for s in std):
            raise ValueError(f"mean and std need 3 values (RGB) with std > 0; got mean={mean}, std={std}")
        if num_classes is not None:
            check_int(num_classes, "num_classes", minimum=1)
        self.root = Path(root).expanduser()
        self.train_dir, self.val_dir, self.test_dir = train_dir, val_dir, test_dir
        self.image_size, self.resize, self.augment = int(image_size), int(resize), bool(augment)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.input_shape = (3, self.image_size, self.image_size)

        val_path = self.root / val_dir
        if val_path.is_dir():
            counted = len(class_folders(val_path))
            if counted == 0:
                raise DataNotFoundError(self._layout_message(val_path, "has no class sub-folders"))
            if num_classes is not None and num_classes != counted:
                raise ValueError(f"num_classes={num_classes} but {val_path} has {counted} class folders")
            self.num_classes = counted
        elif num_classes is not None:
            self.num_classes = int(num_classes)
        else:
            raise DataNotFoundError(
                self._layout_message(val_path, "does not exist")
                + "\n(or pass num_classes to construct the module before the data is in place)"
            )

    def _layout_message(self, path: Path, problem: str) -> str:
        return (
            f"image folder {path.resolve()} {problem}.\n"
            f"Expected layout: {self.root}/{self.val_dir}/<class>/<image> (e.g. the ImageNet validation set sorted "
            "into its 1000 synset folders; class indices follow the sorted folder names), optionally with "
            f"{self.root}/{self.train_dir}/<class>/<image> for training. Set root/val_dir/train_dir/test_dir to match."
        )

    def _missing_split_message(self, split: str) -> str:
        if split == "train":
            return (
                f"no training split: {self.root / self.train_dir} does not exist. This ImageFolderDataModule "
                f"serves val/test/predict only; add {self.root / self.train_dir}/<class>/<image> to train."
            )
        return super()._missing_split_message(split)

    def _open(self, name: str, required: bool) -> ImageFolder | None:
        path = self.root / name
        if not path.is_dir():
            if required:
                raise DataNotFoundError(self._layout_message(path, "does not exist"))
            return None
        try:
            data = ImageFolder(str(path))
        except FileNotFoundError as err:
            raise DataNotFoundError(self._layout_message(path, f"holds no usable images ({err})")) from err
        if len(data.classes) != self.num_classes:
            raise ValueError(f"{path} has {len(data.classes)} class folders; expected num_classes={self.num_classes}")
        return data

    def _load_splits(self):
        evaluation = transforms.Compose(
            [transforms.Resize(self.resize), transforms.CenterCrop(self.image_size), pil_to_float]
        )
        val = self._open(self.val_dir, required=True)
        train = self._open(self.train_dir, required=False)
        test = self._open(self.test_dir, required=True) if self.test_dir is not None else val
        for name, data in (("train", train), ("test", test)):
            if data is not None and data.classes != val.classes:
                raise ValueError(
                    f"the {name} folder's classes differ from the val folder's ({self.root / self.val_dir}); "
                    "every split needs the same class sub-folders"
                )
        splits = {
            "train": TransformedDataset(train, evaluation) if train is not None else None,
            "val": TransformedDataset(val, evaluation),
            "test": TransformedDataset(test, evaluation),
        }
        augmented = None
        if train is not None and self.augment:
            augmentation = transforms.Compose(
                [transforms.RandomResizedCrop(self.image_size), transforms.RandomHorizontalFlip(), pil_to_float]
            )
            augmented = TransformedDataset(train, augmentation)
        return splits, augmented
