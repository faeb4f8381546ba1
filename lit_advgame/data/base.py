"""Common base of lit_advgame's DataModules.

Every DataModule serves pixel-space images: items are ``(image, label)`` with ``image`` a
float32 C×H×W tensor in [0, 1] and ``label`` an int64 scalar tensor. Normalization is not
applied here; it is the first layer of every model (:class:`lit_advgame.models.normalize.NormalizedModel`),
which takes its ``mean``/``std`` from the DataModule. ``mean``, ``std``, ``num_classes`` and
``input_shape`` are therefore plain attributes set in ``__init__`` (before ``setup``), so the CLI
can link them into the model with ``link_arguments(..., apply_on="instantiate")``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from jsonargparse.typing import NonNegativeInt, PositiveInt
from pytorch_lightning.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset, Subset
from typing_extensions import override

from lit_advgame.utils.checks import check_choice, check_int
from lit_advgame.utils.hparams import save_builtin_hyperparameters
from lit_advgame.utils.seeding import derive_seed
from lit_advgame.vocabulary import SPLITS, Split


class DataNotFoundError(FileNotFoundError):
    """Dataset files are missing and could not (or may not) be downloaded."""


def missing_data_message(what: str, searched: Sequence[str], how: Sequence[str]) -> str:
    """A multi-line error message naming the paths searched and how to obtain the data."""
    lines = [f"{what} not found. Looked in:"]
    lines += [f"  - {path}" for path in searched]
    lines.append("To get it:")
    lines += [f"  - {step}" for step in how]
    return "\n".join(lines)


class ImageDataModule(pl.LightningDataModule):
    """Base DataModule for image classification in pixel space [0, 1].

    Subclasses take their own options and forward the loader options below with ``**kwargs``
    (``super().__init__(**kwargs)``; jsonargparse follows the call, so ``--help`` and
    ``--print_config`` list every option); this ``__init__`` saves the hyperparameters of the whole
    class chain. Subclasses set ``mean``, ``std``, ``num_classes`` and ``input_shape`` in ``__init__``
    and implement :meth:`_load_splits` (called once by :meth:`setup`), returning the un-augmented
    datasets of each split and, optionally, an augmented view of the training split.

    Args:
        batch_size: examples per batch (>= 1).
        num_workers: DataLoader worker processes (>= 0); workers persist across epochs when > 0.
        seed: seed of the data split (where the subclass splits) and of the training shuffle.
        predict_split: split served by :meth:`predict_dataloader` (``"train"``, ``"val"`` or ``"test"``).
        predict_limit: serve only the first ``predict_limit`` examples of that split (all when ``None``;
            a limit beyond the split size serves the whole split, with a warning).
        pin_memory: pin DataLoader memory (useful when training on a GPU).
        train_subset: train on a fixed random subset of this many training examples (drawn once from ``seed``,
            the same for the augmented view; ``None``, the default: the whole split), e.g. 200 for an
            over-fitting setting. The ``"train"`` split (probes drawn from it too) is then that subset.

    Attributes:
        mean: per-channel normalization mean (length C).
        std: per-channel normalization std (length C).
        num_classes: number of classes.
        input_shape: (C, H, W) of every image.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int
    input_shape: tuple[int, int, int]

    def __init__(
        self,
        batch_size: PositiveInt = 64,
        num_workers: NonNegativeInt = 0,
        seed: int = 0,
        predict_split: Split = "test",
        predict_limit: PositiveInt | None = None,
        pin_memory: bool = False,
        train_subset: PositiveInt | None = None,
    ) -> None:
        super().__init__()
        # jsonargparse checks the types when a config is parsed; these checks serve Python callers
        check_int(batch_size, "batch_size", minimum=1)
        check_int(num_workers, "num_workers", minimum=0)
        check_int(seed, "seed")
        check_choice(predict_split, "predict_split", SPLITS)
        if predict_limit is not None:
            check_int(predict_limit, "predict_limit", minimum=1)
        if train_subset is not None:
            check_int(train_subset, "train_subset", minimum=1)
        save_builtin_hyperparameters(self)  # the init arguments of this class and of the subclasses calling it
        # plain values (jsonargparse passes PositiveInt/NonNegativeInt instances)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.seed = int(seed)
        self.predict_split = predict_split
        self.predict_limit = None if predict_limit is None else int(predict_limit)
        self.pin_memory = bool(pin_memory)
        self.train_subset = None if train_subset is None else int(train_subset)
        self._splits: dict[str, Dataset | None] | None = None
        self._train_augmented: Dataset | None = None
        self._shuffle_generator: torch.Generator | None = None
        self._resumed_shuffle_state: torch.Tensor | None = None

    # ----------------------------------------------------------------- subclass hooks
    def _load_splits(self) -> tuple[dict[str, Dataset | None], Dataset | None]:
        """Return ``({"train": ..., "val": ..., "test": ...}, augmented_train_or_None)``.

        Split datasets are un-augmented (deterministic); a split may be ``None`` when the data
        source has none (e.g. an ImageNet validation folder without a training folder)."""
        raise NotImplementedError

    def _missing_split_message(self, split: str) -> str:
        return f"{type(self).__name__} has no {split!r} split"

    # ----------------------------------------------------------------- setup and datasets
    def setup(self, stage: str | None = None) -> None:
        """Load the splits (once; later calls are no-ops)."""
        if self._splits is None:
            splits, augmented = self._load_splits()
            if self.train_subset is not None and splits.get("train") is not None:
                splits, augmented = self._subsample_train(splits, augmented)
            self._splits = {name: splits.get(name) for name in SPLITS}
            self._train_augmented = augmented

    def _subsample_train(
        self, splits: dict[str, Dataset | None], augmented: Dataset | None
    ) -> tuple[dict[str, Dataset | None], Dataset | None]:
        """Keep ``train_subset`` training examples (a seeded random choice, the same for the augmented view)."""
        train = splits["train"]
        if self.train_subset > len(train):
            raise ValueError(f"train_subset={self.train_subset} exceeds the {len(train)} examples of the train split")
        generator = torch.Generator().manual_seed(derive_seed(self.seed, "train_subset"))
        keep = torch.randperm(len(train), generator=generator)[: self.train_subset].sort().values.tolist()
        splits = {**splits, "train": Subset(train, keep)}
        return splits, None if augmented is None else Subset(augmented, keep)

    def dataset(self, split: str, augmented: bool = False) -> Dataset:
        """The dataset of ``split``; ``augmented=True`` gives the training view with augmentation
        (identical to the plain view when the module does not augment)."""
        check_choice(split, "split", SPLITS)
        self.setup()
        assert self._splits is not None
        data = self._splits[split]
        if data is None:
            raise ValueError(self._missing_split_message(split))
        if augmented and split == "train" and self._train_augmented is not None:
            return self._train_augmented
        return data

    def split_sizes(self) -> dict[str, int]:
        """Number of examples in each available split."""
        self.setup()
        assert self._splits is not None
        return {name: len(data) for name, data in self._splits.items() if data is not None}

    # ----------------------------------------------------------------- loaders
    def _loader(self, data: Dataset, shuffle: bool) -> DataLoader:
        generator = None
        if shuffle:
            generator = torch.Generator().manual_seed(self.seed)
            if self._resumed_shuffle_state is not None:
                generator.set_state(self._resumed_shuffle_state)
                self._resumed_shuffle_state = None
            self._shuffle_generator = generator
        return DataLoader(
            data,
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=generator,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
        )

    # ----------------------------------------------------------------- checkpoint state
    @override
    def state_dict(self) -> dict[str, Any]:
        """The training shuffle's generator state (saved in Lightning checkpoints).

        Saved after an epoch, it is the state the next epoch's shuffle starts from, so a ``fit`` resumed
        from the checkpoint draws the same batches as an uninterrupted run (with ``num_workers: 0``)."""
        if self._shuffle_generator is None:
            return {}
        return {"shuffle_generator_state": self._shuffle_generator.get_state()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`: the next training loader continues the saved shuffle."""
        state = state_dict.get("shuffle_generator_state")
        self._resumed_shuffle_state = state.clone() if isinstance(state, torch.Tensor) else None

    def train_dataloader(self) -> DataLoader:
        """Shuffled (seeded by ``seed``; a resumed fit continues the checkpoint's shuffle) and augmented
        training batches."""
        return self._loader(self.dataset("train", augmented=True), shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("val"), shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("test"), shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """The first ``predict_limit`` examples of ``predict_split``, in order, un-augmented.

        Batch indices reported by Lightning's predict loop are indices into this split."""
        data = self.dataset(self.predict_split)
        if self.predict_limit is not None:
            if self.predict_limit > len(data):
                rank_zero_warn(
                    f"predict_limit={self.predict_limit} exceeds the {len(data)} examples of the "
                    f"{self.predict_split!r} split; serving all of them"
                )
            data = Subset(data, range(min(self.predict_limit, len(data))))
        return self._loader(data, shuffle=False)

    # ----------------------------------------------------------------- fixed probe subsets
    def probe_set(self, n: int, split: str = "val", seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """A fixed random subset of ``n`` un-augmented examples of ``split`` as tensors.

        The subset depends only on ``(n, split, seed)`` and the split itself, so callbacks can
        track the same examples across epochs and runs. Returns ``(x, y)``: x of shape
        (n, C, H, W) float32 in [0, 1], y of shape (n,) int64, in increasing index order.
        """
        check_int(n, "n", minimum=1)
        check_int(seed, "seed")
        data = self.dataset(split)
        if n > len(data):
            raise ValueError(f"probe_set: n={n} exceeds the {len(data)} examples of the {split!r} split")
        generator = torch.Generator().manual_seed(seed)
        indices = torch.randperm(len(data), generator=generator)[:n].sort().values.tolist()
        items = [data[i] for i in indices]
        x = torch.stack([item[0] for item in items])
        y = torch.stack([torch.as_tensor(item[1], dtype=torch.int64) for item in items])
        return x, y
