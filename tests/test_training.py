"""StandardClassifier: learning on digits, optimizer/scheduler injection, checkpoint round trip."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
import yaml

from lit_advgame.data import DigitsDataModule
from lit_advgame.training import StandardClassifier


def _module(dm: DigitsDataModule, **kwargs) -> StandardClassifier:
    return StandardClassifier(
        num_classes=dm.num_classes, input_shape=dm.input_shape, mean=dm.mean, std=dm.std, **kwargs
    )


def _trainer(tmp_path, **kwargs) -> pl.Trainer:
    defaults = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    defaults.update(kwargs)
    return pl.Trainer(**defaults)


def test_standard_classifier_learns_digits(tmp_path):
    pl.seed_everything(0)
    dm = DigitsDataModule(batch_size=64, seed=0)
    model = _module(dm, optimizer=lambda p: torch.optim.Adam(p, lr=3e-3))
    trainer = _trainer(tmp_path, max_epochs=4)
    trainer.fit(model, datamodule=dm)
    metrics = trainer.test(model, datamodule=dm, verbose=False)[0]
    assert metrics["test/acc"] > 0.85
    assert metrics["test/loss"] < 0.6


def test_model_normalizes_with_datamodule_statistics():
    dm = DigitsDataModule(seed=0)
    model = _module(dm)
    norm = model.model.normalize
    assert torch.allclose(norm.mean.flatten(), torch.tensor(dm.mean))
    assert torch.allclose(norm.std.flatten(), torch.tensor(dm.std))


def test_optimizer_and_scheduler_come_from_the_factories():
    dm = DigitsDataModule(seed=0)
    model = _module(
        dm,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5),
        scheduler_interval="step",
    )
    cfg = model.configure_optimizers()
    assert isinstance(cfg["optimizer"], torch.optim.SGD)
    assert cfg["optimizer"].defaults["lr"] == 0.05
    assert isinstance(cfg["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.StepLR)
    assert cfg["lr_scheduler"]["interval"] == "step"

    plateau = _module(dm, lr_scheduler=lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt))
    assert plateau.configure_optimizers()["lr_scheduler"]["monitor"] == "val/loss"
    assert isinstance(_module(dm).configure_optimizers(), torch.optim.Adam)


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="scheduler_interval"):
        StandardClassifier(scheduler_interval="batch")
    with pytest.raises(ValueError, match="input_shape"):
        StandardClassifier(input_shape=(16, 16))
    with pytest.raises(ValueError, match="no_such_arch"):
        StandardClassifier(arch="no_such_arch")


def test_checkpoint_round_trip(tmp_path):
    pl.seed_everything(0)
    dm = DigitsDataModule(batch_size=64, seed=0)
    model = _module(dm)
    trainer = _trainer(tmp_path, max_epochs=1, limit_train_batches=3, limit_val_batches=1)
    trainer.fit(model, datamodule=dm)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    restored = StandardClassifier.load_from_checkpoint(path, map_location="cpu")
    x = torch.rand(4, *dm.input_shape)
    model.eval(), restored.eval()
    assert torch.equal(model(x), restored(x))
    assert restored.hparams.arch == "small_cnn"


def test_predict_step_returns_predictions_and_labels(tmp_path):
    dm = DigitsDataModule(batch_size=32, seed=0, predict_limit=40)
    model = _module(dm)
    out = _trainer(tmp_path).predict(model, datamodule=dm)
    preds = torch.cat([o["pred"] for o in out])
    labels = torch.cat([o["label"] for o in out])
    assert preds.shape == labels.shape == (40,)
    assert preds.dtype == torch.int64


# --------------------------------------------------------------------------- the classifier contract
@pytest.mark.parametrize("name", ["StandardClassifier", "AdversarialTraining", "RandomizedSmoothing", "Ensemble"])
def test_every_training_module_exposes_a_pixel_space_classifier(name):
    """``classifier``: one nn.Module, images in [0, 1] -> logits, normalization inside; ``classifier_metadata``
    describes it (an ensemble: the combined model with ``.members`` and one entry per member)."""
    import lit_advgame.training as training

    dm = DigitsDataModule(seed=0)
    module = getattr(training, name)(
        arch="mlp", num_classes=dm.num_classes, input_shape=dm.input_shape, mean=dm.mean, std=dm.std
    )
    assert isinstance(module.classifier, torch.nn.Module) and module.classifier is module.model
    assert "kwargs" not in module.hparams and module.hparams.arch == "mlp"
    x = torch.rand(3, *dm.input_shape)
    module.eval()
    logits = module.classifier(x)
    assert logits.shape == (3, dm.num_classes) and torch.equal(logits, module(x))
    meta = module.classifier_metadata()
    assert (meta["arch"], meta["num_classes"], meta["input_shape"]) == ("mlp", dm.num_classes, list(dm.input_shape))
    assert meta["mean"] == pytest.approx(list(dm.mean)) and meta["std"] == pytest.approx(list(dm.std))
    if name == "Ensemble":
        assert len(module.classifier.members) == 3 and [m["arch"] for m in meta["members"]] == ["mlp"] * 3
    else:
        assert meta["members"] is None
    if name == "RandomizedSmoothing":
        assert module.smoothed_classifier().base_classifier is module.classifier


@pytest.mark.parametrize(
    "config", ["standard_digits.yaml", "adversarial_digits.yaml", "smoothing_digits.yaml", "ensemble_digits.yaml"]
)
def test_subclasses_forward_the_base_arguments_to_the_cli(config, capsys):
    """The subclasses take ``**kwargs`` for ClassifierModule's arguments; LightningCLI still shows and sets them."""
    from lit_advgame.cli import main
    from tests.conftest import CONFIGS

    with pytest.raises(SystemExit) as exc:
        main(
            [
                "fit",
                "--config",
                str(CONFIGS / config),
                "--model.init_args.scheduler_interval",
                "step",
                "--model.init_args.arch",
                "mlp",
                "--print_config",
            ]
        )
    assert exc.value.code == 0
    init_args = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]
    base_arguments = (
        "arch",
        "arch_kwargs",
        "weights",
        "optimizer",
        "lr_scheduler",
        "scheduler_interval",
        "scheduler_monitor",
    )
    for key in base_arguments:
        assert key in init_args, key
    assert init_args["scheduler_interval"] == "step" and init_args["arch"] == "mlp"
