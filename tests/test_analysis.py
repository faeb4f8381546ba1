"""The interaction analysis job (issue 10): per-image numbers equal the functional estimators and the exact oracle,
DDP writes each image once with the one-process results, an interrupted run resumes, the paper config runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torchvision
import yaml

from lit_advgame.analysis import AnalysisWriter, InteractionAnalysis, aggregate, image_seed, load_analysis
from lit_advgame.attacks.strength import StrengthControlledAttack
from lit_advgame.cli import build_cli, main
from lit_advgame.data import DigitsDataModule
from lit_advgame.interactions import InputGame, exact_interactions, interaction_change
from lit_advgame.predict import AttackModule, list_shards
from tests.conftest import CONFIGS, DDP_CPU_ARGS, REPO_ROOT
from tests.tb_utils import read_image_tags, read_scalars
from tests.test_imagefolder import WNIDS, make_flat_folder
from tests.test_models import _robustness_state, _save_robustness
from tests.test_predict import CrashAfter

STANDARD = REPO_ROOT / "checkpoints" / "digits_small_cnn.pt"
ROBUST = REPO_ROOT / "checkpoints" / "digits_small_cnn_at.pt"
needs_checkpoints = pytest.mark.skipif(
    not (STANDARD.is_file() and ROBUST.is_file()), reason="checkpoints/ not built (scripts/make_checkpoints.sh)"
)
MODELS = [{"path": str(STANDARD), "name": "standard"}, {"path": str(ROBUST), "name": "adversarial"}]
ATTACK = {"threshold": 6.0, "eps": "64/255", "step_size": "4/255", "steps": 30}

pytestmark = pytest.mark.usefixtures("one_thread")  # one intra-op thread (tests/conftest.py)


def digits_batch(count: int = 6) -> tuple[torch.Tensor, torch.Tensor, DigitsDataModule]:
    data = DigitsDataModule()
    test = data.dataset("test")
    x = torch.stack([test[i][0] for i in range(count)])
    y = torch.tensor([int(test[i][1]) for i in range(count)])
    return x, y, data


def make_analysis(data: DigitsDataModule, game: dict, **kwargs) -> InteractionAnalysis:
    data_args = {"num_classes": 10, "input_shape": (1, 16, 16), "mean": data.mean, "std": data.std}
    return InteractionAnalysis(
        MODELS, game=game, attack_kwargs=ATTACK, seed=3, masked_batch_size=64, **data_args, **kwargs
    )


# ----------------------------------------------------------------------------- per-image numbers
@needs_checkpoints
def test_per_image_numbers_equal_the_functional_estimators_on_each_image_alone():
    x, y, data = digits_batch(6)
    game = {"grid": 4, "orders": [0, 3, 7, 14], "num_pairs": 3, "num_contexts": 4}
    analysis = make_analysis(data, game, only_reached=False)  # every correctly classified digit
    records = analysis.analyze_batch(x, y, list(range(10, 16)))
    assert records["x_adv"].shape == (6, 2, 1, 16, 16) and records["clean"].shape == (6, 2, 4)
    assert torch.equal(records["analyzed"], records["clean_correct"]) and records["analyzed"].sum() >= 8
    for k, model in enumerate(analysis.models):
        for b in range(6):
            index, xb, yb = 10 + b, x[b : b + 1], y[b : b + 1]
            correct = bool(model(xb).argmax(1) == yb)
            assert bool(records["clean_correct"][b, k]) == correct
            if not correct:
                assert torch.equal(records["x_adv"][b, k], xb[0]) and records["clean"][b, k].isnan().all()
                continue
            attack = StrengthControlledAttack(model, 6.0, eps=64 / 255, step_size=4 / 255, steps=30)
            attack.seed = image_seed(3, "attack", index)
            alone = attack.run(xb, yb)
            assert torch.equal(records["x_adv"][b, k], alone.x_adv[0])
            assert bool(records["reached"][b, k]) == bool(alone.reached[0])
            result = interaction_change(
                InputGame(model, xb, yb, grid=4, batch_size=64),
                InputGame(model, alone.x_adv, yb, grid=4, batch_size=64),
                [0, 3, 7, 14],
                num_pairs=3,
                num_contexts=4,
                generator=torch.Generator().manual_seed(image_seed(3, "game", index)),
            )
            assert torch.equal(records["clean"][b, k], result.clean.per_image[0])
            assert torch.equal(records["adversarial_stderr"][b, k], result.adversarial.per_image_stderr[0])
            assert torch.equal(records["delta"][b, k], result.per_image[0])
            assert torch.equal(records["utility"][b, k], result.weights * result.per_image[0])
            assert records["num_forward_passes"][b, k] == result.num_forward_passes
    # per image: a sub-batch gives the same records as the whole batch
    part = analysis.analyze_batch(x[3:5], y[3:5], [13, 14])
    for key, value in part.items():  # bit-equal; NaN where a model misclassifies the clean image
        torch.testing.assert_close(value, records[key][3:5], rtol=0, atol=0, equal_nan=True, msg=key)


@needs_checkpoints
def test_on_a_tiny_grid_the_per_image_interactions_are_the_exact_ones():
    x, y, data = digits_batch(4)
    # 2x2 grid: n = 4, all 6 pairs are neighbours and every context of every order is enumerated
    analysis = make_analysis(
        data, {"grid": 2, "orders": [0, 1, 2], "num_pairs": 6, "num_contexts": 4}, only_reached=False
    )
    records = analysis.analyze_batch(x, y, [0, 1, 2, 3])
    checked = 0
    for k, model in enumerate(analysis.models):
        for b in torch.nonzero(records["analyzed"][:, k]).flatten().tolist():
            for key, image in (("clean", x[b : b + 1]), ("adversarial", records["x_adv"][b : b + 1, k])):
                exact = exact_interactions(InputGame(model, image, y[b : b + 1], grid=2)).all_pairs_interaction[0]
                torch.testing.assert_close(records[key][b, k], exact, rtol=1e-9, atol=1e-9)
                assert records[f"{key}_stderr"][b, k].isfinite().all()  # over the 6 pairs (sampled, all of them)
            checked += 1
    assert checked >= 4
    summary = aggregate(records, analysis.run_metadata())
    entry = summary["models"]["standard"]
    analysed = records["analyzed"][:, 0]
    torch.testing.assert_close(torch.tensor(entry["delta"], dtype=torch.float64), records["delta"][analysed, 0].mean(0))
    assert entry["num_analyzed"] == int(analysed.sum()) and sum(entry["share"]) == pytest.approx(1.0)


def test_bad_arguments_get_clear_errors():
    data = DigitsDataModule()
    with pytest.raises(ValueError, match="unknown attack 'fgsm'"):
        make_analysis(data, {"grid": 4}, attack="fgsm")
    with pytest.raises(ValueError, match="attack_kwargs may not set 'seed'"):
        InteractionAnalysis(MODELS, attack_kwargs={"seed": 1})
    with pytest.raises(ValueError, match="unknown game option"):
        make_analysis(data, {"grids": 4})
    with pytest.raises(ValueError, match="unknown option.*'strength' attack"):
        InteractionAnalysis(MODELS, attack_kwargs={"epsilon": 0.1})


@needs_checkpoints
def test_the_job_needs_its_writer_and_the_writer_its_job(tmp_path):
    data = DigitsDataModule(predict_limit=2, batch_size=2)
    analysis = make_analysis(data, {"grid": 4})
    trainer = pl.Trainer(accelerator="cpu", inference_mode=False, logger=False, enable_progress_bar=False)
    with pytest.raises(ValueError, match="prediction writer.*lit_advgame.analysis.AnalysisWriter"):
        trainer.predict(analysis, datamodule=data, return_predictions=False)
    attack = AttackModule(str(STANDARD), "pgd", overrides={"steps": 1}, mean=data.mean, std=data.std)
    writer = AnalysisWriter(str(tmp_path / "run"))
    trainer = pl.Trainer(
        accelerator="cpu", inference_mode=False, logger=False, enable_progress_bar=False, callbacks=[writer]
    )
    with pytest.raises(TypeError, match="AnalysisWriter works with lit_advgame.analysis.InteractionAnalysis"):
        trainer.predict(attack, datamodule=data, return_predictions=False)


# ----------------------------------------------------------------------------- the job: DDP, resume, CLI
def digits_config(tmp_path: Path, out: Path, subcommand: bool = True) -> Path:
    """configs/analysis_digits.yaml with a tiny budget (4 digits in 2 batches) and absolute paths."""
    cfg = yaml.safe_load((CONFIGS / "analysis_digits.yaml").read_text())
    if not subcommand:
        cfg.pop("return_predictions")
    cfg["model"]["init_args"].update(
        models=MODELS,
        attack_kwargs=dict(ATTACK),
        game={"grid": 4, "orders": [1, 7, 13], "num_pairs": 2, "num_contexts": 3},
    )
    cfg["data"]["init_args"].update(predict_limit=4, batch_size=2)
    cfg["trainer"]["callbacks"][0]["init_args"]["output_dir"] = str(out)
    cfg["trainer"].update(default_root_dir=str(out), enable_progress_bar=False)
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, equal_nan=True, msg=key)  # bit for bit


@needs_checkpoints
def test_interrupted_run_resumes_and_ddp_writes_each_image_once_with_the_one_process_results(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    single = tmp_path / "single"
    main(["predict", "--config", str(digits_config(tmp_path, single))])
    reference, meta = load_analysis(single)
    assert reference["index"].tolist() == list(range(4)) and meta["models"] == ["standard", "adversarial"]
    summary = json.loads((single / "summary.json").read_text())
    assert summary["models"]["standard"]["num_images"] == 4
    assert summary["models"]["adversarial"]["delta"] == aggregate(reference, meta)["models"]["adversarial"]["delta"]
    for name in ("summary.md", "per_image.csv", "aggregate.csv", "figures/utility.png", "figures/share.png"):
        assert (single / name).is_file(), name
    assert (single / "figures" / "interactions_standard.png").is_file()
    assert len((single / "per_image.csv").read_text().splitlines()) == 1 + 4 * 2 * 3  # images x models x orders

    run = assert_resumes_and_runs_once_under_ddp(
        tmp_path, lambda out, subcommand: digits_config(tmp_path, out, subcommand), AnalysisWriter, reference
    )
    assert run.stdout.count("| model |") == 1  # the summary table, printed once (rank 0)


def assert_resumes_and_runs_once_under_ddp(
    tmp_path: Path, make_config, writer_class: type, reference: dict[str, torch.Tensor]
) -> subprocess.CompletedProcess:
    """An analysis job's run killed after the first of two batches resumes and analyses only the missing images, and
    a 2-process DDP run (gloo) through the CLI writes each image once: both give ``reference`` bit for bit.
    ``make_config(out, subcommand)`` writes the job's config (2 batches) into ``out``. Returns the DDP run."""
    resumed = tmp_path / "resumed"
    config = make_config(resumed, False)
    cli = build_cli(["--config", str(config)], run=False)
    cli.trainer.callbacks.append(CrashAfter(1))
    with pytest.raises(RuntimeError, match="simulated crash"):
        cli.trainer.predict(cli.model, datamodule=cli.datamodule, return_predictions=False)
    assert [p.name for p in list_shards(resumed)] == ["shard_000000000_000000001.pt"]
    cli = build_cli(["--config", str(config)], run=False)
    cli.trainer.predict(cli.model, datamodule=cli.datamodule, return_predictions=False)
    writer = next(cb for cb in cli.trainer.callbacks if isinstance(cb, writer_class))
    assert writer.shards_written == 1
    assert_same(load_analysis(resumed)[0], reference)

    ddp = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "lit_advgame", "predict", "--config", str(make_config(ddp, True)), *DDP_CPU_ARGS]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    run = subprocess.run(cmd, check=False, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert not list_shards(ddp)  # merged
    merged = torch.load(ddp / "analysis.pt", weights_only=True)["records"]
    assert merged["index"].tolist() == reference["index"].tolist()  # every image exactly once
    assert_same(load_analysis(ddp)[0], reference)
    return run


def test_cli_smoke_multi_order_imagenet_on_a_flat_folder_with_robustness_checkpoints(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_flat_folder(tmp_path / "images", per_class=1)  # 3 classes, one 64x64 PNG each
    specs = []
    for k, name in enumerate(("standard", "robust")):
        torch.manual_seed(k)
        net = torchvision.models.resnet18(num_classes=len(WNIDS))
        state = _robustness_state(net, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        path = _save_robustness(tmp_path / f"resnet18_{name}.ckpt", state)
        specs.append({"arch": "torchvision:resnet18", "weights": str(path), "name": name})
    out = tmp_path / "analysis"
    args = ["predict", "--config", str(CONFIGS / "paper" / "multi_order_imagenet.yaml")]
    args += ["--model.init_args.models", json.dumps(specs), "--model.init_args.masked_batch_size", "64"]
    args += ["--model.init_args.seed", "5"]  # not merged with the DataModule's seed 0 into the logged hparams
    args += [
        "--model.init_args.game",
        json.dumps({"grid": 4, "orders": "reference", "num_pairs": 2, "num_contexts": 2}),
    ]
    args += ["--model.init_args.attack_kwargs", json.dumps({"threshold": 0.5, "eps": "32/255", "steps": 3})]
    args += [
        "--model.init_args.only_reached",
        "false",
        "--trainer.accelerator",
        "cpu",
        "--trainer.enable_progress_bar",
        "false",
    ]
    args += ["--trainer.logger.init_args.save_dir", str(out), "--trainer.callbacks.init_args.output_dir", str(out)]
    args += [
        "--data.init_args.root",
        str(tmp_path / "images"),
        "--data.init_args.layout",
        "flat",
        "--data.init_args.val_dir",
        ".",
    ]
    args += ["--data.init_args.image_size", "32", "--data.init_args.resize", "36", "--data.init_args.num_workers", "0"]
    args += ["--data.init_args.batch_size", "2"]
    main(args)
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["models"]) == ["standard", "robust"] and summary["num_players"] == 16
    assert len(summary["orders"]) == 11  # the reference orders, resolved for n = 16
    for entry in summary["models"].values():
        assert entry["num_images"] == 3 and entry["num_analyzed"] == round(3 * entry["clean_accuracy"])
    assert (out / "figures" / "utility.png").is_file() and (out / "figures" / "interactions_robust.png").is_file()
    scalars = read_scalars(out / "tensorboard")
    assert sorted({step for step, _ in scalars["analysis/robust/delta"]}) == sorted(set(summary["orders"]))  # step: m
    assert "analysis/standard/attack/clean_accuracy" in scalars
    assert {"analysis/utility", "analysis/share", "analysis/interactions/standard"} <= read_image_tags(
        out / "tensorboard"
    )
