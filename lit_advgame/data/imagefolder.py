"""ImageNet-style image folders on ``torchvision.datasets.ImageFolder``, in two layouts.

* ``layout: class_folders`` -- torchvision's ``root/<split>/<class>/<image>``; class indices are the sorted
  class-folder names (for the ImageNet synset folders ``n01440764`` ... that is torchvision's ImageNet class
  order), or the indices of a ``class_index`` file.
* ``layout: flat`` -- one folder of images whose file names carry the WordNet id (``n01440764_1234.png``,
  ``ILSVRC2012_val_00000001_n01751748.JPEG``), as the IR paper's ``images_1000`` set (Wang et al. 2021). The
  class index of a WordNet id comes from a ``class_index`` file; without one it is the rank of the id among the
  sorted ids found in the validation folder -- torchvision's ImageNet order when all 1000 classes are present
  (for a subset of classes give the file, else the indices are not ImageNet's).

A ``class_index`` file is JSON -- ``{"n01440764": 0, ...}`` or Keras' ``imagenet_class_index.json``
(``{"0": ["n01440764", "tench"], ...}``) -- or text with one WordNet id per line in index order (the first word
of each line, e.g. ``LOC_synset_mapping.txt``). The IR code's pickled ``class_to_index.npy`` is not read (a
pickle can run code); convert it once with ``python -c "import json, numpy; json.dump({k: int(v) for k, v in
numpy.load('class_to_index.npy', allow_pickle=True).item().items()}, open('class_to_index.json', 'w'))"``.

Evaluation transform (``eval_resize``): ``center_crop`` is the standard Resize(``resize``) → CenterCrop
(``image_size``); ``resize`` is the IR paper's loader, ``Resize((image_size, image_size))`` without a crop.
Images are served as tensors in [0, 1].
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from jsonargparse.typing import PositiveInt
from torchvision import transforms
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS
from typing_extensions import override

from lit_advgame.data.base import DataNotFoundError, ImageDataModule
from lit_advgame.data.datasets import TransformedDataset, pil_to_float
from lit_advgame.utils.checks import check_choice, check_int
from lit_advgame.vocabulary import EVAL_RESIZES, IMAGE_FOLDER_LAYOUTS, EvalResize, ImageFolderLayout

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: a WordNet noun id as ImageNet names its synsets
WNID_PATTERN = re.compile(r"n\d{8}")


def class_folders(folder: Path) -> list[str]:
    """Sorted names of the class sub-folders of ``folder`` (hidden ones skipped), as ImageFolder sees them."""
    return sorted(entry.name for entry in folder.iterdir() if entry.is_dir() and not entry.name.startswith("."))


def image_files(folder: Path) -> list[Path]:
    """Sorted image files directly in ``folder`` (torchvision's image extensions, hidden files skipped)."""
    return sorted(
        entry
        for entry in folder.iterdir()
        if entry.is_file() and not entry.name.startswith(".") and entry.suffix.lower() in IMG_EXTENSIONS
    )


def file_wnid(path: Path) -> str:
    """The WordNet id in an image's file name.

    >>> file_wnid(Path("images_1000/n01440764_10026.png")), file_wnid(Path("ILSVRC2012_val_00000001_n01751748.JPEG"))
    ('n01440764', 'n01751748')
    """
    found = WNID_PATTERN.search(path.name)
    if found is None:
        raise ValueError(
            f"image {str(path)!r} has no WordNet id (n + 8 digits, e.g. n01440764) in its file name; the flat "
            "layout takes the class from the file name (use layout: class_folders for root/<class>/<image>)"
        )
    return found.group(0)


def read_class_index(path: str | Path) -> dict[str, int]:
    """``{class name: index}`` from a JSON or text ``class_index`` file (see the module docstring).

    Indices must be 0, 1, ..., K-1, each used once.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataNotFoundError(f"class_index file not found: {str(path)!r}")
    if path.suffix == ".npy":
        raise ValueError(
            f"class_index {str(path)!r}: a .npy mapping is a pickle and is not read; convert it to JSON once "
            "(see lit_advgame.data.imagefolder's docstring) and give the .json file"
        )
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError(f"class_index {str(path)!r}: expected a JSON object; got {type(raw).__name__}")
        if all(isinstance(v, list) and v for v in raw.values()):  # Keras: {"0": ["n01440764", "tench"], ...}
            mapping = {str(v[0]): int(k) for k, v in raw.items()}
        else:
            mapping = {str(k): int(v) for k, v in raw.items()}
    else:
        names = [line.split()[0] for line in text.splitlines() if line.strip()]
        mapping = {name: i for i, name in enumerate(names)}
    if sorted(mapping.values()) != list(range(len(mapping))):
        raise ValueError(
            f"class_index {str(path)!r}: the indices must be 0..{len(mapping) - 1}, each once "
            f"(found {len(mapping)} classes with indices {sorted(set(mapping.values()))[:5]}...)"
        )
    return mapping


class IndexedImageFolder(ImageFolder):
    """``ImageFolder`` with given class indices (``class_to_idx``); with ``flat`` the images lie directly in
    ``root`` and each one's class is the WordNet id in its file name. Classes of the mapping without images
    are allowed (a subset of ImageNet)."""

    def __init__(self, root: str, class_to_idx: dict[str, int], flat: bool) -> None:
        self._given_index, self._flat = dict(class_to_idx), bool(flat)
        super().__init__(root, allow_empty=True)
        if not self.samples:
            raise FileNotFoundError(f"no image files ({', '.join(IMG_EXTENSIONS)}) found in {root}")

    @override
    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        return sorted(self._given_index, key=self._given_index.__getitem__), dict(self._given_index)

    @override
    def make_dataset(
        self,
        directory: str | Path,
        class_to_idx: dict[str, int],
        extensions: tuple[str, ...] | None = None,
        is_valid_file: Callable[[str], bool] | None = None,
        allow_empty: bool = False,
    ) -> list[tuple[str, int]]:
        if not self._flat:
            unknown = sorted(set(class_folders(Path(directory))) - set(class_to_idx))
            if unknown:
                raise ValueError(f"{directory}: class folder(s) {unknown[:5]} are not in the class_index mapping")
            return super().make_dataset(directory, class_to_idx, extensions, is_valid_file, allow_empty=True)
        samples = []
        for path in image_files(Path(directory)):
            wnid = file_wnid(path)
            if wnid not in class_to_idx:
                raise ValueError(f"image {str(path)!r}: its WordNet id {wnid} is not in the class_index mapping")
            samples.append((str(path), class_to_idx[wnid]))
        return samples


class ImageFolderDataModule(ImageDataModule):
    """Images in folders (see the module docstring), served in pixel space [0, 1] as 3×``image_size``×``image_size``.

    Layout: ``root/<val_dir>/...`` (required), optionally ``root/<train_dir>/...`` and ``root/<test_dir>/...``;
    test falls back to val when ``test_dir`` is None. Each split folder holds ``<class>/<image>``
    (``layout: class_folders``) or the images themselves (``layout: flat``; ``val_dir: .`` for a folder such as
    ``images_1000`` given as ``root``). Every split has the same classes.

    Transforms: evaluation per ``eval_resize``; training (with ``augment``) ``RandomResizedCrop(image_size)`` +
    horizontal flip, else the evaluation transform.

    Args:
        root: dataset root folder.
        train_dir, val_dir, test_dir: split folder names below ``root``.
        image_size: side of the (square) output images.
        resize: shorter-side size before the center crop (>= image_size; ``eval_resize: center_crop`` only).
        mean, std: per-channel normalization constants for the model (default ImageNet's).
        num_classes: number of classes; found from the data at construction when it exists (the
            ``class_index`` file, the val folder's class folders or WordNet ids; a given value must then match),
            else this value is used.
        augment: augment training images.
        layout: ``class_folders`` (``<split>/<class>/<image>``) or ``flat`` (``<split>/<image with wnid>``).
        class_index: optional JSON/text file mapping class names (WordNet ids) to indices.
        eval_resize: ``center_crop`` (Resize(resize) + CenterCrop(image_size)) or ``resize``
            (``Resize((image_size, image_size))``, the IR paper's loader).
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
        layout: ImageFolderLayout = "class_folders",
        class_index: str | None = None,
        eval_resize: EvalResize = "center_crop",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_int(image_size, "image_size", minimum=1)
        check_choice(layout, "layout", IMAGE_FOLDER_LAYOUTS)
        check_choice(eval_resize, "eval_resize", EVAL_RESIZES)
        if eval_resize == "center_crop":
            check_int(resize, "resize", minimum=image_size)
        if len(mean) != 3 or len(std) != 3 or any(float(s) <= 0 for s in std):
            raise ValueError(f"mean and std need 3 values (RGB) with std > 0; got mean={mean}, std={std}")
        if num_classes is not None:
            check_int(num_classes, "num_classes", minimum=1)
        self.root = Path(root).expanduser()
        self.train_dir, self.val_dir, self.test_dir = train_dir, val_dir, test_dir
        self.image_size, self.resize, self.augment = int(image_size), int(resize), bool(augment)
        self.layout, self.eval_resize = layout, eval_resize
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.input_shape = (3, self.image_size, self.image_size)
        self.class_index = None if class_index is None else read_class_index(class_index)

        val_path = self.root / val_dir
        if self.class_index is not None or val_path.is_dir():
            self.class_to_idx = self.class_index or self._found_classes(val_path)
            counted = len(self.class_to_idx)
            if num_classes is not None and num_classes != counted:
                found = {"class_folders": "class folders", "flat": "WordNet ids in its file names"}[self.layout]
                source = f"the class_index file has {counted} classes" if self.class_index else f"{val_path} has"
                if not self.class_index:
                    source += f" {counted} {found}"
                raise ValueError(f"num_classes={num_classes} but {source}")
            self.num_classes = counted
        elif num_classes is not None:
            self.class_to_idx = None
            self.num_classes = int(num_classes)
        else:
            raise DataNotFoundError(
                self._layout_message(val_path, "does not exist")
                + "\n(or pass num_classes to construct the module before the data is in place)"
            )
        # the resolved values, so that the hyper-parameters shared with the model (linked by the CLI) agree
        self.save_hyperparameters({**self.hparams, "mean": self.mean, "std": self.std, "num_classes": self.num_classes})

    def _found_classes(self, folder: Path) -> dict[str, int]:
        """Class indices from the val folder: sorted class folders, or sorted WordNet ids of the flat layout."""
        if self.layout == "class_folders":
            names = class_folders(folder)
            problem = "has no class sub-folders"
        else:
            names = sorted({file_wnid(path) for path in image_files(folder)})
            problem = "has no image files"
        if not names:
            raise DataNotFoundError(self._layout_message(folder, problem))
        return {name: i for i, name in enumerate(names)}

    def _layout_message(self, path: Path, problem: str) -> str:
        if self.layout == "flat":
            expected = (
                f"Expected layout (flat): {self.root}/{self.val_dir}/<image> with the WordNet id in each file name "
                "(e.g. n01440764_10026.png, as the IR paper's images_1000 set; val_dir: . when root is that folder)"
            )
        else:
            expected = (
                f"Expected layout: {self.root}/{self.val_dir}/<class>/<image> (e.g. the ImageNet validation set "
                "sorted into its 1000 synset folders; class indices follow the sorted folder names)"
            )
        return (
            f"image folder {path.resolve()} {problem}.\n{expected}, optionally with "
            f"{self.root}/{self.train_dir}/... for training. Set root/val_dir/train_dir/test_dir/layout to match."
        )

    def _missing_split_message(self, split: str) -> str:
        if split == "train":
            return (
                f"no training split: {self.root / self.train_dir} does not exist. This ImageFolderDataModule "
                f"serves val/test/predict only; add {self.root / self.train_dir} (same layout as val) to train."
            )
        return super()._missing_split_message(split)

    def _open(self, name: str, required: bool) -> ImageFolder | None:
        path = self.root / name
        if not path.is_dir():
            if required:
                raise DataNotFoundError(self._layout_message(path, "does not exist"))
            return None
        try:
            if self.class_to_idx is None:  # constructed before the data was in place
                self.class_to_idx = self._found_classes(path)
            if self.layout == "class_folders" and self.class_index is None:
                data = ImageFolder(str(path))
            else:
                data = IndexedImageFolder(str(path), self.class_to_idx, flat=self.layout == "flat")
        except FileNotFoundError as err:
            raise DataNotFoundError(self._layout_message(path, f"holds no usable images ({err})")) from err
        if len(data.classes) != self.num_classes:
            raise ValueError(f"{path} has {len(data.classes)} classes; expected num_classes={self.num_classes}")
        return data

    def evaluation_transform(self) -> Callable[[Any], Any]:
        """The un-augmented transform of every split (``eval_resize``), ending in a tensor in [0, 1]."""
        if self.eval_resize == "resize":
            return transforms.Compose([transforms.Resize((self.image_size, self.image_size)), pil_to_float])
        return transforms.Compose(
            [transforms.Resize(self.resize), transforms.CenterCrop(self.image_size), pil_to_float]
        )

    def _load_splits(self):
        evaluation = self.evaluation_transform()
        val = self._open(self.val_dir, required=True)
        train = self._open(self.train_dir, required=False)
        test = self._open(self.test_dir, required=True) if self.test_dir is not None else val
        for name, data in (("train", train), ("test", test)):
            if data is not None and data.classes != val.classes:
                raise ValueError(
                    f"the {name} folder's classes differ from the val folder's ({self.root / self.val_dir}); "
                    "every split needs the same classes"
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
