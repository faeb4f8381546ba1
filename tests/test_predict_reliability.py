"""Predict outputs that are whole and unambiguous (issue 8): the output-folder lock, the completeness
check, extending a run bit for bit, clear messages for corrupt shards / meta.json / checkpoints, the
normalization check, empty predict data, the low white-box success warning, file permissions."""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from lit_advgame.cli import build_cli, main
from lit_advgame.data import DigitsDataModule
from lit_advgame.predict import (
    AdversarialWriter,
    AttackModule,
    OutputLock,
    OutputLockedError,
    list_shards,
    load_adversarial,
    write_shard,
)
from lit_advgame.predict.lock import LOCK_NAME
from tests.conftest import predict_into
from tests.test_predict import SOURCE, TINY_ATTACK, assert_same_records, needs_checkpoints, write_config

pytestmark = pytest.mark.usefixtures("one_thread")  # one intra-op thread (tests/conftest.py)


def run_predict(
    out: Path,
    predict_limit: int,
    batch_size: int = 8,
    attack: str = "pgd+ir",
    callbacks=(),
    writer_args: dict | None = None,
    progress_bar: bool = False,
    **module_args,
) -> AdversarialWriter:
    """One predict run of the digits small CNN (tiny attack) into ``out``; returns its writer."""
    module_args = {"overrides": dict(TINY_ATTACK), "seed": 0, **module_args}
    data = DigitsDataModule(predict_limit=predict_limit, batch_size=batch_size)
    module = AttackModule(
        str(SOURCE), attack, input_shape=(1, 16, 16), num_classes=10, mean=data.mean, std=data.std, **module_args
    )
    writer = AdversarialWriter(str(out), **(writer_args or {}))
    return predict_into(module, data, writer, callbacks=callbacks, progress_bar=progress_bar)


def dead_pid() -> int:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    return int(proc.stdout)


# ----------------------------------------------------------------------------- the lock
def test_lock_refuses_a_second_holder_takes_over_dead_runs_and_reports_other_hosts(tmp_path):
    first = OutputLock(tmp_path)
    assert first.acquire() is None and first.held
    holder = json.loads((tmp_path / LOCK_NAME).read_text())
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    with pytest.raises(OutputLockedError, match=rf"locked by another predict run \(pid {os.getpid()} on host"):
        OutputLock(tmp_path).acquire()
    first.release()
    first.release()  # idempotent
    assert not (tmp_path / LOCK_NAME).exists()

    # a lock file left behind by a killed run on this host: taken over, with a warning naming it
    pid = dead_pid()
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": 0}))
    stale = OutputLock(tmp_path)
    warning = stale.acquire()
    assert warning is not None and f"pid {pid}" in warning and "took over the stale lock" in warning
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    stale.release()

    # ... by a run on another host: this host cannot tell whether it is alive: refused, with what to do
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere.example", "started": 0}))
    with pytest.raises(OutputLockedError, match=r"another host.*'elsewhere.example'.*delete .*\.lock"):
        OutputLock(tmp_path).acquire()


@needs_checkpoints
def test_a_second_run_into_a_locked_folder_is_refused_and_the_lock_is_released_at_the_end(tmp_path):
    out = tmp_path / "run"
    running = OutputLock(out)  # a concurrent run holding the folder
    running.acquire()
    with pytest.raises(RuntimeError, match="locked by another predict run"):
        run_predict(out, 8, attack="mi", overrides={"steps": 1})
    assert not (out / "meta.json").exists() and not list_shards(out)  # the folder was not touched
    running.release()
    run_predict(out, 8, attack="mi", overrides={"steps": 1})
    assert not (out / LOCK_NAME).exists()  # released when the run ended
    assert load_adversarial(out).index.tolist() == list(range(8))


@needs_checkpoints
def test_a_failed_run_releases_the_lock(tmp_path):
    class Crash(pl.Callback):
        def on_predict_batch_end(self, *args, **kwargs):
            raise RuntimeError("simulated crash")

    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_predict(out, 8, attack="mi", overrides={"steps": 1}, callbacks=[Crash()])
    assert not (out / LOCK_NAME).exists()
    OutputLock(out).acquire()  # free


# ----------------------------------------------------------------------------- extending a run
@needs_checkpoints
def test_extending_a_run_equals_a_one_shot_run_bit_for_bit(tmp_path, caplog):
    """40 -> 64 examples with batch size 32: the cut-short batch 32-39 is re-attacked as the whole batch 32-63."""
    extended, one_shot = tmp_path / "extended", tmp_path / "one_shot"
    run_predict(extended, 40, batch_size=32)
    assert load_adversarial(extended).index.tolist() == list(range(40))
    with caplog.at_level("WARNING", logger="lit_advgame.predict.attack_module"):
        writer = run_predict(extended, 64, batch_size=32)
    assert writer.shards_written == 1  # batch 0-31 was finished; batch 32-63 attacked whole
    assert "indices 32-39" in caplog.text and "whole batch 32-63" in caplog.text
    run_predict(one_shot, 64, batch_size=32)
    a, b = load_adversarial(extended), load_adversarial(one_shot)
    assert a.index.tolist() == list(range(64))
    assert torch.equal(a.x_adv, b.x_adv)
    assert_same_records(a, b)
    # shrinking back is a no-op: the folder holds the longer run
    assert run_predict(extended, 40, batch_size=32).shards_written == 0
    assert_same_records(load_adversarial(extended), b)


@needs_checkpoints
def test_extending_an_unmerged_run_replaces_the_cut_short_shard(tmp_path):
    out = tmp_path / "run"
    run_predict(out, 12, writer_args={"merge": False}, attack="mi", overrides={"steps": 1})
    assert [p.name for p in list_shards(out)] == ["shard_000000000_000000007.pt", "shard_000000008_000000011.pt"]
    run_predict(out, 16, writer_args={"merge": False}, attack="mi", overrides={"steps": 1})
    assert [p.name for p in list_shards(out)] == ["shard_000000000_000000007.pt", "shard_000000008_000000015.pt"]


# ----------------------------------------------------------------------------- completeness and corrupt files
@needs_checkpoints
def test_an_incomplete_run_fails_listing_the_missing_indices(tmp_path):
    class LoseShard(pl.Callback):  # a shard vanishes during the run (deleted, written elsewhere ...)
        def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            if batch_idx == 1:
                for path in list_shards(out):
                    if path.name.startswith("shard_000000008_"):
                        path.unlink()

    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match=r"incomplete: 8 of the 24 dataset indices.*: 8-15\. .*Rerun"):
        run_predict(out, 24, attack="mi", overrides={"steps": 1}, callbacks=[LoseShard()])
    assert not (out / "adversarial.pt").exists() and not (out / "summary.json").exists()
    writer = run_predict(out, 24, attack="mi", overrides={"steps": 1})  # the rerun resumes
    assert writer.shards_written == 1 and load_adversarial(out).index.tolist() == list(range(24))


@needs_checkpoints
def test_truncated_or_misnamed_shards_and_meta_get_a_message_naming_the_file(tmp_path):
    out = tmp_path / "run"
    run_predict(out, 16, writer_args={"merge": False}, attack="mi", overrides={"steps": 1})
    shard = out / "shard_000000008_000000015.pt"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"shard_000000008_000000015\.pt.*truncated.*delete it and rerun"):
        run_predict(out, 16, attack="mi", overrides={"steps": 1})
    assert not (out / LOCK_NAME).exists()
    shard.unlink()  # as the message says: the rerun resumes and completes
    assert run_predict(out, 16, attack="mi", overrides={"steps": 1}).shards_written == 1
    assert load_adversarial(out).index.tolist() == list(range(16))

    misnamed = tmp_path / "misnamed"
    misnamed.mkdir()
    path = write_shard(
        misnamed,
        {
            "index": torch.arange(4),
            "label": torch.zeros(4, dtype=torch.long),
            "x": torch.zeros(4, 1, 2, 2),
            "x_adv": torch.zeros(4, 1, 2, 2),
        },
    )
    path.rename(misnamed / "shard_000000004_000000007.pt")
    with pytest.raises(
        ValueError,
        match=r"shard_000000004_000000007\.pt' is named for dataset indices 4\.\.7 but "
        r"holds 0\.\.3.*delete it",
    ):
        load_adversarial(misnamed)

    meta = out / "meta.json"
    meta.write_text(meta.read_text()[:50])
    with pytest.raises(ValueError, match=r"meta\.json.*truncated or corrupt.*delete it and rerun") as info:
        run_predict(out, 16, attack="mi", overrides={"steps": 1})
    assert not isinstance(info.value, json.JSONDecodeError)


# ----------------------------------------------------------------------------- checks of the module's input
@needs_checkpoints
def test_data_normalization_that_differs_from_the_checkpoint_is_an_error(tmp_path):
    data = DigitsDataModule()  # the checkpoint's training data: the file stores its mean/std
    (mean,), (std,) = data.mean, data.std
    source_mean = rf"source model 'digits_small_cnn'.*mean=\[{re.escape(str(mean))}\].*data's mean is \[0\.5\]"
    with pytest.raises(ValueError, match=source_mean):
        AttackModule(str(SOURCE), "pgd", mean=[0.5], std=[std])
    with pytest.raises(ValueError, match=rf"std=\[{re.escape(str(std))}\].*data's std is \[0\.25\]"):
        AttackModule(str(SOURCE), "pgd", mean=[mean], std=[0.25])
    AttackModule(str(SOURCE), "pgd", mean=data.mean, std=data.std)  # the digits data's own: fine


@needs_checkpoints
def test_empty_predict_data_gets_a_clear_message(tmp_path):
    module = AttackModule(str(SOURCE), "mi", overrides={"steps": 1})
    empty = DataLoader(TensorDataset(torch.zeros(0, 1, 16, 16), torch.zeros(0, dtype=torch.long)), batch_size=4)
    trainer = pl.Trainer(
        accelerator="cpu",
        inference_mode=False,
        logger=False,
        enable_progress_bar=False,
        callbacks=[AdversarialWriter(str(tmp_path / "run"))],
    )
    with pytest.raises(ValueError, match="served no batch.*predict split is empty"):
        trainer.predict(module, dataloaders=empty, return_predictions=False)
    assert not (tmp_path / "run" / LOCK_NAME).exists()
    with pytest.raises(ValueError, match="empty batch"):
        module.attack_batch(torch.zeros(0, 1, 16, 16), torch.zeros(0, dtype=torch.long), [])
    with pytest.raises(ValueError, match="predict_limit must be >= 1; got 0"):
        DigitsDataModule(predict_limit=0)


@needs_checkpoints
def test_low_whitebox_success_warns_with_the_measured_figures(tmp_path):
    weak = {**TINY_ATTACK, "steps": 1, "eps": "1/255", "step_size": "1/255"}
    with pytest.warns(
        UserWarning,
        match=r"fooled its own source model\(s\) on only 0\.\d\d .*loss 'ce', IR lambda 2\.0"
        r".*overrides: \{loss: margin\}.*ir_lambda: 0\.5",
    ):
        run_predict(tmp_path / "weak", 8, overrides=weak)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*fooled its own source")
        run_predict(tmp_path / "off", 8, overrides=weak, writer_args={"min_whitebox_success": 0})
    with pytest.raises(ValueError, match=r"min_whitebox_success must be in \[0, 1\]"):
        AdversarialWriter(str(tmp_path), min_whitebox_success=2)


# ----------------------------------------------------------------------------- permissions
@needs_checkpoints
@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_predict_output_files_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        out = tmp_path / "run"
        run_predict(out, 16, attack="mi", overrides={"steps": 1}, writer_args={"keep_shards": True})
    finally:
        os.umask(old)
    files = sorted(p for p in out.iterdir())
    assert {p.name for p in files} >= {"adversarial.pt", "meta.json", "summary.json", "shard_000000000_000000007.pt"}
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path.name


@needs_checkpoints
def test_cli_predict_is_refused_while_another_run_holds_the_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    lock = OutputLock(out)
    lock.acquire()
    config = write_config(tmp_path, out, subcommand=False)
    cli = build_cli(["--config", str(config)], run=False)
    with pytest.raises(RuntimeError, match="locked by another predict run"):
        cli.trainer.predict(cli.model, datamodule=cli.datamodule, return_predictions=False)
    lock.release()
    main(["predict", "--config", str(write_config(tmp_path, out)), "--data.init_args.predict_limit", "8"])
    assert load_adversarial(out).meta["attack"] == "pgd+ir"


def test_a_lock_held_by_another_process_is_refused_and_taken_over_once_that_process_is_killed(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from lit_advgame.predict import OutputLock; "
            f"OutputLock({str(tmp_path)!r}).acquire(); print('locked', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputLockedError, match=rf"locked by another predict run \(pid {holder.pid} on host"):
            OutputLock(tmp_path).acquire()
    finally:
        holder.kill()  # SIGKILL: the run cannot clean up; its lock file stays behind
        holder.wait()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == holder.pid
    lock = OutputLock(tmp_path)
    warning = lock.acquire()
    assert warning is not None and f"pid {holder.pid}" in warning and "killed or crashed" in warning
    lock.release()


def test_records_written_before_batch_records_existed_still_merge(tmp_path):
    legacy = {
        "index": torch.arange(4),
        "label": torch.zeros(4, dtype=torch.long),
        "x": torch.zeros(4, 1, 2, 2),
        "x_adv": torch.zeros(4, 1, 2, 2),
    }
    write_shard(tmp_path, legacy)
    write_shard(
        tmp_path,
        {k: v + 4 if k == "index" else v for k, v in legacy.items()}
        | {"batch_first": torch.full((4,), 4), "batch_len": torch.full((4,), 4)},
    )
    merged = load_adversarial(tmp_path)
    assert merged.index.tolist() == list(range(8)) and "batch_len" not in merged.records


@needs_checkpoints
def test_meta_records_the_resolved_pixel_space_radius():
    """An L2 preset's default radius is 16/255·√n: meta.json stores the resolved value for the data's shape,
    and a given L2 eps is stored as given."""
    data = DigitsDataModule(predict_limit=8, batch_size=8)
    common = dict(input_shape=(1, 16, 16), num_classes=10, mean=data.mean, std=data.std)
    default = AttackModule(str(SOURCE), "pgd", overrides={"norm": "l2", "steps": 1}, **common).run_metadata()
    assert default["resolved_eps"] == pytest.approx(16 / 255 * 16.0)
    given = AttackModule(str(SOURCE), "pgd", overrides={"norm": "l2", "eps": 2.0, "steps": 1}, **common).run_metadata()
    assert given["resolved_eps"] == pytest.approx(2.0)
    linf = AttackModule(str(SOURCE), "pgd", overrides={"steps": 1}, **common).run_metadata()
    assert linf["resolved_eps"] == pytest.approx(16 / 255) and linf["resolved_step_size"] == pytest.approx(2 / 255)
