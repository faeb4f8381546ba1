"""Attacks at scale with trainer.predict: AttackModule, AdversarialWriter, shards, model loading.

Covers: IR lowers the measured interaction against PGD on a trained digits model; a run killed
midway and restarted completes without loss or duplicates and equals an uninterrupted run; DDP on 2
CPU processes writes every index once and the same adversarial examples as one process; clear errors.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml

from lit_advgame.attacks import build_attack
from lit_advgame.cli import build_cli, main
from lit_advgame.data import DigitsDataModule
from lit_advgame.evaluation import measure_interaction
from lit_advgame.models import build_model
from lit_advgame.predict import (
    AdversarialSet,
    AdversarialWriter,
    AttackModule,
    dedupe_sort,
    export_classifier,
    finished_indices,
    list_shards,
    load_adversarial,
    load_classifier,
    merge_directory,
    write_shard,
)
from tests.conftest import CONFIGS, REPO_ROOT, predict_into

SOURCE = REPO_ROOT / "checkpoints" / "digits_small_cnn.pt"
SCORER = REPO_ROOT / "checkpoints" / "digits_lenet.pt"
TINY_ATTACK = {"steps": 3, "eps": "32/255", "step_size": "8/255", "ir_grid": 4, "ir_samples": 3, "ir_group_size": 4}
needs_checkpoints = pytest.mark.skipif(
    not (SOURCE.is_file() and SCORER.is_file()), reason="checkpoints/ not built (scripts/make_checkpoints.sh)"
)


pytestmark = pytest.mark.usefixtures("one_thread")  # one intra-op thread (tests/conftest.py)


def write_config(
    tmp_path: Path, out: Path, *, keep_shards: bool = True, resume: bool = True, subcommand: bool = True, **module_args
) -> Path:
    """The quickstart attack config, shrunk (40 images in 5 batches, 3 steps) and with absolute paths
    (``subcommand=False``: without the predict subcommand's keys, for ``build_cli(run=False)``)."""
    cfg = yaml.safe_load((CONFIGS / "attack_quickstart.yaml").read_text())
    if not subcommand:
        cfg.pop("return_predictions")
    cfg["model"]["init_args"].update(
        source=str(SOURCE), score_models=[str(SCORER)], overrides=dict(TINY_ATTACK), **module_args
    )
    cfg["data"]["init_args"].update(predict_limit=40, batch_size=8)
    cfg["trainer"]["callbacks"][0]["init_args"].update(output_dir=str(out), keep_shards=keep_shards, resume=resume)
    cfg["trainer"]["default_root_dir"] = str(tmp_path / "root")
    path = tmp_path / f"config_{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


class CrashAfter(pl.Callback):
    """Simulates a killed run: raises after ``batches`` predict batches (after their shards are written)."""

    def __init__(self, batches: int) -> None:
        self.batches = batches

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if batch_idx + 1 >= self.batches:
            raise RuntimeError("simulated crash")


def assert_same_records(a: AdversarialSet, b: AdversarialSet) -> None:
    assert set(a.records) == set(b.records)
    for key in a.records:
        assert torch.equal(a.records[key], b.records[key]), key


# ----------------------------------------------------------------------------- IR vs PGD
@needs_checkpoints
def test_ir_lowers_the_interaction_of_its_perturbations_against_pgd():
    model = load_classifier(SOURCE).model
    x, y = DigitsDataModule().probe_set(16, "test", seed=0)
    options = {"grid": 8}  # 64 players, every one evaluated: the exact Eq. 4 average
    measured = {}
    for preset in ("pgd", "pgd+ir"):
        ir_options = dict(ir_grid=8, ir_samples=8, ir_group_size=8) if preset == "pgd+ir" else {}  # errors on pgd
        attack = build_attack(preset, model, steps=6, eps="32/255", step_size="4/255", seed=0, **ir_options)
        x_adv = attack(x, y)
        assert (x_adv - x).abs().max() <= 32 / 255 + 1e-6
        mean, stderr, per_image = measure_interaction(model, AdversarialSet(torch.arange(16), y, x, x_adv), options)
        measured[preset] = (mean, stderr, per_image)
    pgd, ir = measured["pgd"], measured["pgd+ir"]
    assert ir[0] < pgd[0] - 2 * (ir[1] ** 2 + pgd[1] ** 2) ** 0.5, (pgd[:2], ir[:2])
    assert (ir[2] < pgd[2]).float().mean() > 0.5  # lower for most images, not only on average


# ----------------------------------------------------------------------------- end to end
@needs_checkpoints
def test_cli_predict_writes_merged_sorted_examples_with_records(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "single"
    main(["predict", "--config", str(write_config(tmp_path, out, keep_shards=False))])
    assert not list_shards(out)  # merged, then removed
    adv = load_adversarial(out)
    assert adv.index.tolist() == list(range(40))
    data = DigitsDataModule()
    test = data.dataset("test")
    assert torch.equal(adv.x, torch.stack([test[i][0] for i in range(40)]))
    assert torch.equal(adv.label, torch.stack([torch.as_tensor(test[i][1]) for i in range(40)]))
    assert (adv.x_adv - adv.x).abs().max() <= 32 / 255 + 1e-6
    assert adv.records["step_scores"].shape == (40, 3, 1)  # T = 3 steps, K = 1 score model
    assert adv.records["loss/interaction"].shape == (40, 3)
    assert adv.meta["attack"] == "pgd+ir" and adv.meta["score_models"] == ["digits_lenet"]
    # the last step's score is the score model's margin on x_adv
    lenet = load_classifier(SCORER).model
    logits = lenet(adv.x_adv)
    margin = (
        logits.scatter(1, adv.label[:, None], float("-inf")).max(1).values - logits.gather(1, adv.label[:, None])[:, 0]
    )
    torch.testing.assert_close(adv.records["step_scores"][:, -1, 0], margin, rtol=1e-4, atol=1e-4)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_examples"] == 40 and 0 <= summary["whitebox_success"] <= 1


@needs_checkpoints
def test_killed_run_resumes_without_loss_or_duplicates_and_ddp_matches_one_process(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # 1. uninterrupted single-process run
    single = tmp_path / "single"
    main(["predict", "--config", str(write_config(tmp_path, single))])
    reference = load_adversarial(single)

    # 2. a run killed after 2 of 5 batches, then restarted
    resumed = tmp_path / "resumed"
    config = write_config(tmp_path, resumed, subcommand=False)
    cli = build_cli(["--config", str(config)], run=False)
    cli.trainer.callbacks.append(CrashAfter(2))
    with pytest.raises(RuntimeError, match="simulated crash"):
        cli.trainer.predict(cli.model, datamodule=cli.datamodule, return_predictions=False)
    assert not (resumed / "adversarial.pt").exists()
    assert finished_indices(resumed) == set(range(16))  # two complete shards, nothing partial
    cli = build_cli(["--config", str(config)], run=False)
    cli.trainer.predict(cli.model, datamodule=cli.datamodule, return_predictions=False)
    writer = next(cb for cb in cli.trainer.callbacks if isinstance(cb, AdversarialWriter))
    assert writer.shards_written == 3  # only the missing batches were attacked
    merged = torch.load(resumed / "adversarial.pt", weights_only=True)["records"]
    assert merged["index"].tolist() == list(range(40))  # complete, sorted, each index once
    assert_same_records(load_adversarial(resumed), reference)

    # 3. DDP with 2 CPU processes (gloo) through the CLI
    ddp = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "lit_advgame",
        "predict",
        "--config",
        str(write_config(tmp_path, ddp)),
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "2",
        "--trainer.strategy",
        "ddp",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    run = subprocess.run(cmd, check=False, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("AdversarialWriter: attacking 40 images") == 1, run.stdout[-3000:]  # rank 0 only
    assert run.stdout.count("| examples |") == 1  # the summary table, once
    shards = [torch.load(p, weights_only=True) for p in list_shards(ddp)]
    assert sorted(s["rank"] for s in shards) == [0, 0, 0, 1, 1]  # batches dealt round-robin to the ranks
    written = torch.cat([s["records"]["index"] for s in shards])
    assert sorted(written.tolist()) == list(range(40))  # every index exactly once
    assert_same_records(load_adversarial(ddp), reference)


@needs_checkpoints
def test_resume_refuses_a_folder_of_another_attack(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    main(["predict", "--config", str(write_config(tmp_path, out)), "--data.init_args.predict_limit", "8"])
    with pytest.raises(ValueError, match="different attack.*seed"):
        build_cli(["predict", "--config", str(write_config(tmp_path, out, seed=1))])
    with pytest.raises(FileExistsError, match="resume"):
        build_cli(["predict", "--config", str(write_config(tmp_path, out, resume=False))])


@needs_checkpoints
def test_predict_under_inference_mode_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, tmp_path / "run")
    with pytest.raises(RuntimeError, match="inference_mode: false"):
        main(["predict", "--config", str(config), "--trainer.inference_mode", "true"])


@needs_checkpoints
def test_uint8_candidates_give_the_same_loo_as_per_step_scores(tmp_path):
    """record='uint8' (per-step images) and record='scores' (per-step margins) select the same LOO steps."""
    from lit_advgame.evaluation import evaluate_transfer

    data = DigitsDataModule(predict_limit=24, batch_size=12)
    data.setup()
    runs = {}
    for record in ("uint8", "scores"):
        module = AttackModule(
            str(SOURCE),
            "mi",
            overrides={"steps": 4, "eps": "32/255"},
            seed=3,
            record=record,
            quantize=True,
            score_models=[str(SCORER)] if record == "scores" else None,
            input_shape=(1, 16, 16),
            num_classes=10,
        )
        out = tmp_path / record
        predict_into(module, data, AdversarialWriter(str(out)))
        runs[record] = load_adversarial(out)
    candidates = runs["uint8"].records["candidates"]
    assert candidates.dtype == torch.uint8 and candidates.shape == (24, 4, 1, 16, 16)
    assert torch.equal(candidates[:, -1], runs["uint8"].records["x_adv"])  # candidate T is x_adv (quantized)
    assert torch.equal(runs["uint8"].x_adv, runs["scores"].x_adv)  # recording does not change the attack
    report = evaluate_transfer([runs["uint8"], runs["scores"]], [str(SCORER)], interaction=False, device="cpu")
    cells = [row.targets["digits_lenet"] for row in report.rows]
    assert cells[0].success_loo == cells[1].success_loo and cells[0].step_success == cells[1].step_success
    assert cells[0].success == cells[1].success


# ----------------------------------------------------------------------------- shards
def _records(indices, value=0.0):
    n = len(indices)
    return {
        "index": torch.tensor(indices),
        "label": torch.zeros(n, dtype=torch.long),
        "x": torch.full((n, 1, 2, 2), value),
        "x_adv": torch.full((n, 1, 2, 2), value),
    }


def test_shards_merge_sorted_and_deduplicated_first_wins(tmp_path):
    write_shard(tmp_path, _records([4, 5, 6], 1.0), rank=1)
    write_shard(tmp_path, _records([0, 1, 2, 3], 2.0), rank=0)
    write_shard(tmp_path, _records([3, 4], 3.0))  # overlaps both: duplicates
    (tmp_path / ".shard_000000007_000000008.pt.abc.tmp").write_bytes(b"partial")  # an interrupted write
    assert finished_indices(tmp_path) == set(range(7))
    merged = merge_directory(tmp_path, {"name": "t"}, keep_shards=False)
    assert merged["index"].tolist() == list(range(7))
    # shards are read in name order: shard_0..3 (value 2) before shard_3..4 (3) before shard_4..6 (1)
    assert merged["x"][:, 0, 0, 0].tolist() == [2, 2, 2, 2, 3, 1, 1]
    assert not list_shards(tmp_path)
    write_shard(tmp_path, _records([7], 4.0))
    merged = merge_directory(tmp_path)  # merged file + new shard; the meta is kept
    assert merged["index"].tolist() == list(range(8))
    assert load_adversarial(tmp_path / "adversarial.pt").meta == {"name": "t"}


def test_dedupe_sort_and_bad_shards():
    out = dedupe_sort({"index": torch.tensor([3, 1, 3, 0]), "v": torch.tensor([30, 10, 31, 0])})
    assert out["index"].tolist() == [0, 1, 3] and out["v"].tolist() == [0, 10, 30]
    with pytest.raises(ValueError, match="first dimension"):
        write_shard("/tmp", {**_records([1, 2]), "label": torch.zeros(3)})
    with pytest.raises(ValueError, match="lack"):
        write_shard("/tmp", {"index": torch.tensor([1])})


# ----------------------------------------------------------------------------- models and errors
def test_model_specs_load_files_lightning_checkpoints_and_dicts(tmp_path):
    torch.manual_seed(0)
    model = build_model("lenet", 10, 1, 16, mean=[0.3], std=[0.2])
    export_classifier(model, tmp_path / "exported.pt", arch="lenet", num_classes=10, input_shape=(1, 16, 16))
    ckpt = {
        "hyper_parameters": {"arch": "lenet", "num_classes": 10, "input_shape": (1, 16, 16), "arch_kwargs": None},
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
    }
    torch.save(ckpt, tmp_path / "run.ckpt")
    torch.save(model.net.state_dict(), tmp_path / "plain.pt")
    x = torch.rand(3, 1, 16, 16)
    expected = model.eval()(x)
    for spec in (
        str(tmp_path / "exported.pt"),
        str(tmp_path / "run.ckpt"),
        {"arch": "lenet", "weights": str(tmp_path / "plain.pt"), "name": "p"},
        {"path": str(tmp_path / "run.ckpt"), "name": "renamed"},
    ):
        loaded = load_classifier(spec, num_classes=10, input_shape=(1, 16, 16), mean=[0.3], std=[0.2])
        torch.testing.assert_close(loaded.model(x), expected)
        assert not any(p.requires_grad for p in loaded.model.parameters())
        again = load_classifier(loaded.spec, input_shape=(1, 16, 16))  # the recorded spec reloads the same model
        torch.testing.assert_close(again.model(x), expected)
    assert load_classifier({"path": str(tmp_path / "run.ckpt"), "name": "renamed"}).name == "renamed"
    with pytest.raises(ValueError, match=r"trained on inputs of shape \(1, 16, 16\)"):
        load_classifier(str(tmp_path / "exported.pt"), input_shape=(1, 28, 28))
    with pytest.raises(ValueError, match="neither"):
        load_classifier(str(tmp_path / "plain.pt"))
    with pytest.raises(FileNotFoundError, match="not found"):
        load_classifier(str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="unknown model spec key"):
        load_classifier({"arch": "lenet", "weight": "x"})
    with pytest.raises(TypeError, match="model spec"):
        load_classifier(3)


@needs_checkpoints
def test_attack_module_bad_input_gets_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown attack preset 'pgdd'"):
        AttackModule(str(SOURCE), "pgdd")
    with pytest.raises(ValueError, match="unknown attack option"):
        AttackModule(str(SOURCE), "pgd", overrides={"stepz": 3})
    with pytest.raises(ValueError, match="may not set.*seed"):
        AttackModule(str(SOURCE), "pgd", overrides={"seed": 3})
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        AttackModule(str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="needs score_models"):
        AttackModule(str(SOURCE), record="scores")
    with pytest.raises(ValueError, match="unknown record"):
        AttackModule(str(SOURCE), record="png")
    with pytest.raises(ValueError, match="duplicate names"):
        AttackModule([str(SOURCE), str(SOURCE)])
    with pytest.raises(ValueError, match="grid"):
        AttackModule(str(SOURCE), "pgd+ir", overrides={"ir_grid": 0})
    with pytest.raises(ValueError, match="merged_name"):
        AdversarialWriter(str(tmp_path), merged_name="shard_x.pt")


@pytest.mark.parametrize("name", ["attack_quickstart.yaml", "attack_digits.yaml"])
def test_attack_configs_parse(name, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["predict", "--config", str(CONFIGS / name), "--print_config"])
    assert exc.value.code == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["model"]["class_path"] == "lit_advgame.predict.AttackModule"
    assert cfg["trainer"]["inference_mode"] is False and cfg["trainer"]["use_distributed_sampler"] is False
    assert cfg["trainer"]["callbacks"][0]["class_path"] == "lit_advgame.predict.AdversarialWriter"
