"""The papers' experiment configs (configs/paper/) run through the commands their comments and the README give, on
generated stand-in data: a flat ``images_1000``-style folder of 64×64 PNGs with a 1000-class index, random-init
torchvision weights placed in a temporary ``TORCH_HOME`` under the enums' file names (never downloaded), fake
CIFAR-10 batch files in torchvision's format; 1-2 steps/batches through command-line overrides."""

from __future__ import annotations

import json
import math
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import yaml
from torch import nn

from lit_advgame.attacks.presets import canonical_name, preset_config, resolve_auto
from lit_advgame.classifiers import load_classifier
from lit_advgame.cli import main
from lit_advgame.data import ImageFolderDataModule
from lit_advgame.data.imagefolder import image_files
from lit_advgame.evaluation import evaluate_transfer
from lit_advgame.evaluation.cli import main as transfer_main
from lit_advgame.models import catalog
from lit_advgame.models.catalog import register_model
from lit_advgame.predict.shards import load_adversarial
from tests.conftest import CONFIGS
from tests.tb_utils import read_scalars
from tests.test_imagefolder import make_flat_folder
from tests.test_pretrained import place_weights

pytestmark = pytest.mark.usefixtures("one_thread_module")  # one intra-op thread (tests/conftest.py)

PAPER = CONFIGS / "paper"
IR_BASE = PAPER / "ir_imagenet_rn34.yaml"
#: the per-source files on top of IR_BASE: the source architecture and the targets Table 1 has for it
IR_SOURCES = {
    "ir_imagenet_vgg16.yaml": ("vgg16", ("resnet152", "densenet201", "inception_v3"), 2.0),
    "ir_imagenet_rn152.yaml": ("resnet152", ("vgg16", "densenet201", "inception_v3"), 1.0),
    "ir_imagenet_dn121.yaml": ("densenet121", ("vgg16", "resnet152", "densenet201", "inception_v3"), 2.0),
}
IR_TARGETS = ("vgg16", "resnet152", "densenet201", "inception_v3")
#: Inception-v3 needs at least 75×75 pixels; the stand-in PNGs are 64×64, served at this size
IMAGE_SIZE = 80
#: a few steps and groups: the smoke-test budget (the paper's 100 steps of 32 groups stay the config's)
IR_SMALL = ["--model.init_args.overrides.steps", "2", "--model.init_args.overrides.ir_num_samples", "2"]
CPU = ["--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false"]
#: the PGD+IR run folder of the RN-34 config, relative to the working folder
IR_RUN = "runs/attacks/ir_imagenet/resnet34/pgd+ir"


def target_spec(arch: str) -> dict[str, str]:
    return {"arch": f"torchvision:{arch}", "weights": "IMAGENET1K_V1"}


def printed_config(capsys, subcommand: str, *args: str) -> dict:
    """The resolved config of ``lit-advgame <subcommand> <args> --print_config``."""
    with pytest.raises(SystemExit) as exit_info:
        main([subcommand, *args, "--print_config"])
    assert exit_info.value.code == 0
    return yaml.safe_load(capsys.readouterr().out)


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory):
    """A torchvision cache holding random-init weights of every IR source and target under the enums' names."""
    home = tmp_path_factory.mktemp("torch_home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_HOME", str(home))
        for arch in ("resnet34", "densenet121", *IR_TARGETS):
            place_weights(arch)
        yield home


def make_images_1000(root: Path, source: dict[str, str], correct: int = 3, wrong: int = 1) -> None:
    """``data/images_1000`` (flat, WordNet id in each file name) and ``data/class_to_index.json`` (1000 classes)
    in ``root``: ``correct`` images named after the class the random-init ``source`` predicts for them, ``wrong``
    after another class."""
    wnids = [f"n{index:08d}" for index in range(1000)]
    (root / "data").mkdir()
    (root / "data" / "class_to_index.json").write_text(json.dumps({w: i for i, w in enumerate(wnids)}))
    folder = root / "data" / "images_1000"
    make_flat_folder(folder, wnids=wnids[:1], per_class=correct + wrong)
    data = ImageFolderDataModule(
        str(folder), val_dir=".", layout="flat", class_index=str(root / "data" / "class_to_index.json"),
        eval_resize="resize", image_size=IMAGE_SIZE,
    )  # fmt: skip
    data.setup()
    images = torch.stack([data.dataset("val")[i][0] for i in range(correct + wrong)])
    model = load_classifier(source, input_shape=(3, IMAGE_SIZE, IMAGE_SIZE)).model
    predicted = model(images).argmax(1).tolist()
    for k, path in enumerate(image_files(folder)):  # the dataset's order
        label = predicted[k] if k < correct else (predicted[k] + 1) % 1000
        path.rename(folder / f"{wnids[label]}_{k}.png")


# ----------------------------------------------------------------------------------------------- IR paper, Table 1
@pytest.fixture(scope="module")
def ir_run(tmp_path_factory, torch_home):
    """The README's first IR command, ``lit-advgame predict --config configs/paper/ir_imagenet_rn34.yaml``, run in
    an empty folder with stand-in ``data/`` (2 steps of 2 groups, images of 80 pixels, batches of 2); the folder."""
    folder = tmp_path_factory.mktemp("ir_imagenet")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        make_images_1000(folder, target_spec("resnet34"))
        small = [*CPU, "--data.init_args.image_size", str(IMAGE_SIZE), "--data.init_args.batch_size", "2"]
        main(["predict", "--config", str(IR_BASE), *small, *IR_SMALL])
    return folder


def test_ir_imagenet_rn34_predict_records_the_paper_attack_and_per_step_target_scores(ir_run):
    adv = load_adversarial(ir_run / IR_RUN)
    config = adv.meta["config"]
    assert config["norm"] == "linf" and config["eps"] == pytest.approx(16 / 255)
    assert config["step_size"] == pytest.approx(2 / 255) and config["ir_lambda"] == 1.0  # "auto": a ResNet source
    assert (config["ir_grid"], config["ir_form"], config["ir_group_size"]) == (16, "coalition", 32)
    assert config["ir_value"] == "margin_fixed" and config["steps"] == 2  # the override
    assert adv.meta["quantize"] is True and adv.meta["record"] == "scores"
    assert adv.step_score_names == [f"{arch}_IMAGENET1K_V1" for arch in IR_TARGETS]
    assert adv.records["step_scores"].shape == (4, 2, 4) and adv.x.shape == (4, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert (adv.records["source_margin_clean"] < 0).tolist() == [True, True, True, False]
    assert (ir_run / IR_RUN / "summary.md").is_file()


def test_ir_imagenet_transfer_to_the_torchvision_targets_with_loo(ir_run, monkeypatch):
    """``lit-advgame-transfer`` over the four torchvision targets (the README's command): success, LOO from the
    per-step scores, on the images the source classifies correctly."""
    monkeypatch.chdir(ir_run)
    targets = [json.dumps(target_spec(arch)) for arch in IR_TARGETS]
    output = ir_run / "runs" / "transfer" / "ir_imagenet" / "resnet34"
    args = [IR_RUN, "--targets", *targets, "--output", str(output), "--interaction-samples", "4", "--quiet"]
    assert transfer_main(args) == 0
    (row,) = json.loads((output / "report.json").read_text())["rows"]
    assert row["method"] == "pgd+ir" and row["num_images"] == 3  # only the images the source classifies correctly
    assert set(row["targets"]) == {f"{arch}_IMAGENET1K_V1" for arch in IR_TARGETS}
    for cell in row["targets"].values():
        assert 0.0 <= cell["success_loo"] <= 1.0 and len(cell["step_success"]) == 2
    assert read_scalars(output)  # TensorBoard events beside the report


def external_net(num_classes: int, in_channels: int, input_size: tuple[int, int] | None) -> nn.Module:
    """Stands in for a network torchvision lacks (SENet-154, Inception-v4, ...: Cadene's pretrainedmodels or timm)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 4, 3), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, num_classes)
    )


def test_any_module_becomes_a_transfer_target_through_a_registry_entry(ir_run, tmp_path, monkeypatch):
    """The README's recipe for targets torchvision lacks: register the architecture, save its weights, and give
    ``{arch, weights, mean, std}`` to ``evaluate_transfer`` beside the torchvision targets."""
    monkeypatch.setattr(catalog, "_REGISTRY", dict(catalog._REGISTRY))  # the registration ends with the test
    register_model("paper_test_external_net")(external_net)
    weights = tmp_path / "external.pth"
    torch.save(external_net(1000, 3, None).state_dict(), weights)  # a plain state dict, no normalization stored
    spec = {"arch": "paper_test_external_net", "weights": str(weights), "num_classes": 1000, "name": "se154"}
    spec.update(mean=[0.5] * 3, std=[0.5] * 3)  # the network's own normalization (a plain state dict has none)
    report = evaluate_transfer(ir_run / IR_RUN, [target_spec("vgg16"), spec], interaction=False)
    (row,) = report.rows
    assert list(row.targets) == ["vgg16_IMAGENET1K_V1", "se154"]
    assert row.targets["se154"].num_images == 3
    assert math.isnan(row.targets["se154"].success_loo)  # no per-step scores of it: last step only


@pytest.mark.parametrize("variant", sorted(IR_SOURCES))
def test_ir_source_variants_change_only_the_source_targets_and_folders(variant, capsys):
    arch, targets, lambda_ = IR_SOURCES[variant]
    base = printed_config(capsys, "predict", "--config", str(IR_BASE))
    composed = printed_config(capsys, "predict", "--config", str(IR_BASE), "--config", str(PAPER / variant))
    model = composed["model"]["init_args"]
    assert model["source"] == target_spec(arch)
    assert model["score_models"] == [target_spec(t) for t in targets]
    folder = composed["trainer"]["callbacks"][0]["init_args"]["output_dir"]
    assert folder == f"runs/attacks/ir_imagenet/{arch}/pgd+ir"
    assert composed["trainer"]["default_root_dir"] == f"runs/attacks/ir_imagenet/{arch}"
    for config in (base, composed):  # everything else is the base file's
        del config["model"]["init_args"]["source"], config["model"]["init_args"]["score_models"]
        del config["trainer"]["callbacks"], config["trainer"]["default_root_dir"]
    assert composed == base
    # λ "auto" of the paper: 1 for ResNet sources, 2 otherwise
    with torch.device("meta"):  # the architecture only: no weights to initialise
        source = torchvision.models.get_model(arch)
    assert resolve_auto(preset_config(base["model"]["init_args"]["attack"]), [source])["ir_lambda"] == lambda_


def test_ir_preset_and_norm_overrides_of_the_readme(capsys):
    """One run per preset: ``--model.init_args.attack <preset>`` with its own output folder; L2 by one override."""
    output, name = "runs/attacks/ir_imagenet/resnet34/pgd_l2", "resnet34_IMAGENET1K_V1/pgd_l2"
    config = printed_config(
        capsys, "predict", "--config", str(IR_BASE), "--model.init_args.attack", "pgd",
        "--model.init_args.overrides.norm", "l2", "--model.init_args.name", name,
        "--trainer.callbacks.init_args.output_dir", output,
    )  # fmt: skip
    assert config["model"]["init_args"]["attack"] == "pgd" and config["model"]["init_args"]["name"] == name
    assert config["model"]["init_args"]["overrides"] == {"norm": "l2"}
    assert config["trainer"]["callbacks"][0]["init_args"]["output_dir"] == output


def test_every_documented_ir_preset_builds_in_linf_and_l2():
    """The presets the base config's comment lists (Tables 1 and 4 of the IR paper) exist with the paper's budgets."""
    text = IR_BASE.read_text()
    listed = re.search(r"#\s+(pgd, pgd\+ir, [^\n(]+)\(--model", text).group(1)
    presets = [name.strip() for name in listed.split(",")]
    assert presets == ["pgd", "pgd+ir", "mi", "mi+ir", "vr", "vr+ir", "sgm", "sgm+ir", "hybridir"]
    for preset in presets:
        assert canonical_name(preset) == preset
        linf, l2 = preset_config(preset), preset_config(preset, norm="l2")
        assert linf["eps"] == pytest.approx(16 / 255) and linf["step_size"] == pytest.approx(2 / 255)
        assert l2["eps_scaling"] == "sqrt_dim" and l2["step_size"] == 2.0
        assert linf["steps"] == (50 if preset == "vr+ir" else 100)


# ----------------------------------------------------------------------------------------------- CIFAR-10 stand-in
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def make_cifar10(folder: Path, per_batch: int = 20, test: int = 20) -> None:
    """The smallest CIFAR-10 torchvision reads: ``cifar-10-batches-py`` with five training batches, the test batch
    and ``batches.meta``, pickled dicts of uint8 rows (3072 values) and labels, ``per_batch`` images each."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for name, n in [*[(f"data_batch_{k}", per_batch) for k in range(1, 6)], ("test_batch", test)]:
        batch = {"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8), "labels": [i % 10 for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": CIFAR_CLASSES}))


@pytest.fixture
def cifar_in_tmp(tmp_path, monkeypatch):
    """Stand-in CIFAR-10 in ``data/cifar10`` of an empty working folder (torchvision's md5 checks off: the files
    are synthetic)."""
    monkeypatch.chdir(tmp_path)
    make_cifar10(tmp_path / "data" / "cifar10" / "cifar-10-batches-py")
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)
    return tmp_path


ONE_STEP = [
    *CPU,
    "--trainer.max_epochs",
    "1",
    "--trainer.limit_train_batches",
    "1",
    "--trainer.limit_val_batches",
    "1",
    "--trainer.limit_test_batches",
    "1",
    "--trainer.log_every_n_steps",
    "1",
    "--data.init_args.batch_size",
    "4",
]


def test_trs_cifar10_fit_then_whitebox_predict_and_transfer(cifar_in_tmp, capsys):
    config = printed_config(capsys, "fit", "--config", str(PAPER / "trs_cifar10.yaml"))["model"]["init_args"]
    assert config["arch"] == "resnet20" and config["num_members"] == 3 and config["scaling"] == "reference"
    assert config["regularizer_kwargs"] == {
        "lambda_sim": 40.0,
        "lambda_smooth": 2.5,
        "variant": "plus",
        "eps_start": 0.01,
        "eps_end": 0.03,
        "accumulate_inner_grad": True,
        "inner_bn_mode": "train",
    }
    main(["fit", "--config", str(PAPER / "trs_cifar10.yaml"), *ONE_STEP])
    run = cifar_in_tmp / "runs" / "paper_trs_cifar10" / "version_0"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert {"train/loss_step", "val/acc", "test/acc"} <= set(read_scalars(run))

    small = [*CPU, "--data.init_args.batch_size", "4", "--data.init_args.predict_limit", "8"]
    whitebox = ["predict", "--config", str(PAPER / "trs_cifar10_whitebox.yaml"), *small]
    main(whitebox)
    eps2 = ["--model.init_args.overrides.eps", "0.02", "--model.init_args.overrides.step_size", "0.002"]
    main([*whitebox, *eps2, "--trainer.callbacks.init_args.output_dir", "runs/attacks/paper_trs_cifar10/pgd_eps0.02"])
    runs = ["runs/attacks/paper_trs_cifar10/pgd_eps0.01", "runs/attacks/paper_trs_cifar10/pgd_eps0.02"]
    for folder, eps in zip(runs, (0.01, 0.02)):
        adv = load_adversarial(cifar_in_tmp / folder)
        assert len(adv) == 8 and adv.meta["config"]["steps"] == 10 and adv.meta["config"]["random_start"] is True
        assert adv.meta["resolved_eps"] == pytest.approx(eps)
        assert adv.meta["resolved_step_size"] == pytest.approx(eps / 10)
    output = "runs/transfer/paper_trs_cifar10"
    ckpt = "runs/paper_trs_cifar10/version_0/checkpoints/last.ckpt"
    args = [*runs, "--labels", "pgd_eps0.01", "pgd_eps0.02", "--subset", "all", "--members", "--no-interaction"]
    assert transfer_main([*args, "--targets", ckpt, "--output", output, "--quiet"]) == 0
    rows = json.loads((cifar_in_tmp / output / "report.json").read_text())["rows"]
    assert [row["name"] for row in rows] == ["pgd_eps0.01", "pgd_eps0.02"]
    for row in rows:
        assert row["num_images"] == 8 and len(row["targets"]) == 4  # the ensemble and its three members


def test_smoothing_cifar10_one_noise_level_per_override_fit_certify_predict(cifar_in_tmp, capsys):
    config = printed_config(capsys, "fit", "--config", str(PAPER / "smoothing_cifar10.yaml"))["model"]["init_args"]
    assert (config["arch"], config["n0"], config["n"], config["alpha"]) == ("resnet110", 100, 100000, 0.001)
    assert config["certify_batch_size"] == 400 and config["certify_skip"] == 20
    sigma = "0.5"
    per_sigma = [
        "--model.init_args.sigma",
        sigma,
        "--trainer.logger.init_args.name",
        f"paper_smoothing_cifar10_sigma{sigma}",
        "--trainer.callbacks.init_args.output_dir",
        f"runs/paper_smoothing_cifar10_sigma{sigma}/certify",
    ]
    budget = ["--model.init_args.n0", "4", "--model.init_args.n", "16", "--model.init_args.certify_batch_size", "16"]
    budget += ["--model.init_args.certify_skip", "2"]
    main(["fit", "--config", str(PAPER / "smoothing_cifar10.yaml"), *per_sigma, *ONE_STEP, *budget])
    run = cifar_in_tmp / "runs" / f"paper_smoothing_cifar10_sigma{sigma}" / "version_0"
    scalars = read_scalars(run)
    assert {"test/certified_acc@0.25", "test/smoothed_acc", "test/abstain_rate"} <= set(scalars)
    assert f"sigma: {sigma}" in (run / "hparams.yaml").read_text()
    predict = [*per_sigma, *CPU, "--data.init_args.batch_size", "4", "--trainer.limit_predict_batches", "1", *budget]
    main(["predict", "--config", str(PAPER / "smoothing_cifar10.yaml"), "--ckpt_path", "last", *predict])
    certify = cifar_in_tmp / "runs" / f"paper_smoothing_cifar10_sigma{sigma}" / "certify"
    rows = (certify / "predictions.tsv").read_text().splitlines()
    assert rows[0].split()[:5] == ["idx", "label", "predict", "radius", "correct"] and len(rows) == 1 + 2
    assert (certify / "certified_accuracy.tsv").is_file()
