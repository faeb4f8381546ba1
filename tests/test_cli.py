"""The lit-advgame command line: config printing, a short fit read back from TensorBoard, resuming."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lit_advgame.cli import build_cli, main
from tests.conftest import CONFIGS, DDP_CPU_ARGS, REPO_ROOT
from tests.tb_utils import read_scalars

FAST = [
    "--trainer.limit_train_batches",
    "5",
    "--trainer.limit_val_batches",
    "2",
    "--trainer.limit_test_batches",
    "2",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.log_every_n_steps",
    "1",
]


def _fit(args: list[str]) -> None:
    main(["fit", "--config", str(CONFIGS / "standard_digits.yaml"), *FAST, *args])


def test_print_config_resolves_yaml(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(CONFIGS / "standard_digits.yaml"), "--print_config"])
    assert exc.value.code == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["model"]["class_path"] == "lit_advgame.training.StandardClassifier"
    assert cfg["data"]["class_path"] == "lit_advgame.data.DigitsDataModule"
    assert cfg["model"]["init_args"]["arch"] == "small_cnn"
    assert cfg["seed_everything"] == 0


def test_quickstart_is_a_trs_ensemble_with_interaction_callbacks(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(CONFIGS / "quickstart.yaml"), "--print_config"])
    assert exc.value.code == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["model"]["class_path"].endswith("Ensemble")
    assert cfg["model"]["init_args"]["regularizer"] == "trs"
    assert cfg["data"]["class_path"] == "lit_advgame.data.DigitsDataModule"
    callbacks = {cb["class_path"].rsplit(".", 1)[-1] for cb in cfg["trainer"]["callbacks"]}
    assert {
        "MultiOrderInteractionCallback",
        "DisentanglementCallback",
        "TransferabilityCallback",
        "PerturbationInteractionCallback",
        "ModelCheckpoint",
    } <= callbacks


def test_unknown_config_key_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(CONFIGS / "quickstart.yaml"), "--model.init_args.no_such_option", "1"])
    assert exc.value.code != 0
    assert "no_such_option" in capsys.readouterr().err


def test_fit_one_epoch_writes_metrics_config_and_checkpoints(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _fit(["--trainer.max_epochs", "1"])
    run_dir = tmp_path / "runs" / "standard_digits"
    version = run_dir / "version_0"
    scalars = read_scalars(version)
    for tag in ("train/loss_step", "train/loss_epoch", "train/acc", "val/loss", "val/acc", "test/acc", "test/loss"):
        assert tag in scalars, f"{tag} missing from {sorted(scalars)}"
    acc = scalars["val/acc"][-1][1]
    assert 0.0 <= acc <= 1.0
    # the resolved config is saved next to the run, with the linked data properties filled in
    saved = yaml.safe_load((version / "config.yaml").read_text())
    assert saved["model"]["init_args"]["arch"] == "small_cnn"
    assert (version / "checkpoints" / "last.ckpt").is_file()  # checkpoints live in the run's version folder
    ckpt = torch.load(version / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["hyper_parameters"]["num_classes"] == 10
    assert tuple(ckpt["hyper_parameters"]["input_shape"]) == (1, 16, 16)
    assert ckpt["epoch"] == 0


def test_resume_from_last_checkpoint_continues_training(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _fit(["--trainer.max_epochs", "1", "--test_after_fit", "false"])
    last = tmp_path / "runs" / "standard_digits" / "version_0" / "checkpoints" / "last.ckpt"
    first = torch.load(last, map_location="cpu", weights_only=False)
    _fit(["--trainer.max_epochs", "2", "--ckpt_path", "last", "--test_after_fit", "false"])
    second = torch.load(last, map_location="cpu", weights_only=False)
    assert first["epoch"] == 0 and second["epoch"] == 1
    assert second["global_step"] == 2 * first["global_step"]
    # the resumed run kept the optimizer state: the first run's Adam step count carried over
    step_first = next(iter(first["optimizer_states"][0]["state"].values()))["step"]
    step_second = next(iter(second["optimizer_states"][0]["state"].values()))["step"]
    assert float(step_second) == 2 * float(step_first)
    # the resumed run logged into the same TensorBoard run (version_0), its steps after the first run's
    assert not (tmp_path / "runs" / "standard_digits" / "version_1").exists()
    steps = sorted(
        step for step, _ in read_scalars(tmp_path / "runs" / "standard_digits" / "version_0")["train/loss_step"]
    )
    assert steps == sorted(set(steps)) and steps[-1] == second["global_step"] - 1
    assert sum(step >= first["global_step"] for step in steps) == first["global_step"]


def test_module_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "lit_advgame", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for sub in ("fit", "validate", "test", "predict"):
        assert sub in out.stdout


def test_fit_with_ddp_on_two_cpu_processes(tmp_path):
    """DDP (gloo, 2 CPU processes) through the CLI: both ranks train, rank 0 writes logs and checkpoints."""
    cmd = [
        sys.executable,
        "-m",
        "lit_advgame",
        "fit",
        "--config",
        str(CONFIGS / "standard_digits.yaml"),
        *FAST,
        "--trainer.max_epochs",
        "1",
        *DDP_CPU_ARGS,
    ]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "world_size: 2" in (out.stdout + out.stderr) or "GLOBAL_RANK: 1" in (out.stdout + out.stderr)
    ckpt = torch.load(
        tmp_path / "runs/standard_digits/version_0/checkpoints/last.ckpt", map_location="cpu", weights_only=False
    )
    assert ckpt["epoch"] == 0 and ckpt["global_step"] == 5
    scalars = read_scalars(tmp_path / "runs/standard_digits/version_0")
    assert "val/acc" in scalars and "test/acc" in scalars


FRAGMENTS = {"callbacks_digits.yaml", "robustness_digits.yaml"}  # extra --config files, not complete configs


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml") if p.name not in FRAGMENTS))
def test_every_config_parses(name, capsys):
    subcommand = "predict" if name.startswith(("attack_", "analysis_", "attributions_", "defenses_")) else "fit"
    with pytest.raises(SystemExit) as exc:
        main([subcommand, "--config", str(CONFIGS / name), "--print_config"])
    assert exc.value.code == 0
    assert yaml.safe_load(capsys.readouterr().out)["model"]["class_path"].startswith("lit_advgame.")


def test_mnist_config_runs_on_the_shared_test_set(tmp_path, monkeypatch, repo_root):
    data = repo_root.parent / "shared" / "data" / "mnist-t10k"
    if not data.is_dir():
        pytest.skip("../shared/data/mnist-t10k not present")
    monkeypatch.chdir(tmp_path)
    main(
        [
            "fit",
            "--config",
            str(CONFIGS / "standard_mnist.yaml"),
            *FAST,
            "--trainer.max_epochs",
            "1",
            "--data.init_args.data_dir",
            str(data),
        ]
    )
    scalars = read_scalars(tmp_path / "runs/standard_mnist/version_0")
    assert "val/acc" in scalars and "test/acc" in scalars


def test_cifar_config_without_data_fails_clearly(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["fit", "--config", str(CONFIGS / "standard_cifar10.yaml"), *FAST, "--trainer.max_epochs", "1"]
    with pytest.raises(FileNotFoundError, match="cifar"):
        build_cli(args)
    # the command line reports it as one `error:` line, exit status 2, no traceback
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and any(
        line.startswith("error:") and "cifar" in line.lower() for line in err.splitlines()
    )


def test_num_threads_option_sets_torch_threads():
    before = torch.get_num_threads()
    try:
        cli = build_cli(["--num_threads", "1", "--config", str(CONFIGS / "standard_digits.yaml")], run=False)
        assert torch.get_num_threads() == 1
        assert cli.config["num_threads"] == 1
        with pytest.raises(ValueError, match="num_threads"):
            build_cli(["--num_threads", "0", "--config", str(CONFIGS / "standard_digits.yaml")], run=False)
    finally:
        torch.set_num_threads(before)


def test_test_after_fit_tests_the_best_monitored_checkpoint_without_warning(tmp_path, monkeypatch, recwarn):
    """The configs have two ModelCheckpoints (best by val/acc, and last.ckpt every epoch): `test_after_fit` tests
    the monitored one's best checkpoint, by path, without Lightning's 'multiple ModelCheckpoint' warning."""
    import pytorch_lightning as pl

    monkeypatch.chdir(tmp_path)
    tested = []
    original = pl.Trainer.test

    def spy(self, *args, **kwargs):
        tested.append(kwargs.get("ckpt_path"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pl.Trainer, "test", spy)
    _fit(["--trainer.max_epochs", "2", "--test_after_fit", "true"])
    best = list((tmp_path / "runs" / "standard_digits" / "version_0" / "checkpoints").glob("epoch*-val_acc*.ckpt"))
    assert len(best) == 1 and [Path(t).resolve() for t in tested] == [best[0].resolve()]
    assert not [w for w in recwarn if "multiple `ModelCheckpoint`" in str(w.message)]


def test_an_integer_batch_limit_is_a_number_of_batches(capsys):
    """`--trainer.limit_train_batches 1` is one batch (an int, as Lightning means it), not 1.0 = every batch;
    a float with a decimal point stays a fraction."""
    with pytest.raises(SystemExit):
        main(
            [
                "fit",
                "--config",
                str(CONFIGS / "standard_digits.yaml"),
                "--trainer.limit_train_batches",
                "1",
                "--trainer.limit_val_batches",
                "1.0",
                "--trainer.limit_test_batches",
                "0.5",
                "--print_config",
            ]
        )
    trainer = yaml.safe_load(capsys.readouterr().out)["trainer"]
    assert trainer["limit_train_batches"] == 1 and isinstance(trainer["limit_train_batches"], int)
    assert isinstance(trainer["limit_val_batches"], float) and trainer["limit_test_batches"] == 0.5
    cli = build_cli(
        [
            "--config",
            str(CONFIGS / "standard_digits.yaml"),
            "--trainer.limit_train_batches",
            "1",
            "--trainer.enable_progress_bar",
            "false",
        ],
        run=False,
    )
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.num_training_batches == 1


def test_an_error_while_building_the_model_is_one_line(tmp_path, monkeypatch, capsys):
    """An error raised while jsonargparse instantiates the model (here an unknown architecture) is reported as
    our message alone: no 'Does not validate against any of the Union subtypes' wrapper, no value dump."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(CONFIGS / "standard_digits.yaml"), "--model.init_args.arch", "nonexistent"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: unknown model name 'nonexistent'"), err


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["fit", "--config", "standard_digits.yaml", "--trainer.max_epochs", "x"],
            "error: trainer.max_epochs: expected int or null; got 'x'",
        ),
        (
            [
                "fit",
                "--config",
                "penalty_digits.yaml",
                "--trainer.callbacks+=lit_advgame.callbacks.InteractionStrengthCallback",
                "--trainer.callbacks.probe_size=-3",
            ],
            "error: probe_size must be >= 1; got -3",
        ),
        (
            ["predict", "--config", "defenses_digits.yaml", "--model.init_args.dropout.rates", "[1.5]"],
            "error: dropout.rates (the dropout rate α) must lie in [0, 1); got 1.5",
        ),
    ],
    ids=["parse-type", "callback-argument", "nested-settings"],
)
def test_bad_values_in_unions_and_subclasses_are_one_line(args, expected, capsys, monkeypatch):
    # jsonargparse's report lists every union alternative, the given value and the accepted subclass forms
    # (and, at parse time, the usage); the CLI prints only the error that names the argument
    monkeypatch.chdir(REPO_ROOT)
    args = [str(CONFIGS / a) if a.endswith(".yaml") else a for a in args]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err == [expected]
