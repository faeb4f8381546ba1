"""The attribution job through the CLI (issue 11): both configs run with tiny budgets, print their cost first, write
their tables, figures and TensorBoard tags; an interrupted run resumes, DDP writes each image once, and the records
do not depend on the batch size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lit_advgame.attributions import AttributionWriter, load_attributions
from lit_advgame.cli import build_cli, main
from lit_advgame.data import DigitsDataModule
from lit_advgame.predict import AttackModule, list_shards
from tests.attributions.test_job import COMPONENTS, MODELS, REGIONAL, STANDARD, assert_same, needs_checkpoints
from tests.conftest import CONFIGS, DDP_CPU_ARGS, REPO_ROOT, predict_into
from tests.tb_utils import read_image_tags, read_scalars
from tests.test_predict import CrashAfter

pytestmark = [needs_checkpoints, pytest.mark.usefixtures("one_thread")]


def tiny_config(tmp_path: Path, kind: str, out: Path, *, limit: int, batch_size: int, subcommand: bool = True) -> Path:
    """configs/attributions_<kind>.yaml with the tiny settings of tests/attributions/test_job.py, absolute paths."""
    cfg = yaml.safe_load((CONFIGS / f"attributions_{kind}.yaml").read_text())
    if not subcommand:
        cfg.pop("return_predictions")
    args = cfg["model"]["init_args"]
    if kind == "regional":
        args.update(models=MODELS[:1], regional=REGIONAL)
    else:
        args.update(models=MODELS, components=COMPONENTS, masked_batch_size=64)
    cfg["data"]["init_args"].update(predict_limit=limit, batch_size=batch_size)
    cfg["trainer"]["callbacks"][0]["init_args"].update(output_dir=str(out), num_figures=1)
    cfg["trainer"].update(default_root_dir=str(out), enable_progress_bar=False)
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def logger_args(out: Path) -> list[str]:
    return ["--trainer.logger", "TensorBoardLogger", "--trainer.logger.save_dir", str(out / "tensorboard")]


def test_regional_job_resumes_writes_each_image_once_under_ddp_and_does_not_depend_on_the_batch_size(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    single = tmp_path / "single"
    main(["predict", "--config", str(tiny_config(tmp_path, "regional", single, limit=4, batch_size=2)),
          *logger_args(single)])  # fmt: skip
    printed = capsys.readouterr().out
    cost = printed.index("AttributionAnalysis: 4 image(s) x 1 model(s); regional, per image and model: up to 15")
    assert cost < printed.index("**standard/regional**")  # the cost is announced before the work
    reference, meta = load_attributions(single)
    assert reference["index"].tolist() == list(range(4)) and meta["kind"] == "attribution_analysis"
    summary = json.loads((single / "summary.json").read_text())
    entry = summary["models"]["standard"]["regional"]
    assert entry["num_analyzed"] == int(reference["regional_analyzed"].sum()) >= 1
    assert entry["l2_num_border_failed"] + entry["num_analyzed"] <= 4 and 0 <= entry["iou_attributions"] <= 1
    assert "IoU attributions L2 vs L∞" in (single / "summary.md").read_text()
    first = int(reference["index"][reference["regional_analyzed"][:, 0]][0])
    assert (single / "figures" / f"regional_standard_{first}.png").is_file()
    scalars, images = read_scalars(single / "tensorboard"), read_image_tags(single / "tensorboard")
    for tag in ("regional/l2/cost_empty", "regional/linf/failure_rate", "regional/iou_attributions"):
        assert f"attributions/standard/{tag}" in scalars, tag
    assert "zz_margin/attributions/standard/regional/l2/cost_full/upper" in scalars or entry["num_analyzed"] == 1
    assert "zz_cost/attributions/standard/restricted_attacks" in scalars
    assert images == {"attributions/standard/regional"}

    # killed after the first of two batches, then restarted: only the missing images are analysed
    resumed = tmp_path / "resumed"
    config = tiny_config(tmp_path, "regional", resumed, limit=4, batch_size=2, subcommand=False)
    cli = build_cli(["--config", str(config)], run=False)
    cli.trainer.callbacks.append(CrashAfter(1))
    with pytest.raises(RuntimeError, match="simulated crash"):
        cli.trainer.predict(cli.model, datamodule=cli.datamodule, return_predictions=False)
    assert [p.name for p in list_shards(resumed)] == ["shard_000000000_000000001.pt"]
    cli = build_cli(["--config", str(config)], run=False)
    capsys.readouterr()
    cli.trainer.predict(cli.model, datamodule=cli.datamodule, return_predictions=False)
    assert "AttributionAnalysis: 2 image(s) x 1 model(s)" in capsys.readouterr().out  # the cost of what is left
    writer = next(cb for cb in cli.trainer.callbacks if isinstance(cb, AttributionWriter))
    assert writer.shards_written == 1
    assert_same(load_attributions(resumed)[0], reference)

    # one image per batch: the same records (each image is seeded by its dataset index alone)
    ones = tmp_path / "ones"
    main(["predict", "--config", str(tiny_config(tmp_path, "regional", ones, limit=4, batch_size=1))])
    assert_same(load_attributions(ones)[0], reference)

    # DDP with 2 CPU processes (gloo) through the CLI
    ddp = tmp_path / "ddp"
    config = tiny_config(tmp_path, "regional", ddp, limit=4, batch_size=2)
    cmd = [sys.executable, "-m", "lit_advgame", "predict", "--config", str(config), *DDP_CPU_ARGS]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    run = subprocess.run(cmd, check=False, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("| model |") == 1 and run.stdout.count("AttributionAnalysis: 4 image(s)") == 1  # rank 0
    assert not list_shards(ddp)  # merged
    merged = torch.load(ddp / "attributions.pt", weights_only=True)["records"]
    assert merged["index"].tolist() == list(range(4))  # every image exactly once
    assert_same(load_attributions(ddp)[0], reference)


def test_components_job_smoke_with_tables_figures_and_tensorboard(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "components"
    main(["predict", "--config", str(tiny_config(tmp_path, "components", out, limit=2, batch_size=2)),
          *logger_args(out)])  # fmt: skip
    printed = capsys.readouterr().out
    assert "components, per image and model: a 10-step targeted attack + about" in printed
    records, meta = load_attributions(out)
    assert records["components_map"].shape == (2, 2, 64) and meta["models"] == ["standard", "adversarial"]
    summary = json.loads((out / "summary.json").read_text())
    for k, name in enumerate(meta["models"]):
        entry = summary["models"][name]["components"]
        assert entry["num_analyzed"] == int(records["components_analyzed"][:, k].sum())
        assert entry["num_components"] == int(records["components_count"][:, k].sum())
    assert "share mainly decreasing the true class" in (out / "summary.md").read_text()
    analysed = records["components_analyzed"]
    drawn = {
        f"components_{name}_{int(records['index'][analysed[:, k]][0])}.png"
        for k, name in enumerate(meta["models"])
        if analysed[:, k].any()
    }
    assert drawn and drawn == {p.name for p in (out / "figures").iterdir()}
    scalars, images = read_scalars(out / "tensorboard"), read_image_tags(out / "tensorboard")
    assert "attributions/standard/components/share_decreasing_true" in scalars
    assert "zz_cost/attributions/adversarial/masked_forward_passes" in scalars
    assert images == {
        f"attributions/{name}/components" for k, name in enumerate(meta["models"]) if analysed[:, k].any()
    }


def test_the_writer_needs_its_job(tmp_path):
    data = DigitsDataModule(predict_limit=2, batch_size=2)
    attack = AttackModule(str(STANDARD), "pgd", overrides={"steps": 1}, mean=data.mean, std=data.std)
    with pytest.raises(TypeError, match="AttributionWriter works with lit_advgame.attributions.AttributionAnalysis"):
        predict_into(attack, data, AttributionWriter(str(tmp_path / "run")))
