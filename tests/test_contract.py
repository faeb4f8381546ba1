"""The classifier contract end to end: every training method's checkpoint is attacked and scored as a target.

Each training method is fitted for one batch through the CLI (``lit-advgame fit --config configs/<x>_digits.yaml``
with a one-step override), its ``.ckpt`` is loaded by :func:`lit_advgame.classifiers.load_classifier` (the trained
weights, normalization inside, an ensemble's members), exported to a classifier file and loaded back, attacked with
``lit-advgame predict`` (the quickstart attack config, shrunk to 16 digits and 2 PGD steps), and every checkpoint is
scored as a transfer target (ensembles with their members) by ``python -m lit_advgame.evaluation``; the
interaction inside the perturbations is measured on the checkpoint sources named in the runs' metadata. The loader's
other spec kinds (checkpoints without a class path, ensemble files, members, robustness-format and torchvision
specs) and its errors are checked on hand-made files.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml

from lit_advgame.classifiers import (
    ENSEMBLE_ARCH,
    LoadedModel,
    export_classifier,
    load_classifier,
    load_classifiers,
    with_members,
)
from lit_advgame.cli import main
from lit_advgame.data import DigitsDataModule
from lit_advgame.ensembles import EnsembleModel, build_ensemble_model
from lit_advgame.evaluation import evaluate_transfer
from lit_advgame.models import NormalizedModel, build_model
from lit_advgame.predict import AdversarialWriter, AttackModule, load_adversarial, margins
from lit_advgame.predict.export import export_lightning_checkpoint
from tests.conftest import CONFIGS, REPO_ROOT, torch_threads

#: training method -> (config, whether its classifier is an ensemble)
METHODS = {
    "standard": ("standard_digits.yaml", False),
    "adversarial": ("adversarial_digits.yaml", False),
    "trades": ("trades_digits.yaml", False),
    "smoothing": ("smoothing_digits.yaml", False),
    "ensemble": ("ensemble_digits.yaml", True),
    "trs": ("trs_digits.yaml", True),
    "gal": ("gal_digits.yaml", True),
    "adp": ("adp_digits.yaml", True),
}
# One optimizer step (one batch: the CLI reads an integer limit as a number of batches), no validation, only a
# last.ckpt; small batches.
ONE_STEP = {
    "test_after_fit": False,
    "trainer": {
        "max_epochs": 1,
        "limit_train_batches": 1,
        "limit_val_batches": 0,
        "num_sanity_val_steps": 0,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "callbacks": [{"class_path": "pytorch_lightning.callbacks.ModelCheckpoint", "init_args": {"filename": "last"}}],
    },
    "data": {"init_args": {"batch_size": 8}},
}
TINY_ATTACK = {
    "model": {
        "init_args": {
            "attack": "pgd",
            "overrides": {"eps": "32/255", "step_size": "8/255", "steps": 2},
            "record": "uint8",
            "score_models": None,
        }
    },
    "data": {"init_args": {"batch_size": 16, "predict_limit": 16}},
}
EPS = 32 / 255


pytestmark = pytest.mark.usefixtures("one_thread")  # one intra-op thread (tests/conftest.py)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> dict[str, Path]:
    """Fit every method for one step, attack each checkpoint, score all of them as targets (run once per module)."""
    root = tmp_path_factory.mktemp("contract")
    one_step, tiny = root / "one_step.yaml", root / "tiny_attack.yaml"
    one_step.write_text(yaml.safe_dump(ONE_STEP))
    tiny.write_text(yaml.safe_dump(TINY_ATTACK))
    ckpts = root / "ckpts"
    ckpts.mkdir()
    with torch_threads(1):  # a module fixture: it runs before the per-test one_thread
        for method, (config, _) in METHODS.items():
            run_root = root / "fit" / method
            main(
                [
                    "fit",
                    "--config",
                    str(CONFIGS / config),
                    "--config",
                    str(one_step),
                    "--trainer.default_root_dir",
                    str(run_root),
                ]
            )
            (last,) = run_root.glob("version_*/checkpoints/last.ckpt")
            shutil.copy(last, ckpts / f"{method}.ckpt")  # the file name is the model's display name
        for method in METHODS:
            out = root / "attacks" / method
            main(
                [
                    "predict",
                    "--config",
                    str(CONFIGS / "attack_quickstart.yaml"),
                    "--config",
                    str(tiny),
                    "--model.init_args.source",
                    str(ckpts / f"{method}.ckpt"),
                    "--trainer.callbacks.init_args.output_dir",
                    str(out),
                    "--trainer.default_root_dir",
                    str(out),
                ]
            )
    report = root / "transfer"
    runs = [str(root / "attacks" / m) for m in METHODS]
    targets = [str(ckpts / f"{m}.ckpt") for m in METHODS]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "lit_advgame.evaluation",
            *runs,
            "--targets",
            *targets,
            "--members",
            "--subset",
            "all",
            "--output",
            str(report),
            "--no-interaction",
            "--batch-size",
            "64",
            "--no-tensorboard",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return {"root": root, "ckpts": ckpts, "report": report}


# ----------------------------------------------------------------------------- every training method
@pytest.mark.parametrize("method", list(METHODS))
def test_checkpoint_loads_as_the_trained_pixel_space_classifier(pipeline, method):
    ckpt = pipeline["ckpts"] / f"{method}.ckpt"
    loaded = load_classifier(str(ckpt), num_classes=10, input_shape=(1, 16, 16))
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    trained = {k[len("model.") :]: v for k, v in raw["state_dict"].items() if k.startswith("model.")}
    state = loaded.model.state_dict()
    assert set(state) == set(trained)
    for key, value in trained.items():  # the trained weights and normalization, nothing else
        assert torch.equal(state[key], value), key
    assert not loaded.model.training and not any(p.requires_grad for p in loaded.model.parameters())
    data = DigitsDataModule()
    assert loaded.mean == pytest.approx(list(data.mean)) and loaded.std == pytest.approx(list(data.std))
    assert loaded.module == raw["hyper_parameters"]["_class_path"]
    assert (loaded.num_classes, loaded.input_shape, loaded.name) == (10, (1, 16, 16), method)
    x = torch.rand(5, 1, 16, 16)
    if METHODS[method][1]:
        assert isinstance(loaded.model, EnsembleModel) and loaded.arch == ENSEMBLE_ARCH
        assert [m.name for m in loaded.members] == [f"{method}_member{i}" for i in range(3)]
        assert [m.arch for m in loaded.members] == ["small_cnn"] * 3
        member_logits = torch.stack([m.model(x) for m in loaded.members])
        expected = torch.logsumexp(torch.log_softmax(member_logits, -1), 0) - torch.log(torch.tensor(3.0))
        torch.testing.assert_close(loaded.model(x), expected)  # the ensemble output: log of the mean probability
        again = load_classifier(loaded.members[1].spec)  # a member's spec loads that member alone
        assert again.name == f"{method}_member1"
        torch.testing.assert_close(again.model(x), member_logits[1])
    else:
        assert isinstance(loaded.model, NormalizedModel) and loaded.arch == "small_cnn" and not loaded.members
    metadata = loaded.metadata()
    assert json.loads(json.dumps(metadata)) == metadata and len(metadata.get("members", [])) == len(loaded.members)


@pytest.mark.parametrize("method", list(METHODS))
def test_every_checkpoint_exports_to_a_classifier_file(pipeline, tmp_path, method):
    ckpt = pipeline["ckpts"] / f"{method}.ckpt"
    out = tmp_path / f"{method}.pt"
    metrics = export_lightning_checkpoint(ckpt, out)
    assert set(metrics) == {"val_acc", "test_acc"} and all(0 <= v <= 1 for v in metrics.values())
    stored = torch.load(out, map_location="cpu", weights_only=True)
    assert stored["module"].rsplit(".", 1)[-1] in (
        "StandardClassifier",
        "AdversarialTraining",
        "RandomizedSmoothing",
        "Ensemble",
    )
    original, exported = load_classifier(str(ckpt)), load_classifier(str(out))
    x = torch.rand(6, 1, 16, 16)
    torch.testing.assert_close(exported.model(x), original.model(x), rtol=0, atol=0)
    assert (exported.arch, exported.mean, exported.std) == (original.arch, original.mean, original.std)
    assert [m.arch for m in exported.members] == [m.arch for m in original.members]


@pytest.mark.parametrize("method", list(METHODS))
def test_every_checkpoint_is_attacked_through_its_classifier(pipeline, method):
    adv = load_adversarial(pipeline["root"] / "attacks" / method)
    assert adv.index.tolist() == list(range(16))
    assert (adv.x_adv - adv.x).abs().max() <= EPS + 1e-6
    assert adv.meta["sources"] == [{"path": str(pipeline["ckpts"] / f"{method}.ckpt"), "name": method}]
    model = load_classifier(adv.meta["sources"][0]).model
    with torch.no_grad():  # the recorded source margins are those of the checkpoint's classifier
        torch.testing.assert_close(adv.records["source_margin_adv"], margins(model(adv.x_adv), adv.label))
        torch.testing.assert_close(adv.records["source_margin_clean"], margins(model(adv.x), adv.label))
    assert adv.records["candidates"].shape == (16, 2, 1, 16, 16)


def _margins(model, images, labels):
    """max_{k != y} z_k - z_y from the raw logits (independent of the package's scoring helpers)."""
    with torch.no_grad():
        logits = model(images.float() / 255.0 if images.dtype == torch.uint8 else images.float())
    true = logits.gather(1, labels.long()[:, None])[:, 0]
    others = logits.scatter(1, labels.long()[:, None], float("-inf")).max(dim=1).values
    return others - true


def test_every_checkpoint_is_scored_as_a_transfer_target_with_the_ensembles_members(pipeline):
    report = json.loads((pipeline["report"] / "report.json").read_text())
    expected_targets = []
    for method, (_, ensemble) in METHODS.items():
        expected_targets += [method] + ([f"{method}_member{i}" for i in range(3)] if ensemble else [])
    assert report["targets"] == expected_targets
    rows = {row["source"]: row for row in report["rows"]}
    assert list(rows) == list(METHODS)
    for method, row in rows.items():
        adv = load_adversarial(pipeline["root"] / "attacks" / method)
        assert row["num_images"] == 16 and set(row["targets"]) == set(expected_targets)
        assert 0 <= row["whitebox_success"] <= 1
        for name in ("trs", "trs_member2", "smoothing"):  # the scores are those of the loaded target classifiers
            spec = (
                str(pipeline["ckpts"] / f"{name}.ckpt")
                if "member" not in name
                else {"path": str(pipeline["ckpts"] / "trs.ckpt"), "member": 2}
            )
            model = load_classifier(spec).model
            clean, fooled = (_margins(model, images, adv.label) for images in (adv.x, adv.x_adv))
            cell = row["targets"][name]
            assert cell["clean_accuracy"] == pytest.approx(float((clean < 0).float().mean()))
            assert cell["success"] == pytest.approx(float((fooled > 0).float().mean()))
            assert cell["utility"] == pytest.approx(float((fooled - clean).mean()), rel=1e-5, abs=1e-6)


def test_interaction_is_measured_on_checkpoint_sources_reloaded_from_the_run_metadata(pipeline):
    runs = [pipeline["root"] / "attacks" / m for m in ("trs", "smoothing")]
    report = evaluate_transfer(
        runs,
        str(pipeline["ckpts"] / "standard.ckpt"),
        subset="all",
        loo=False,
        interaction={"grid": 2, "num_samples": 2, "max_images": 4},
        device="cpu",
    )
    assert [row.source for row in report.rows] == ["trs", "smoothing"]
    for row in report.rows:  # the source (an ensemble for trs) is loaded from the spec in the run's metadata
        assert math.isfinite(row.interaction) and math.isfinite(row.interaction_stderr)


def test_ensemble_sources_check_every_members_normalization(pipeline):
    ckpt = str(pipeline["ckpts"] / "trs.ckpt")
    message = r"source model 'trs' \(member 0\) normalizes inputs with mean=.*data's mean is \[0\.5\]"
    with pytest.raises(ValueError, match=message):
        AttackModule(ckpt, "pgd", mean=[0.5], std=[0.3])
    data = DigitsDataModule()
    module = AttackModule(ckpt, "pgd", mean=data.mean, std=data.std, num_classes=10, input_shape=(1, 16, 16))
    assert isinstance(module.source_models[0], EnsembleModel)


# ----------------------------------------------------------------------------- the loader on hand-made files
def _lightning_checkpoint(path: Path, model: torch.nn.Module, **hparams) -> Path:
    """A Lightning checkpoint as a Trainer outside the CLI writes it (no ``_class_path``)."""
    hp = {"arch": "lenet", "num_classes": 10, "input_shape": (1, 16, 16), "arch_kwargs": None, **hparams}
    torch.save({"hyper_parameters": hp, "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


def test_ensemble_checkpoint_without_class_path_and_ensemble_files_load_with_members(tmp_path):
    torch.manual_seed(0)
    ensemble = build_ensemble_model(2, ["lenet", "mlp"], 10, (1, 16, 16), mean=[0.3], std=[0.2]).eval()
    ckpt = _lightning_checkpoint(tmp_path / "ens.ckpt", ensemble, arch="lenet", archs=["lenet", "mlp"], num_members=2)
    x = torch.rand(4, 1, 16, 16)
    expected = ensemble(x)
    loaded = load_classifier(str(ckpt), input_shape=(1, 16, 16))
    torch.testing.assert_close(loaded.model(x), expected)
    assert [m.arch for m in loaded.members] == ["lenet", "mlp"] and loaded.module is None
    assert loaded.mean == pytest.approx([0.3]) and loaded.std == pytest.approx([0.2])
    export_classifier(loaded, tmp_path / "ens.pt")
    from_file = load_classifier(str(tmp_path / "ens.pt"))
    torch.testing.assert_close(from_file.model(x), expected)
    assert from_file.metadata() == loaded.metadata()
    member = load_classifier({"path": str(tmp_path / "ens.pt"), "member": 1, "name": "the mlp"})
    assert member.name == "the mlp" and member.arch == "mlp" and member.spec["member"] == 1
    torch.testing.assert_close(member.model(x), ensemble.members[1](x))
    torch.testing.assert_close(load_classifier(member.spec).model(x), ensemble.members[1](x))
    expanded = with_members(load_classifiers([str(ckpt)]))
    assert [m.name for m in expanded] == ["ens", "ens_member0", "ens_member1"]
    with pytest.raises(ValueError, match="duplicate names"):
        with_members([loaded, loaded.members[0]])
    with pytest.raises(ValueError, match=r"'member' must be an int in \[0, 1\]"):
        load_classifier({"path": str(ckpt), "member": 2})
    single = _lightning_checkpoint(tmp_path / "single.ckpt", build_model("lenet", 10, 1, 16))
    with pytest.raises(ValueError, match="needs an ensemble"):
        load_classifier({"path": str(single), "member": 0})
    with pytest.raises(ValueError, match="'member' needs 'path'"):
        load_classifier({"arch": "lenet", "member": 0}, input_shape=(1, 16, 16))
    wrong = _lightning_checkpoint(tmp_path / "wrong.ckpt", ensemble, archs=["lenet", "lenet"], num_members=2)
    with pytest.raises(ValueError, match=r"ensemble weights do not match members \['lenet', 'lenet'\]"):
        load_classifier(str(wrong))
    with pytest.raises(TypeError, match="arch, num_classes and input_shape"):
        export_classifier(ensemble, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="lists 3 architectures for an ensemble of 2"):
        export_classifier(ensemble, tmp_path / "x.pt", arch=["lenet"] * 3, num_classes=10, input_shape=(1, 16, 16))


def test_checkpoint_of_a_class_that_is_not_a_lightning_module_or_no_longer_fits_is_refused(tmp_path):
    model = build_model("lenet", 10, 1, 16)
    ckpt = _lightning_checkpoint(tmp_path / "odd.ckpt", model, _class_path="collections.OrderedDict")
    with pytest.raises(ValueError, match="'collections.OrderedDict' as its module, which is not a LightningModule"):
        load_classifier(str(ckpt))
    stale = _lightning_checkpoint(
        tmp_path / "stale.ckpt",
        model,
        _class_path="lit_advgame.training.StandardClassifier",
        _instantiator="pytorch_lightning.cli.instantiate_module",
        arch="mlp",
    )
    with pytest.raises(ValueError, match="could not rebuild its lit_advgame.training.StandardClassifier"):
        load_classifier(str(stale))  # lenet weights under an mlp architecture


def test_robustness_format_and_torchvision_specs_load_as_pixel_space_classifiers(tmp_path):
    torch.manual_seed(0)
    net = build_model("lenet", 10, 1, 16).net
    mean, std = torch.tensor([0.4]).view(1, 1, 1), torch.tensor([0.25]).view(1, 1, 1)
    state = {
        **{f"module.model.{k}": v for k, v in net.state_dict().items()},
        **{f"module.attacker.model.{k}": v for k, v in net.state_dict().items()},
        "module.normalizer.new_mean": mean,
        "module.normalizer.new_std": std,
        "module.attacker.normalize.new_mean": mean,
        "module.attacker.normalize.new_std": std,
    }
    torch.save({"model": state, "epoch": 3}, tmp_path / "robust.pt")
    loaded = load_classifier(
        {"arch": "lenet", "weights": str(tmp_path / "robust.pt")}, num_classes=10, input_shape=(1, 16, 16)
    )
    x = torch.rand(3, 1, 16, 16)
    torch.testing.assert_close(loaded.model(x), net.eval()((x - 0.4) / 0.25))
    assert (loaded.mean, loaded.std, loaded.arch) == ([pytest.approx(0.4)], [pytest.approx(0.25)], "lenet")
    tv = load_classifier(
        {"arch": "torchvision:squeezenet1_1", "num_classes": 4, "name": "sq"},
        input_shape=(3, 32, 32),
        mean=[0.5] * 3,
        std=[0.2] * 3,
    )
    assert isinstance(tv, LoadedModel) and tv.model(torch.rand(2, 3, 32, 32)).shape == (2, 4)
    assert tv.metadata()["arch"] == "torchvision:squeezenet1_1" and tv.mean == [0.5] * 3


def test_attack_module_needs_a_batch_prediction_writer(tmp_path, pipeline):
    module = AttackModule(str(pipeline["ckpts"] / "standard.ckpt"), "pgd", overrides={"steps": 1})
    data = DigitsDataModule(predict_limit=4, batch_size=4)
    trainer = pl.Trainer(accelerator="cpu", inference_mode=False, logger=False, enable_progress_bar=False)
    with pytest.raises(ValueError, match="needs a batch-interval prediction writer"):
        trainer.predict(module, datamodule=data, return_predictions=False)
    trainer = pl.Trainer(
        accelerator="cpu",
        inference_mode=False,
        logger=False,
        enable_progress_bar=False,
        callbacks=[AdversarialWriter(str(tmp_path / "run"))],
    )
    trainer.predict(module, datamodule=data, return_predictions=False)
    assert load_adversarial(tmp_path / "run").index.tolist() == [0, 1, 2, 3]
