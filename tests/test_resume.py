"""Resuming and checkpoints: `fit --ckpt_path last`, run folders, LR schedules that follow max_epochs,
callback state across a resume, checkpoint hyper-parameter conflicts and where configs are saved."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml

from lit_advgame.callbacks.base import ProbeCallback
from lit_advgame.cli import build_cli, main
from tests.conftest import CONFIGS, REPO_ROOT
from tests.tb_utils import read_scalars

RUN = [
    "--trainer.limit_train_batches",
    "2",
    "--trainer.limit_val_batches",
    "1.0",  # every validation batch (a float is a fraction; an int would be a number of batches)
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.log_every_n_steps",
    "1",
    "--test_after_fit",
    "false",
    "--data.init_args.batch_size",
    "16",
    "--model.init_args.arch_kwargs",
    "{width: 4}",
]
# lr 0.05 makes val/acc jump around: on this tiny run it does not improve at every epoch (checked below)
NOISY_LR = ["--model.init_args.optimizer.init_args.lr", "0.05"]
PROBE = ["--trainer.callbacks+=tests.test_resume.MeanLogitProbe", "--trainer.callbacks.probe_size=8"]


class SimulatedCrash(Exception):
    """Raised by :class:`CrashAt` to stop a run like a killed process would."""


class CrashAt(pl.Callback):
    """Raise :class:`SimulatedCrash` at training batch ``batch`` of epoch ``epoch`` (the run dies mid-epoch)."""

    def __init__(self, epoch: int, batch: int = 1) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            raise SimulatedCrash(f"crash at epoch {self.epoch}, batch {self.batch}")


class MeanLogitProbe(ProbeCallback):
    """A cheap validation callback: the mean true-class logit on the probe set."""

    def __init__(self, probe_size: int = 8, every_n_epochs: int = 1) -> None:
        super().__init__(probe_size=probe_size, every_n_epochs=every_n_epochs, prefix="probe")

    def compute(self, model, x, y, epoch):
        logits = model(x)
        return {"probe/true_logit": float(logits.gather(1, y[:, None]).mean())}, {}


def _fit(config: str, *args: str) -> None:
    build_cli(["fit", "--config", str(CONFIGS / config), *RUN, *args])


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _error_lines(err: str) -> list[str]:
    """The ``error:`` lines of stderr (LightningCLI warns about pytest's own sys.argv in-process)."""
    return [line for line in err.splitlines() if line.startswith("error:")]


def _tensorboard_run(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    """``tag``'s points as TensorBoard shows the run folder (all event files read in order, purges applied)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def _epoch_values(scalars: dict, tag: str) -> list[float]:
    return [value for _, value in sorted(scalars[tag])]


def test_interrupted_and_resumed_fit_equals_an_uninterrupted_one(tmp_path, monkeypatch):
    """A run killed in epoch 2 and resumed with `--ckpt_path last` ends with the weights, metrics and callback
    history of an uninterrupted run, although val/acc does not improve at every epoch (so the last *best*
    checkpoint is older than the last finished epoch), and logs into the same TensorBoard run."""
    epochs = ["--trainer.max_epochs", "4"]
    (tmp_path / "full").mkdir()
    (tmp_path / "crashed").mkdir()
    monkeypatch.chdir(tmp_path / "full")
    _fit("standard_digits.yaml", *epochs, *NOISY_LR, *PROBE)
    full = tmp_path / "full/runs/standard_digits/version_0"
    full_scalars = read_scalars(full)
    val_acc = _epoch_values(full_scalars, "val/acc")
    assert len(val_acc) == 4
    assert val_acc[1] <= val_acc[0], f"the test needs a run whose val/acc does not improve at epoch 1: {val_acc}"

    monkeypatch.chdir(tmp_path / "crashed")
    with pytest.raises(SimulatedCrash):
        _fit(
            "standard_digits.yaml",
            *epochs,
            *NOISY_LR,
            *PROBE,
            "--trainer.callbacks+=tests.test_resume.CrashAt",
            "--trainer.callbacks.epoch=2",
        )
    run = tmp_path / "crashed/runs/standard_digits/version_0"
    assert torch.load(run / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)["epoch"] == 1
    cli = build_cli(
        [
            "fit",
            "--config",
            str(CONFIGS / "standard_digits.yaml"),
            *RUN,
            *epochs,
            *NOISY_LR,
            *PROBE,
            "--ckpt_path",
            "last",
        ]
    )
    assert sorted(p.name for p in run.parent.iterdir()) == ["version_0"]  # resumed in place, no version_1
    for name, tensor in _weights(full / "checkpoints/last.ckpt").items():
        torch.testing.assert_close(_weights(run / "checkpoints/last.ckpt")[name], tensor, rtol=0, atol=0, msg=name)
    scalars = read_scalars(run)
    for tag in ("val/acc", "val/loss", "train/acc", "probe/true_logit"):
        steps = [step for step, _ in scalars[tag]]
        assert len(steps) == len(set(steps)) == 4, f"{tag}: {sorted(scalars[tag])}"  # every epoch once
        assert _epoch_values(scalars, tag) == pytest.approx(_epoch_values(full_scalars, tag), abs=1e-6), tag
    # step-level points of the crashed epoch are hidden (purge_step): TensorBoard shows each step once
    shown, expected = _tensorboard_run(run, "train/loss_step"), _tensorboard_run(full, "train/loss_step")
    assert [step for step, _ in shown] == [step for step, _ in expected] == list(range(8))
    assert [value for _, value in shown] == pytest.approx([value for _, value in expected], abs=1e-6)
    probe = next(cb for cb in cli.trainer.callbacks if isinstance(cb, MeanLogitProbe))
    assert [epoch for epoch, _ in probe.history] == [0, 1, 2, 3]  # the first part's epochs came from the checkpoint


def test_a_second_run_gets_its_own_folder_and_last_resolves_to_the_newest(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _fit("standard_digits.yaml", "--trainer.max_epochs", "1")
    _fit("standard_digits.yaml", "--trainer.max_epochs", "2")
    root = tmp_path / "runs/standard_digits"
    for version, epoch in (("version_0", 0), ("version_1", 1)):
        assert sorted(p.name for p in (root / version / "checkpoints").glob("last*.ckpt")) == ["last.ckpt"]
        assert torch.load(root / version / "checkpoints/last.ckpt", weights_only=True)["epoch"] == epoch
    assert not (root / "checkpoints").exists()
    cli = build_cli(
        [
            "fit",
            "--config",
            str(CONFIGS / "standard_digits.yaml"),
            *RUN,
            "--trainer.max_epochs",
            "3",
            "--ckpt_path",
            "last",
        ]
    )
    assert cli.config.fit.ckpt_path == str(Path("runs/standard_digits/version_1/checkpoints/last.ckpt"))
    assert torch.load(root / "version_1/checkpoints/last.ckpt", weights_only=True)["epoch"] == 2
    assert sorted(p.name for p in root.iterdir()) == ["version_0", "version_1"]


def test_without_a_logger_runs_are_versioned_under_default_root_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text("mine: true\n")
    no_logger = [
        "--trainer.logger",
        "false",
        "--trainer.callbacks",
        "[]",
        "--trainer.callbacks+=ModelCheckpoint",
        "--trainer.callbacks.filename=last",
        "--trainer.callbacks.enable_version_counter=false",
    ]
    _fit("standard_digits.yaml", "--trainer.max_epochs", "1", *no_logger)
    _fit("standard_digits.yaml", "--trainer.max_epochs", "2", *no_logger, "--ckpt_path", "last")
    assert (tmp_path / "config.yaml").read_text() == "mine: true\n"  # never overwritten
    assert sorted(p.name for p in tmp_path.glob("version_*")) == ["version_0"]
    assert torch.load(tmp_path / "version_0/checkpoints/last.ckpt", weights_only=True)["epoch"] == 1
    assert yaml.safe_load((tmp_path / "version_0/config.yaml").read_text())["trainer"]["max_epochs"] == 2


def test_fit_ckpt_path_last_without_a_run_starts_a_new_one_and_test_fails(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["test", "--config", str(CONFIGS / "standard_digits.yaml"), "--ckpt_path", "last"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "error: --ckpt_path last: no checkpoint found" in err and "runs/standard_digits/version_<N>" in err
    with pytest.warns(UserWarning, match="no checkpoint found"):
        _fit("standard_digits.yaml", "--trainer.max_epochs", "1", "--ckpt_path", "last")
    assert (tmp_path / "runs/standard_digits/version_0/checkpoints/last.ckpt").is_file()


def test_cosine_schedule_follows_max_epochs(tmp_path, monkeypatch):
    """configs/quickstart.yaml's schedule anneals over --trainer.max_epochs (no restart at the config's 8)."""
    monkeypatch.chdir(tmp_path)
    cli = build_cli(["--config", str(CONFIGS / "quickstart.yaml"), "--trainer.max_epochs", "30"], run=False)
    trainer = pl.Trainer(max_epochs=30, logger=False, enable_checkpointing=False)
    cli.model.trainer = trainer
    scheduler = cli.model.configure_optimizers()["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(30):
        lrs.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    assert scheduler.T_max == 30
    assert lrs[0] == pytest.approx(0.003)
    assert all(b < a for a, b in zip(lrs, lrs[1:])), lrs  # decreasing all the way: no restart at epoch 8
    assert lrs[15] == pytest.approx(0.0015)


def test_cosine_schedule_of_a_resumed_longer_run_anneals_to_the_new_end():
    from lit_advgame.training import CosineAnnealingLR

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    first = CosineAnnealingLR(opt)
    first.set_run_length(4)
    for _ in range(2):
        opt.step()
        first.step()
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    second = CosineAnnealingLR(opt2)
    second.set_run_length(8)
    second.load_state_dict(first.state_dict())
    assert second.T_max == 8 and second.last_epoch == 2
    opt2.step()
    second.step()
    assert second.get_last_lr()[0] == pytest.approx(0.5 * (1 + torch.cos(torch.tensor(3 / 8 * torch.pi)).item()))
    fixed = CosineAnnealingLR(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), T_max=5)
    fixed.set_run_length(50)
    assert fixed.T_max == 5
    with pytest.raises(ValueError, match="T_max"):
        CosineAnnealingLR(opt, T_max=0)


# --------------------------------------------------------------------------- checkpoints and arguments
@pytest.fixture(scope="module")
def digits_ckpt(tmp_path_factory) -> Path:
    """last.ckpt of a one-epoch standard_digits run (small_cnn, 10 classes)."""
    root = tmp_path_factory.mktemp("ckpt_run")
    build_cli(
        [
            "fit",
            "--config",
            str(CONFIGS / "standard_digits.yaml"),
            *RUN,
            "--trainer.max_epochs",
            "1",
            "--trainer.logger.init_args.save_dir",
            str(root / "runs"),
        ]
    )
    (last,) = (root / "runs").rglob("last.ckpt")
    return last


def _test_args(ckpt: Path, *args: str) -> list[str]:
    return [
        "test",
        "--config",
        str(CONFIGS / "standard_digits.yaml"),
        "--ckpt_path",
        str(ckpt),
        "--model.init_args.arch_kwargs",
        "{width: 4}",
        "--trainer.limit_test_batches",
        "1",
        "--trainer.enable_progress_bar",
        "false",
        *args,
    ]


def test_explicit_model_arguments_that_differ_from_the_checkpoint_are_an_error(
    digits_ckpt, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(_test_args(digits_ckpt, "--model.init_args.arch", "lenet", "--model.init_args.arch_kwargs", "null"))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = _error_lines(err)
    assert line.startswith(f"error: --ckpt_path {digits_ckpt}: the checkpoint was trained with other model arguments")
    assert "arch: checkpoint 'small_cnn', this run 'lenet'" in line  # each conflict is listed
    assert "arch_kwargs: checkpoint {'width': 4}, this run None" in line
    main(_test_args(digits_ckpt))  # the same arguments as the checkpoint: fine
    assert "test/acc" in read_scalars(tmp_path / "runs/standard_digits/version_0")


def test_class_count_mismatch_with_a_checkpoint_names_num_classes(digits_ckpt, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ckpt = torch.load(digits_ckpt, map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["num_classes"] = 3
    torch.save(ckpt, tmp_path / "three.ckpt")
    with pytest.raises(SystemExit) as exc:
        main(_test_args(tmp_path / "three.ckpt"))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "num_classes: checkpoint 3, this run 10 (linked from the data module)" in err


def test_class_count_mismatch_with_a_weights_file_names_num_classes(tmp_path, monkeypatch, capsys):
    from lit_advgame.models import build_model

    monkeypatch.chdir(tmp_path)
    net = build_model("small_cnn", num_classes=3, in_channels=1, input_size=(16, 16), width=4)
    torch.save(net.state_dict(), tmp_path / "three.pt")
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "fit",
                "--config",
                str(CONFIGS / "standard_digits.yaml"),
                *RUN,
                "--model.init_args.weights",
                str(tmp_path / "three.pt"),
            ]
        )
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "num_classes=10" in err and "3 classes" in err and "Traceback" not in err


def test_truncated_checkpoint_is_one_clear_line(digits_ckpt, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(digits_ckpt.read_bytes()[:2000])
    with pytest.raises(SystemExit) as exc:
        main(_test_args(broken))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = _error_lines(err)
    assert line.startswith(f"error: --ckpt_path {broken}: truncated or corrupt checkpoint file"), line


def test_debug_flag_shows_the_exception(digits_ckpt, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LIT_ADVGAME_DEBUG", "1")
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="truncated or corrupt"):
        main(_test_args(broken))


def test_yaml_syntax_error_names_the_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  max_epochs: 3\n  callbacks: [a, b\nmodel: {}\n")
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(bad)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"--config {bad}, line 4" in err and "YAML syntax error" in err


ATTACK_SOURCE = REPO_ROOT / "checkpoints" / "digits_small_cnn.pt"


@pytest.mark.skipif(not ATTACK_SOURCE.is_file(), reason="checkpoints/ not built (scripts/make_checkpoints.sh)")
def test_predict_runs_into_other_folders_keep_their_own_config(tmp_path, monkeypatch):
    """configs/attack_quickstart.yaml (logger false, an AdversarialWriter): each run's config goes into its
    writer's output folder; the config.yaml of the current directory and of the other run are left alone."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text("mine: true\n")
    cfg = yaml.safe_load((CONFIGS / "attack_quickstart.yaml").read_text())
    cfg["model"]["init_args"].update(
        source=str(ATTACK_SOURCE),
        score_models=None,
        attack="pgd",
        record="none",
        overrides={"steps": 1, "eps": "8/255", "step_size": "8/255"},
    )
    cfg["data"]["init_args"].update(batch_size=4)
    for name, limit in (("a", 4), ("b", 8)):
        cfg["trainer"]["callbacks"][0]["init_args"]["output_dir"] = str(tmp_path / name)
        cfg["data"]["init_args"]["predict_limit"] = limit
        config = tmp_path / f"attack_{name}.yaml"
        config.write_text(yaml.safe_dump(cfg))
        main(["predict", "--config", str(config)])
    assert (tmp_path / "config.yaml").read_text() == "mine: true\n"
    for name, limit in (("a", 4), ("b", 8)):
        saved = yaml.safe_load((tmp_path / name / "config.yaml").read_text())
        assert saved["data"]["init_args"]["predict_limit"] == limit


# --------------------------------------------------------------------------- randomized smoothing's certify_sigma
CERTIFY_TINY = [
    "--model.init_args.n0",
    "4",
    "--model.init_args.n",
    "16",
    "--model.init_args.certify_limit",
    "2",
    "--model.init_args.certify_batch_size",
    "64",
    "--trainer.limit_test_batches",
    "1",
]


def test_smoothing_certifies_at_certify_sigma_and_refuses_a_silent_sigma_swap(tmp_path, monkeypatch, capsys):
    """`--model.init_args.sigma 0.5` on a σ=0.25 checkpoint is an error pointing to certify_sigma (it used to
    certify at 0.25 silently); `--model.init_args.certify_sigma 0.5` certifies at 0.5."""
    from lit_advgame.training import RandomizedSmoothing

    model = RandomizedSmoothing(arch="mlp", sigma=0.25, certify_sigma=0.5)
    assert model.sigma == 0.25 and model.smoothed_classifier().sigma == 0.5
    assert "certify_sigma" not in model.hparams and RandomizedSmoothing(sigma=0.25).smoothed_classifier().sigma == 0.25
    with pytest.raises(ValueError, match="certify_sigma"):
        RandomizedSmoothing(certify_sigma=-1.0)

    monkeypatch.chdir(tmp_path)
    config = ["--config", str(CONFIGS / "smoothing_digits.yaml")]
    build_cli(["fit", *config, *RUN, "--trainer.max_epochs", "1"])
    test = [
        "test",
        *config,
        "--ckpt_path",
        "last",
        "--model.init_args.arch_kwargs",
        "{width: 4}",
        "--trainer.enable_progress_bar",
        "false",
        *CERTIFY_TINY,
    ]
    with pytest.raises(SystemExit) as exc:
        main([*test, "--model.init_args.sigma", "0.5"])
    assert exc.value.code == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert "sigma: checkpoint 0.25, this run 0.5" in line and "certify_sigma" in line
    main([*test, "--model.init_args.certify_sigma", "0.5"])
    scalars = read_scalars(tmp_path / "runs/smoothing_digits/version_1")
    assert scalars["test/certify_sigma"][0][1] == pytest.approx(0.5)


# --------------------------------------------------------------------------- state of callbacks and data
def test_probe_callback_state_round_trips():
    probe = MeanLogitProbe(probe_size=4)
    probe.history = [(0, {"probe/true_logit": 1.0}), (1, {"probe/true_logit": 2.0})]
    probe.last_metrics = {"probe/true_logit": 2.0}
    probe._last_fit_epoch = 1
    restored = MeanLogitProbe(probe_size=4)
    restored.load_state_dict(probe.state_dict())
    assert restored.history == probe.history and restored.last_metrics == probe.last_metrics
    assert restored._last_fit_epoch == 1
    assert MeanLogitProbe(probe_size=4).state_key != MeanLogitProbe(probe_size=8).state_key


def test_data_module_shuffle_continues_from_its_state():
    from lit_advgame.data import DigitsDataModule

    def batches(dm, epochs):
        loader = dm.train_dataloader()
        return [next(iter(loader))[1].tolist() for _ in range(epochs)]

    full = DigitsDataModule(batch_size=8)
    full.setup("fit")
    uninterrupted = batches(full, 3)
    first = DigitsDataModule(batch_size=8)
    first.setup("fit")
    assert batches(first, 1) == uninterrupted[:1]
    state = first.state_dict()
    resumed = DigitsDataModule(batch_size=8)
    resumed.setup("fit")
    resumed.load_state_dict(state)
    assert batches(resumed, 2) == uninterrupted[1:]


# --------------------------------------------------------------------------- help
def test_help_describes_run_folders_resume_and_errors():
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "lit_advgame", "fit", "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    for phrase in ("--ckpt_path last", "version_<N>", "never a silent swap", "LIT_ADVGAME_DEBUG=1", "status 2"):
        assert phrase in text, phrase


def test_transfer_evaluation_entry_point_reports_user_errors_in_one_line(monkeypatch, capsys):
    import lit_advgame.evaluation.cli as evaluation_cli

    def missing_key(*args, **kwargs):
        raise KeyError("target 't1' has no 'state_dict' entry")

    monkeypatch.setattr(evaluation_cli, "evaluate_transfer", missing_key)
    argv = ["run", "--targets", "t1.pt", "--output", "out"]
    assert evaluation_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err == "error: target 't1' has no 'state_dict' entry\n"
    monkeypatch.setenv("LIT_ADVGAME_DEBUG", "1")
    with pytest.raises(KeyError, match="state_dict"):
        evaluation_cli.main(argv)


def test_ckpt_path_last_with_a_named_version_resumes_that_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    named = ["--trainer.logger.init_args.version", "exp"]
    _fit("standard_digits.yaml", "--trainer.max_epochs", "1", *named)
    _fit("standard_digits.yaml", "--trainer.max_epochs", "2")  # a newer, unnamed run: version_0
    cli = build_cli(
        [
            "fit",
            "--config",
            str(CONFIGS / "standard_digits.yaml"),
            *RUN,
            "--trainer.max_epochs",
            "2",
            *named,
            "--ckpt_path",
            "last",
        ]
    )
    assert cli.config.fit.ckpt_path == str(Path("runs/standard_digits/exp/checkpoints/last.ckpt"))
    assert torch.load(tmp_path / "runs/standard_digits/exp/checkpoints/last.ckpt", weights_only=True)["epoch"] == 1
    assert sorted(p.name for p in (tmp_path / "runs/standard_digits").iterdir()) == ["exp", "version_0"]
