"""ImageNet-style image folders: both layouts, class indices, the two evaluation transforms, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from lit_advgame.cli import main
from lit_advgame.data import DataNotFoundError, ImageFolderDataModule
from lit_advgame.data.datasets import pil_to_float
from lit_advgame.data.imagefolder import read_class_index
from tests.conftest import CONFIGS
from tests.tb_utils import read_scalars

WNIDS = ("n01440764", "n01443537", "n01484850")  # ImageNet classes 0, 1, 2


def _pixels(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, size=(*size, 3), dtype=np.uint8))


def make_flat_folder(folder: Path, wnids=WNIDS, per_class: int = 2, size=(64, 64)) -> None:
    """The IR paper's ``images_1000`` layout: one folder, the WordNet id leading each file name."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for wnid in wnids:
        for k in range(per_class):
            _pixels(rng, size).save(folder / f"{wnid}_{k}.png")


def make_class_folders(folder: Path, wnids=WNIDS, per_class: int = 2, size=(64, 64)) -> None:
    rng = np.random.default_rng(1)
    for wnid in wnids:
        (folder / wnid).mkdir(parents=True)
        for k in range(per_class):
            _pixels(rng, size).save(folder / wnid / f"{k}.png")


def labels(dm: ImageFolderDataModule, split: str = "val") -> list[int]:
    return [int(dm.dataset(split)[i][1]) for i in range(len(dm.dataset(split)))]


def test_flat_layout_takes_classes_from_the_file_names(tmp_path):
    make_flat_folder(tmp_path / "images", wnids=WNIDS[1:])
    dm = ImageFolderDataModule(str(tmp_path), val_dir="images", layout="flat", image_size=32, resize=40)
    assert dm.num_classes == 2  # the sorted WordNet ids found
    assert labels(dm) == [0, 0, 1, 1]
    x, y = dm.dataset("val")[0]
    assert x.shape == (3, 32, 32) and 0 <= float(x.min()) and float(x.max()) <= 1


@pytest.mark.parametrize("kind", ["json", "keras_json", "txt"])
def test_flat_layout_with_a_class_index_file_gives_imagenet_indices(tmp_path, kind):
    make_flat_folder(tmp_path / "images_1000", wnids=WNIDS[1:])  # a subset: ImageNet classes 1 and 2
    index = tmp_path / f"index.{'txt' if kind == 'txt' else 'json'}"
    if kind == "json":
        index.write_text(json.dumps({w: i for i, w in enumerate(WNIDS)}))
    elif kind == "keras_json":
        index.write_text(json.dumps({str(i): [w, f"name{i}"] for i, w in enumerate(WNIDS)}))
    else:
        index.write_text("".join(f"{w} name {i}\n" for i, w in enumerate(WNIDS)))
    dm = ImageFolderDataModule(
        str(tmp_path / "images_1000"), val_dir=".", layout="flat", class_index=str(index), image_size=16, resize=16
    )
    assert dm.num_classes == 3 and read_class_index(index) == {w: i for i, w in enumerate(WNIDS)}
    assert labels(dm) == [1, 1, 2, 2]


def test_class_folders_with_a_class_index_file(tmp_path):
    make_class_folders(tmp_path / "val", wnids=WNIDS[2:])
    index = tmp_path / "index.txt"
    index.write_text("\n".join(WNIDS))
    dm = ImageFolderDataModule(str(tmp_path), class_index=str(index), image_size=16, resize=16)
    assert dm.num_classes == 3 and labels(dm) == [2, 2]


def test_flat_layout_errors(tmp_path):
    make_flat_folder(tmp_path / "val")
    Image.new("RGB", (8, 8)).save(tmp_path / "val" / "no_id.png")
    with pytest.raises(ValueError, match="no_id.png.*has no WordNet id"):
        ImageFolderDataModule(str(tmp_path), layout="flat")
    (tmp_path / "val" / "no_id.png").unlink()
    index = tmp_path / "index.json"
    index.write_text(json.dumps({WNIDS[0]: 0, WNIDS[1]: 1}))
    with pytest.raises(ValueError, match="n01484850 is not in the class_index"):
        ImageFolderDataModule(str(tmp_path), layout="flat", class_index=str(index)).setup()
    index.write_text(json.dumps({WNIDS[0]: 0, WNIDS[1]: 2}))
    with pytest.raises(ValueError, match="indices must be 0..1"):
        ImageFolderDataModule(str(tmp_path), layout="flat", class_index=str(index))
    with pytest.raises(ValueError, match="num_classes=5 but .* has 3 WordNet ids"):
        ImageFolderDataModule(str(tmp_path), layout="flat", num_classes=5)
    with pytest.raises(ValueError, match="unknown layout .folders.; choose one of: class_folders, flat"):
        ImageFolderDataModule(str(tmp_path), layout="folders")
    with pytest.raises(DataNotFoundError, match="class_index file not found"):
        ImageFolderDataModule(str(tmp_path), layout="flat", class_index=str(tmp_path / "missing.json"))
    np.save(tmp_path / "class_to_index.npy", np.arange(3))
    with pytest.raises(ValueError, match="a .npy mapping is a pickle.*convert it to JSON"):
        ImageFolderDataModule(str(tmp_path), layout="flat", class_index=str(tmp_path / "class_to_index.npy"))
    empty = tmp_path / "empty" / "val"
    empty.mkdir(parents=True)
    with pytest.raises(DataNotFoundError, match="(?s)has no image files.*WordNet id in each file name"):
        ImageFolderDataModule(str(tmp_path / "empty"), layout="flat")


def test_eval_resize_resize_is_the_ir_loader_without_crop(tmp_path):
    make_flat_folder(tmp_path / "val", wnids=WNIDS[:1], per_class=1, size=(40, 56))  # not square
    path = next((tmp_path / "val").iterdir())
    resized = ImageFolderDataModule(str(tmp_path), layout="flat", image_size=24, eval_resize="resize")
    cropped = ImageFolderDataModule(str(tmp_path), layout="flat", image_size=24, resize=32)
    with Image.open(path) as image:
        image = image.convert("RGB")
        want_resized = pil_to_float(transforms.Resize((24, 24))(image))
        want_cropped = pil_to_float(transforms.CenterCrop(24)(transforms.Resize(32)(image)))
    assert torch.equal(resized.dataset("val")[0][0], want_resized)
    assert torch.equal(cropped.dataset("val")[0][0], want_cropped)
    assert not torch.equal(want_resized, want_cropped)
    ImageFolderDataModule(str(tmp_path), layout="flat", image_size=24, resize=8, eval_resize="resize")  # no crop
    with pytest.raises(ValueError, match="unknown eval_resize .crop.; choose one of: center_crop, resize"):
        ImageFolderDataModule(str(tmp_path), layout="flat", eval_resize="crop")


def test_hyperparameters_hold_the_resolved_values_the_model_shares(tmp_path):
    make_class_folders(tmp_path / "val")
    dm = ImageFolderDataModule(str(tmp_path), mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    hp = dm.hparams_initial
    assert hp["num_classes"] == 3 and hp["mean"] == (0.5, 0.5, 0.5) and hp["std"] == (0.25, 0.25, 0.25)
    assert hp["layout"] == "class_folders" and hp["eval_resize"] == "center_crop"


@pytest.mark.parametrize("layout", ["class_folders", "flat"])
def test_cli_fit_validate_test_predict_with_the_tensorboard_logger(tmp_path, monkeypatch, layout):
    """The error this fixes: 'Error while merging hparams: the keys ['mean', 'num_classes', 'std'] are present in
    both the LightningModule's and LightningDataModule's hparams but have different values'."""
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "imagenet"
    for split in ("train", "val"):
        (make_class_folders if layout == "class_folders" else make_flat_folder)(data / split)
    common = [
        "--config",
        str(CONFIGS / "standard_digits.yaml"),
        "--data",
        "lit_advgame.data.ImageFolderDataModule",
        "--data.root",
        str(data),
        "--data.layout",
        layout,
        "--data.image_size",
        "32",
        "--data.eval_resize",
        "resize" if layout == "flat" else "center_crop",
        "--data.resize",
        "36",
        "--data.batch_size",
        "3",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.log_every_n_steps",
        "1",
        "--trainer.logger.init_args.name",
        "imagenet",
    ]
    main(["fit", *common, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2"])
    ckpt = tmp_path / "runs" / "imagenet" / "version_0" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    scalars = read_scalars(tmp_path / "runs" / "imagenet" / "version_0")
    assert {"train/loss_step", "val/acc", "test/acc"} <= set(scalars)
    for subcommand in ("validate", "test", "predict"):
        main([subcommand, *common, "--ckpt_path", str(ckpt)])
    versions = sorted(p.name for p in (tmp_path / "runs" / "imagenet").iterdir())
    assert len(versions) == 4, versions
    hparams = (tmp_path / "runs" / "imagenet" / "version_0" / "hparams.yaml").read_text()
    assert f"layout: {layout}" in hparams and "num_classes: 3" in hparams
