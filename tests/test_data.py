"""Tests of lit_advgame.data: shapes, ranges, splits, statistics, loaders and clear errors."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lit_advgame.data import (
    DATAMODULES,
    CIFAR10DataModule,
    DataNotFoundError,
    DigitsDataModule,
    ImageDataModule,
    ImageFolderDataModule,
    MNISTDataModule,
    get_datamodule,
)
from lit_advgame.data import cifar10 as cifar10_module
from lit_advgame.data.idx import IdxFormatError, read_idx, write_idx
from lit_advgame.data.splits import stratified_split

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist-t10k"


def stack_split(dm: ImageDataModule, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    data = dm.dataset(split)
    items = [data[i] for i in range(len(data))]
    return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])


# --------------------------------------------------------------------------- stratified_split
def test_stratified_split_exact_sizes_disjoint_covering_and_stratified():
    generator = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 7, (1001,), generator=generator)
    train, val, test = stratified_split(labels, 0.2, 0.1, seed=5)
    assert (len(val), len(test), len(train)) == (round(1001 * 0.2), round(1001 * 0.1), 1001 - 200 - 100)
    union = torch.cat([train, val, test])
    assert torch.equal(union.sort().values, torch.arange(1001))  # disjoint and covering
    for idx, fraction in ((train, 0.7), (val, 0.2), (test, 0.1)):
        assert idx.dtype == torch.int64 and torch.equal(idx, idx.sort().values)
        for c in range(7):
            n_c = int((labels == c).sum())
            assert abs(int((labels[idx] == c).sum()) - n_c * fraction) <= 2


def test_stratified_split_seeded():
    labels = torch.arange(500) % 10
    a = stratified_split(labels, 0.1, 0.2, seed=0)
    b = stratified_split(labels, 0.1, 0.2, seed=0)
    c = stratified_split(labels, 0.1, 0.2, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[1], c[1])


def test_stratified_split_zero_test_and_errors():
    labels = torch.arange(100) % 4
    train, val, test = stratified_split(labels, 0.25, 0.0, seed=0)
    assert len(test) == 0 and len(val) == 25 and len(train) == 75
    with pytest.raises(ValueError, match="val_fraction"):
        stratified_split(labels, 0.0, 0.1)
    with pytest.raises(ValueError, match="< 1"):
        stratified_split(labels, 0.6, 0.5)
    with pytest.raises(ValueError, match="cannot split 3 examples"):
        stratified_split(torch.tensor([0, 1, 2]), 0.1, 0.1)


def test_stratified_split_is_sklearns_train_test_split_twice():
    from sklearn.model_selection import train_test_split

    labels = torch.arange(300) % 3
    labels[:40] = 0  # unequal classes
    train, val, test = stratified_split(labels, 0.15, 0.2, seed=11)
    y = labels.numpy()
    rest, ref_test = train_test_split(np.arange(300), test_size=60, stratify=y, random_state=11)
    ref_train, ref_val = train_test_split(rest, test_size=45, stratify=y[rest], random_state=11)
    for got, ref in ((train, ref_train), (val, ref_val), (test, ref_test)):
        assert got.tolist() == sorted(ref.tolist())


def test_stratified_split_per_class_proportions_and_seed_beyond_numpy_range():
    labels = torch.cat([torch.zeros(600), torch.ones(300), torch.full((100,), 2)]).long()
    train, val, test = stratified_split(labels, 0.1, 0.3, seed=2**32 + 7)
    for idx, fraction in ((train, 0.6), (val, 0.1), (test, 0.3)):
        counts = torch.bincount(labels[idx], minlength=3)
        assert counts.tolist() == [round(600 * fraction), round(300 * fraction), round(100 * fraction)]
    # the seed is taken mod 2**32 (NumPy's seed range): large seeds work and are documented as such
    same = stratified_split(labels, 0.1, 0.3, seed=7)
    assert all(torch.equal(a, b) for a, b in zip((train, val, test), same))
    assert len(stratified_split(labels, 0.1, 0.3, seed=2**70)[1]) == 100


def test_stratified_split_clear_errors_for_classes_too_small_to_stratify():
    labels = torch.cat([torch.arange(40) % 3, torch.tensor([3])])  # class 3 has one example
    with pytest.raises(ValueError, match="labels: .*class 3 has a single example"):
        stratified_split(labels, 0.2, 0.2)
    with pytest.raises(ValueError, match="labels: .*class 3 has a single example"):
        stratified_split(labels, 0.2, 0.0)
    # 10 classes but a val split of 3 examples: names the fractions and the sizes
    with pytest.raises(ValueError, match=r"30 examples of 10 classes .*val_fraction=0.1, test_fraction=0.0 .*val=3"):
        stratified_split(torch.arange(30) % 10, 0.1, 0.0)


# --------------------------------------------------------------------------- digits
@pytest.mark.parametrize("image_size", [16, 28])
@pytest.mark.parametrize("channels", [1, 3])
def test_digits_shapes_dtypes_ranges(image_size, channels):
    dm = DigitsDataModule(image_size=image_size, channels=channels, batch_size=32)
    assert dm.input_shape == (channels, image_size, image_size)
    assert dm.num_classes == 10 and len(dm.mean) == channels and len(dm.std) == channels
    x, y = dm.dataset("train")[0]
    assert x.shape == dm.input_shape and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y.dim() == 0
    for split in ("train", "val", "test"):
        xs, ys = stack_split(dm, split)
        assert xs.min() >= 0 and xs.max() <= 1 and xs.max() > 0.9
        assert set(ys.tolist()) == set(range(10))  # stratified: every class in every split
    if channels == 3:
        assert torch.equal(xs[:, 0], xs[:, 1]) and torch.equal(xs[:, 0], xs[:, 2])
    xb, yb = next(iter(dm.train_dataloader()))
    assert xb.shape == (32, *dm.input_shape) and yb.shape == (32,) and yb.dtype == torch.int64


def test_digits_pixels_are_scaled_sklearn_digits():
    from sklearn.datasets import load_digits

    raw = load_digits()
    dm = DigitsDataModule(image_size=8)
    xs, ys = stack_split(dm, "val")
    # every val image is one of sklearn's images divided by 16, with its label
    reference = torch.as_tensor(raw.images, dtype=torch.float32).flatten(1) / 16
    targets = torch.as_tensor(raw.target)
    for x, y in zip(xs[:20], ys[:20]):
        match = torch.nonzero((reference == x.flatten()).all(dim=1)).flatten()
        assert len(match) >= 1 and (targets[match] == y).any()


def test_digits_splits_disjoint_covering_deterministic():
    def split_contents(seed):
        dm = DigitsDataModule(image_size=8, seed=seed)
        return {
            split: {tuple(x.flatten().tolist()) + (int(y),) for x, y in zip(*stack_split(dm, split))}
            for split in ("train", "val", "test")
        }, dm.split_sizes()

    a, sizes = split_contents(0)
    assert sizes == {"train": 1797 - 270 - 270, "val": 270, "test": 270}
    assert sum(sizes.values()) == 1797
    # disjoint up to sklearn's few duplicate images: compare index sets directly
    dm = DigitsDataModule(image_size=8, seed=0)
    idx = dm._indices
    union = torch.cat([idx["train"], idx["val"], idx["test"]])
    assert torch.equal(union.sort().values, torch.arange(1797))
    b, _ = split_contents(0)
    c, _ = split_contents(1)
    assert a == b
    assert a["val"] != c["val"] and a["test"] != c["test"]


def test_digits_mean_std_match_training_split():
    for channels in (1, 3):
        dm = DigitsDataModule(image_size=16, channels=channels, seed=2)
        xs, _ = stack_split(dm, "train")
        expected_mean = xs.mean(dim=(0, 2, 3))
        expected_std = xs.permute(1, 0, 2, 3).flatten(1).std(dim=1, unbiased=False)
        assert torch.allclose(torch.tensor(dm.mean), expected_mean, atol=1e-5)
        assert torch.allclose(torch.tensor(dm.std), expected_std, atol=1e-5)
    assert DigitsDataModule(seed=3).mean != DigitsDataModule(seed=4).mean


def test_digits_attributes_before_setup_and_hparams():
    dm = DigitsDataModule(image_size=20, channels=3, batch_size=7, seed=9)
    assert dm._splits is None  # nothing built yet, attributes already valid
    assert dm.input_shape == (3, 20, 20) and dm.num_classes == 10
    assert all(isinstance(v, float) for v in dm.mean + dm.std)
    assert dm.hparams["image_size"] == 20 and dm.hparams["seed"] == 9 and dm.hparams["batch_size"] == 7


def test_loaders_order_and_shuffle():
    dm = DigitsDataModule(batch_size=50, seed=0)
    xs, ys = stack_split(dm, "val")
    batches = list(dm.val_dataloader())
    assert [len(b[1]) for b in batches] == [50] * 5 + [20]
    assert torch.equal(torch.cat([b[0] for b in batches]), xs)  # unshuffled, full
    test_labels = torch.cat([b[1] for b in dm.test_dataloader()])
    assert torch.equal(test_labels, stack_split(dm, "test")[1])
    first = [next(iter(dm.train_dataloader()))[1] for _ in range(2)]
    assert torch.equal(first[0], first[1])  # seeded shuffle
    train_labels = stack_split(dm, "train")[1]
    assert not torch.equal(first[0], train_labels[:50])
    epoch = torch.cat([b[1] for b in dm.train_dataloader()])
    assert torch.equal(epoch.sort().values, train_labels.sort().values)
    other = next(iter(DigitsDataModule(batch_size=50, seed=1).train_dataloader()))[1]
    assert not torch.equal(first[0], other)


def test_digits_augment_changes_train_only():
    dm = DigitsDataModule(image_size=16, augment=True, seed=0)
    plain = dm.dataset("train")
    augmented = dm.dataset("train", augmented=True)
    torch.manual_seed(0)
    views = torch.stack([augmented[i][0] for i in range(40)])
    originals = torch.stack([plain[i][0] for i in range(40)])
    assert views.shape == originals.shape and views.min() >= 0 and views.max() <= 1
    assert not torch.equal(views, originals)
    x_probe, _ = dm.probe_set(10, split="train")
    assert torch.equal(x_probe, dm.probe_set(10, split="train")[0])  # probes are never augmented


def test_probe_set_determinism_and_errors():
    dm = DigitsDataModule()
    x1, y1 = dm.probe_set(12, split="val", seed=4)
    x2, y2 = dm.probe_set(12, split="val", seed=4)
    x3, _ = dm.probe_set(12, split="val", seed=5)
    assert x1.shape == (12, 1, 16, 16) and y1.shape == (12,) and y1.dtype == torch.int64
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and not torch.equal(x1, x3)
    xs, ys = stack_split(dm, "val")
    assert all(((xs == x).flatten(1).all(1) & (ys == y)).any() for x, y in zip(x1, y1))
    with pytest.raises(ValueError, match="exceeds the 270 examples"):
        dm.probe_set(271, split="val")
    with pytest.raises(ValueError, match="n must be >= 1"):
        dm.probe_set(0)
    with pytest.raises(ValueError, match="split"):
        dm.probe_set(3, split="holdout")


def test_predict_limit_and_split():
    dm = DigitsDataModule(batch_size=16, predict_split="val", predict_limit=37)
    batches = list(dm.predict_dataloader())
    x = torch.cat([b[0] for b in batches])
    assert [len(b[0]) for b in batches] == [16, 16, 5]
    assert torch.equal(x, stack_split(dm, "val")[0][:37])
    full = DigitsDataModule(batch_size=100)
    assert sum(len(b[1]) for b in full.predict_dataloader()) == 270  # default: whole test split
    big = DigitsDataModule(batch_size=100, predict_limit=10_000)
    with pytest.warns(UserWarning, match="exceeds"):
        loader = big.predict_dataloader()
    assert sum(len(b[1]) for b in loader) == 270


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"image_size": 7}, "image_size must be >= 8"),
        ({"channels": 2}, "channels must be 1"),
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"test_fraction": 1.2}, "test_fraction"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "< 1"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"num_workers": -1}, "num_workers"),
        ({"predict_split": "dev"}, "predict_split"),
        ({"predict_limit": 0}, "predict_limit"),
    ],
)
def test_digits_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DigitsDataModule(**kwargs)


def test_bad_argument_types():
    with pytest.raises(TypeError, match="image_size must be an integer"):
        DigitsDataModule(image_size=16.5)
    with pytest.raises(TypeError, match="batch_size must be an integer"):
        DigitsDataModule(batch_size="8")


def test_registry():
    assert set(DATAMODULES) == {"digits", "mnist", "cifar10", "imagefolder"}
    dm = get_datamodule("digits", image_size=12)
    assert isinstance(dm, DigitsDataModule) and dm.input_shape == (1, 12, 12)
    with pytest.raises(ValueError, match="unknown datamodule 'svhn'.*cifar10, digits, imagefolder, mnist"):
        get_datamodule("svhn")


def test_digits_in_a_trainer():
    import pytorch_lightning as pl

    class Linear(pl.LightningModule):
        def __init__(self, shape, num_classes):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(int(np.prod(shape)), num_classes))

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.net(x), y)

        def validation_step(self, batch, batch_idx):
            self.log("val_loss", torch.nn.functional.cross_entropy(self.net(batch[0]), batch[1]))

        def predict_step(self, batch, batch_idx):
            return self.net(batch[0]).argmax(1)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = DigitsDataModule(batch_size=32, predict_limit=40)
    model = Linear(dm.input_shape, dm.num_classes)
    trainer = pl.Trainer(
        max_steps=3,
        limit_val_batches=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(model, datamodule=dm)
    predictions = trainer.predict(model, datamodule=dm)
    assert sum(len(p) for p in predictions) == 40


# --------------------------------------------------------------------------- IDX files and MNIST
def synthetic_mnist(n: int, seed: int, height: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 images whose first two pixels encode the index; balanced labels 0..9."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, height, height), dtype=np.uint8)
    images[:, 0, 0] = np.arange(n) % 256
    images[:, 0, 1] = np.arange(n) // 256
    labels = (np.arange(n) % 10).astype(np.uint8)
    rng.shuffle(labels)
    return images, labels


def write_pair(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray, gz: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels)


def decode_index(x: torch.Tensor) -> int:
    pixels = (x[0, 0, :2] * 255).round().long()
    return int(pixels[0] + 256 * pixels[1])


def test_idx_roundtrip_and_magic(tmp_path):
    images, labels = synthetic_mnist(5, seed=0)
    write_pair(tmp_path, "t10k", images, labels)
    raw = gzip.decompress((tmp_path / "t10k-images-idx3-ubyte.gz").read_bytes())
    assert raw[:4] == bytes([0, 0, 8, 3]) and int.from_bytes(raw[4:8], "big") == 5  # MNIST magic 2051
    assert np.array_equal(read_idx(tmp_path / "t10k-images-idx3-ubyte.gz"), images)
    assert np.array_equal(read_idx(tmp_path / "t10k-labels-idx1-ubyte.gz"), labels)


def test_corrupt_idx_errors(tmp_path):
    images, _ = synthetic_mnist(4, seed=0)
    good = tmp_path / "good-idx3-ubyte"
    write_idx(good, images)
    payload = good.read_bytes()
    truncated = tmp_path / "truncated-idx3-ubyte"
    truncated.write_bytes(payload[:-10])
    with pytest.raises(IdxFormatError, match="truncated-idx3-ubyte is corrupt or truncated"):
        read_idx(truncated)
    bad_magic = tmp_path / "magic-idx3-ubyte"
    bad_magic.write_bytes(b"\x12\x34" + payload[2:])
    with pytest.raises(IdxFormatError, match="bad IDX magic number 0x1234"):
        read_idx(bad_magic)
    not_gzip = tmp_path / "plain-idx3-ubyte.gz"
    not_gzip.write_bytes(payload)
    with pytest.raises(IdxFormatError, match="not a valid gzip file"):
        read_idx(not_gzip)
    with pytest.raises(IdxFormatError, match="expected 1 dimensions"):
        read_idx(good, expected_ndim=1)
    # a corrupt file inside a MNIST folder surfaces from setup with the file name
    folder = tmp_path / "mnist"
    write_pair(folder, "t10k", *synthetic_mnist(30, seed=1))
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01" + (30).to_bytes(4, "big")))
    with pytest.raises(IdxFormatError, match="t10k-labels-idx1-ubyte.gz is corrupt or truncated"):
        MNISTDataModule(str(folder)).setup()


def test_mnist_test_set_only_mode(tmp_path):
    images, labels = synthetic_mnist(300, seed=2)
    write_pair(tmp_path, "t10k", images, labels)
    dm = MNISTDataModule(str(tmp_path), val_fraction=0.1, test_fraction=0.2, batch_size=25, seed=0)
    assert dm.input_shape == (1, 28, 28) and dm.mean == (0.1307,) and dm.std == (0.3081,) and dm.num_classes == 10
    dm.setup("fit")
    assert dm.mode == "test_only"
    assert dm.split_sizes() == {"train": 210, "val": 30, "test": 60}
    seen = {}
    for split in ("train", "val", "test"):
        xs, ys = stack_split(dm, split)
        assert xs.dtype == torch.float32 and ys.dtype == torch.int64 and xs.shape[1:] == (1, 28, 28)
        for x, y in zip(xs, ys):
            index = decode_index(x)
            assert torch.equal(x[0], torch.from_numpy(images[index]).float() / 255)
            assert int(y) == int(labels[index])
            seen[index] = split
    assert sorted(seen) == list(range(300))  # disjoint and covering
    again = MNISTDataModule(str(tmp_path), seed=0)
    other = MNISTDataModule(str(tmp_path), seed=1)
    val_ids = [decode_index(x) for x in stack_split(again, "val")[0]]
    assert val_ids == [decode_index(x) for x in stack_split(dm, "val")[0]]
    assert val_ids != [decode_index(x) for x in stack_split(other, "val")[0]]
    xb, yb = next(iter(dm.train_dataloader()))
    assert xb.shape == (25, 1, 28, 28) and yb.shape == (25,)


def test_mnist_standard_mode_torchvision_layout(tmp_path):
    train_images, train_labels = synthetic_mnist(200, seed=3)
    test_images, test_labels = synthetic_mnist(40, seed=4)
    write_pair(tmp_path / "MNIST" / "raw", "train", train_images, train_labels, gz=False)
    write_pair(tmp_path, "t10k", test_images, test_labels, gz=True)
    dm = MNISTDataModule(str(tmp_path), val_fraction=0.25, test_fraction=0.5)
    dm.setup()
    assert dm.mode == "standard"
    assert dm.split_sizes() == {"train": 150, "val": 50, "test": 40}
    xs, ys = stack_split(dm, "test")
    assert torch.equal(xs[:, 0], torch.from_numpy(test_images).float() / 255)  # official test set, in order
    assert torch.equal(ys, torch.from_numpy(test_labels).long())
    ids = sorted(decode_index(x) for split in ("train", "val") for x in stack_split(dm, split)[0])
    assert ids == list(range(200))


def test_mnist_resize_and_channels(tmp_path):
    write_pair(tmp_path, "t10k", *synthetic_mnist(100, seed=5))
    dm = MNISTDataModule(str(tmp_path), image_size=16, channels=3, batch_size=8)
    assert dm.input_shape == (3, 16, 16) and dm.mean == (0.1307,) * 3 and dm.std == (0.3081,) * 3
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (8, 3, 16, 16) and x.min() >= 0 and x.max() <= 1
    assert torch.equal(x[:, 0], x[:, 2])


def test_mnist_missing_data_error(tmp_path):
    missing = tmp_path / "no_mnist"
    dm = MNISTDataModule(str(missing), download=False)  # construction needs no data
    for call in (dm.prepare_data, dm.setup):
        with pytest.raises(DataNotFoundError) as info:
            call()
        message = str(info.value)
        assert str(missing.resolve()) in message and str((missing / "MNIST" / "raw").resolve()) in message
        assert "download=True" in message and "t10k-images-idx3-ubyte" in message and "test-set-only" in message
    assert isinstance(info.value, FileNotFoundError)
    # train files alone are not enough
    write_pair(missing, "train", *synthetic_mnist(20, seed=0))
    with pytest.raises(DataNotFoundError, match="not the t10k test files"):
        MNISTDataModule(str(missing)).setup()


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="shared MNIST test set not available")
def test_mnist_shared_test_set():
    dm = MNISTDataModule(str(SHARED_MNIST), batch_size=256, seed=0)
    dm.setup()
    assert dm.mode == "test_only"
    sizes = dm.split_sizes()
    assert sizes == {"train": 7000, "val": 1000, "test": 2000} and sum(sizes.values()) == 10000
    xs, ys = stack_split(dm, "train")
    assert xs.min() == 0 and xs.max() == 1 and set(ys.tolist()) == set(range(10))
    assert abs(xs.mean().item() - 0.1307) < 0.01 and abs(xs.std().item() - 0.3081) < 0.01
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (256, 1, 28, 28) and y.dtype == torch.int64


# --------------------------------------------------------------------------- CIFAR-10
def test_cifar10_missing_data_error(tmp_path):
    dm = CIFAR10DataModule(str(tmp_path / "nothing"), download=False)
    assert dm.input_shape == (3, 32, 32) and dm.num_classes == 10 and len(dm.mean) == 3
    with pytest.raises(DataNotFoundError) as info:
        dm.setup()
    message = str(info.value)
    assert str((tmp_path / "nothing" / "cifar-10-batches-py").resolve()) in message
    assert "download=True" in message and "cifar-10-python.tar.gz" in message


class FakeCIFAR10:
    """Stands in for torchvision's CIFAR10 (whose md5 checks reject synthetic files)."""

    def __init__(self, root, train=True, download=False):
        n = 100 if train else 30
        rng = np.random.default_rng(0 if train else 1)
        self.data = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
        self.targets = [i % 10 for i in range(n)]

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        return Image.fromarray(self.data[index]), self.targets[index]


def test_cifar10_splits_and_augmentation(monkeypatch):
    monkeypatch.setattr(cifar10_module, "CIFAR10", FakeCIFAR10)
    dm = CIFAR10DataModule("unused", val_fraction=0.2, batch_size=10, seed=0)
    dm.setup()
    assert dm.split_sizes() == {"train": 80, "val": 20, "test": 30}
    xs, ys = stack_split(dm, "test")
    expected = torch.from_numpy(FakeCIFAR10("", train=False).data).permute(0, 3, 1, 2).float() / 255
    assert torch.equal(xs, expected) and ys.dtype == torch.int64
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (10, 3, 32, 32) and x.min() >= 0 and x.max() <= 1 and y.dtype == torch.int64
    plain, augmented = dm.dataset("train"), dm.dataset("train", augmented=True)
    torch.manual_seed(0)
    assert any(not torch.equal(plain[i][0], augmented[i][0]) for i in range(10))
    assert torch.equal(plain[0][0], plain[0][0])


# --------------------------------------------------------------------------- ImageFolder
def make_image_tree(root: Path, splits=("train", "val"), classes=("cat", "dog", "fox"), per_class=2) -> None:
    rng = np.random.default_rng(0)
    for split in splits:
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            for k in range(per_class):
                pixels = rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{k}.png")


def test_imagefolder_tree(tmp_path):
    make_image_tree(tmp_path)
    dm = ImageFolderDataModule(str(tmp_path), image_size=24, resize=32, batch_size=4)
    assert dm.num_classes == 3 and dm.input_shape == (3, 24, 24) and dm.mean == (0.485, 0.456, 0.406)
    dm.setup()
    assert dm.split_sizes() == {"train": 6, "val": 6, "test": 6}  # test falls back to val
    xs, ys = stack_split(dm, "val")
    assert xs.shape == (6, 3, 24, 24) and xs.dtype == torch.float32 and xs.min() >= 0 and xs.max() <= 1
    assert ys.tolist() == [0, 0, 1, 1, 2, 2] and ys.dtype == torch.int64  # sorted class folders
    assert torch.equal(stack_split(dm, "test")[0], xs)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 24, 24) and y.dtype == torch.int64
    px, py = dm.probe_set(3, split="val", seed=1)
    assert px.shape == (3, 3, 24, 24) and torch.equal(px, dm.probe_set(3, split="val", seed=1)[0])


def test_imagefolder_val_only_and_errors(tmp_path):
    make_image_tree(tmp_path, splits=("val",))
    dm = ImageFolderDataModule(str(tmp_path), image_size=16, resize=20, predict_split="val", predict_limit=4)
    assert sum(len(b[1]) for b in dm.predict_dataloader()) == 4
    with pytest.raises(ValueError, match="no training split.*train does not exist"):
        dm.train_dataloader()
    with pytest.raises(ValueError, match="num_classes=5 but .* has 3 class folders"):
        ImageFolderDataModule(str(tmp_path), num_classes=5)
    with pytest.raises(ValueError, match="resize must be >= 224"):
        ImageFolderDataModule(str(tmp_path), resize=100)


def test_imagefolder_missing_folder_errors(tmp_path):
    missing = tmp_path / "imagenet"
    with pytest.raises(DataNotFoundError) as info:
        ImageFolderDataModule(str(missing))
    message = str(info.value)
    assert str((missing / "val").resolve()) in message and "<class>/<image>" in message
    dm = ImageFolderDataModule(str(missing), num_classes=1000)  # constructible before the data exists
    assert dm.num_classes == 1000
    with pytest.raises(DataNotFoundError, match="val does not exist"):
        dm.setup()
    make_image_tree(tmp_path / "mismatch", splits=("val",))
    make_image_tree(tmp_path / "mismatch", splits=("train",), classes=("ant", "bee", "cow"))
    with pytest.raises(ValueError, match="classes differ"):
        ImageFolderDataModule(str(tmp_path / "mismatch")).setup()


# --------------------------------------------------------------------------- one loader block, typed options
LOADER_OPTIONS = ("batch_size", "num_workers", "seed", "predict_split", "predict_limit", "pin_memory")


@pytest.mark.parametrize("cls", list(DATAMODULES.values()))
def test_every_datamodule_exposes_the_loader_options_to_jsonargparse(cls):
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, "data")
    defaults = parser.get_defaults().data
    assert all(name in defaults for name in LOADER_OPTIONS)
    assert defaults.predict_split == "test" and defaults.num_workers == 0 and defaults.pin_memory is False


@pytest.mark.parametrize(
    "argument, value, match",
    [
        ("predict_split", "dev", "predict_split"),
        ("batch_size", "0", "batch_size"),
        ("num_workers", "-1", "num_workers"),
        ("predict_limit", "0", "predict_limit"),
        ("channels", "2", "channels"),
    ],
)
def test_bad_digits_options_fail_when_parsed(argument, value, match):
    from jsonargparse import ArgumentError, ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(DigitsDataModule, "data")
    with pytest.raises(ArgumentError, match=match):
        parser.parse_args([f"--data.{argument}", value])


def test_cli_print_config_rejects_a_bad_split(tmp_path, capsys):
    from lit_advgame.cli import main
    from tests.conftest import CONFIGS

    config = tmp_path / "bad.yaml"
    config.write_text("data:\n  class_path: lit_advgame.data.DigitsDataModule\n  init_args:\n    predict_split: dev\n")
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(CONFIGS / "standard_digits.yaml"), "--config", str(config), "--print_config"])
    assert exc.value.code != 0
    err = capsys.readouterr().err
    assert "predict_split" in err and "dev" in err


def test_parsed_restricted_ints_are_saved_as_plain_ints():
    from jsonargparse.typing import PositiveInt

    dm = DigitsDataModule(image_size=PositiveInt(12), batch_size=PositiveInt(8), predict_limit=PositiveInt(5))
    assert dm.hparams["batch_size"] == 8 and dm.hparams["predict_limit"] == 5 and dm.hparams["image_size"] == 12
    assert all(type(v) in (int, float, bool, str, type(None)) for v in dm.hparams.values())
    assert dm.hparams["num_workers"] == 0 and dm.hparams["seed"] == 0  # base defaults are saved too
    assert all(type(v) is int for v in dm.input_shape) and type(dm.batch_size) is int
