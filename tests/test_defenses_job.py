"""The defense job (issue 12): per-image records equal the functional defenses API on each image alone, the aggregates
equal the functional summaries, a smoothing checkpoint is analysed under its noise, the CLI job writes its tables,
figures and TensorBoard tags, resumes, and writes each image once under DDP with the one-process results."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml
from sklearn.metrics import roc_auc_score

from lit_advgame.analysis import AnalysisWriter, InteractionAnalysis, aggregate, image_seed, load_analysis
from lit_advgame.attacks import build_attack
from lit_advgame.cli import main
from lit_advgame.data import DigitsDataModule
from lit_advgame.defenses import (
    AttributionDetector,
    Cutout,
    DefenseAnalysis,
    DefenseWriter,
    EarlyStoppedAttack,
    NoisyLogProbabilities,
    PixelDropout,
    Recoverability,
    correction_ratio,
    ml_loo_game,
    rank_reduction_interactions,
    smoothed_game,
)
from lit_advgame.defenses.writer import auc_stderr, defense_aggregates, defense_tables
from lit_advgame.interactions import InputGame, interaction_change
from lit_advgame.predict import load_classifier
from lit_advgame.training.smoothing import RandomizedSmoothing
from tests.conftest import CONFIGS, REPO_ROOT
from tests.tb_utils import read_image_tags, read_scalars
from tests.test_analysis import assert_resumes_and_runs_once_under_ddp

STANDARD = REPO_ROOT / "checkpoints" / "digits_small_cnn.pt"
ROBUST = REPO_ROOT / "checkpoints" / "digits_small_cnn_at.pt"
needs_checkpoints = pytest.mark.skipif(
    not (STANDARD.is_file() and ROBUST.is_file()), reason="checkpoints/ not built (scripts/make_checkpoints.sh)"
)
MODELS = [{"path": str(STANDARD), "name": "standard"}, {"path": str(ROBUST), "name": "adversarial"}]
SEED = 3
ORDERS = [1, 7, 13]
GAME = {"grid": 4, "orders": ORDERS, "num_pairs": 2, "num_contexts": 3}
ATTACK = {"eps": "64/255", "step_size": "4/255", "steps": 10}
DETECTION = {"num_contexts": 2}
DROPOUT = {"eps": "32/255", "step_size": "2/255", "steps": 16}
RECOVERY = {"steps": 3}

pytestmark = pytest.mark.usefixtures("one_thread")  # one intra-op thread (tests/conftest.py)


def digits_batch(count: int) -> tuple[torch.Tensor, torch.Tensor, DigitsDataModule]:
    data = DigitsDataModule()
    test = data.dataset("test")
    x = torch.stack([test[i][0] for i in range(count)])
    y = torch.tensor([int(test[i][1]) for i in range(count)])
    return x, y, data


def make_defenses(data: DigitsDataModule, models=MODELS, **kwargs) -> DefenseAnalysis:
    options = {
        "game": GAME,
        "attack": "pgd",
        "attack_kwargs": ATTACK,
        "detection": DETECTION,
        "dropout": DROPOUT,
        "recovery": RECOVERY,
        "seed": SEED,
        "masked_batch_size": 64,
        "num_classes": 10,
        "input_shape": (1, 16, 16),
        "mean": data.mean,
        "std": data.std,
    }
    return DefenseAnalysis(models, **{**options, **kwargs})


def summarize(analysis: DefenseAnalysis, records: dict) -> dict:
    meta = analysis.run_metadata()
    summary = aggregate(records, meta)
    defense_aggregates(records, meta, summary)
    return summary


# ----------------------------------------------------------------------------- per image and aggregated
@needs_checkpoints
def test_per_image_records_and_aggregates_equal_the_functional_defenses_api():
    x, y, data = digits_batch(6)
    analysis = make_defenses(data)
    indices = list(range(20, 26))
    records = analysis.analyze_batch(x, y, indices)
    columns = analysis.run_metadata()["detection_columns"]
    assert [c["detector"] for c in columns] == ["ml_loo"] + ["shapley"] * 3 + ["interaction"] * 3
    assert [c["order"] for c in columns] == [15, *ORDERS, *ORDERS]  # ML-LOO: order n - 1 of 16 players
    assert records["detection_clean"].shape == (6, 2, 7) and records["dropout_corrected"].shape == (6, 2, 4)
    expected_analyzed = records["clean_correct"] & records["adv_misclassified"]  # only_fooled; pgd always "reaches"
    assert torch.equal(records["analyzed"], expected_analyzed) and int(expected_analyzed.sum()) >= 4
    for k, model in enumerate(analysis.models):
        scores: dict[str, list] = {"clean": [], "adversarial": []}
        corrected = counted = 0
        distances = []
        for b, index in enumerate(indices):
            xb, yb, x_adv = x[b : b + 1], y[b : b + 1], records["x_adv"][b : b + 1, k]
            if records["analyzed"][b, k]:
                seed = image_seed(SEED, "detection", index)
                row = {"clean": [], "adversarial": []}
                for kind in ("ml_loo", "shapley", "interaction"):
                    orders = None if kind == "ml_loo" else ORDERS
                    detector = AttributionDetector(kind, orders, num_contexts=2, num_pairs=2, random_state=seed)
                    for key, image in (("clean", xb), ("adversarial", x_adv)):
                        row[key].append(detector.scores(ml_loo_game(model, image, grid=4, batch_size=64)).scores[0])
                for key in row:
                    scores[key].append(torch.cat(row[key]))
                    assert torch.equal(records[f"detection_{key}"][b, k], scores[key][-1])
                rank = rank_reduction_interactions(
                    InputGame(model, xb, yb, grid=4, batch_size=64),
                    InputGame(model, x_adv, yb, grid=4, batch_size=64),
                    ORDERS,
                    num_pairs=2,
                    num_contexts=3,
                    generator=torch.Generator().manual_seed(image_seed(SEED, "rank", index)),
                )
                assert torch.equal(records["rank_k4_difference"][b, k], rank.difference[0].per_image[0])
                assert torch.equal(records["rank_k16_normal_change_stderr"][b, k], rank.normal_change[1].stderr)
            else:
                assert (
                    records["detection_clean"][b, k].isnan().all() and records["rank_k4_difference"][b, k].isnan().all()
                )
            if not records["clean_correct"][b, k]:
                assert not records["recovery_evaluated"][b, k] and not records["dropout_corrected"][b, k].any()
                continue
            attack = build_attack("pgd", model, seed=image_seed(SEED, "dropout_attack", index), norm="linf", **DROPOUT)
            stopped = EarlyStoppedAttack(attack).run(xb, yb)
            assert records["dropout_steps"][b, k] == stopped.steps[0]
            transforms = [
                PixelDropout(rate, seed=image_seed(SEED, f"dropout:dropout{rate:g}", index)) for rate in (0.1, 0.2, 0.3)
            ]
            transforms.append(functools.partial(Cutout(seed=image_seed(SEED, "dropout:cutout", index)), model=model))
            for t, transform in enumerate(transforms):
                result = correction_ratio(model, stopped.x_adv, yb, transform)
                assert bool(records["dropout_corrected"][b, k, t]) == bool(result.corrected[0])
                assert bool(records["dropout_fooled"][b, k]) == bool(result.counted[0])
                corrected += int(result.corrected[0]) * (t == 2)
            counted += int(records["dropout_fooled"][b, k])
            recovery = Recoverability(steps=3, seed=image_seed(SEED, "recovery", index)).evaluate(model, xb, yb)
            assert records["recovery_recovered_distance"][b, k] == recovery.recovered_distance[0]
            assert bool(records["recovery_restored"][b, k]) == bool(recovery.restored[0])
            distances.append(float(recovery.adversarial_distance[0]))
        # the aggregates of the job are those of the functional API on the same images
        entry = summarize(analysis, records)["models"][analysis.model_names[k]]
        count = len(scores["clean"])
        assert entry["detection"]["num_images"] == count
        clean, adversarial = torch.stack(scores["clean"]), torch.stack(scores["adversarial"])
        labels = [0] * count + [1] * count
        for c, column in enumerate(columns):
            d = entry["detection"][column["detector"]]
            at = d["orders"].index(column["order"])
            assert d["auc"][at] == pytest.approx(roc_auc_score(labels, torch.cat([clean[:, c], adversarial[:, c]])))
            assert d["auc_stderr"][at] == pytest.approx(auc_stderr(d["auc"][at], count, count))
        dropout = entry["dropout"]
        assert dropout["num_fooled"] == counted
        ratio = dropout["transforms"]["dropout0.3"]["correction_ratio"]
        assert ratio == pytest.approx(corrected / counted) if counted else ratio != ratio
        recovery_all = entry["recovery"]["all"]
        assert recovery_all["num_images"] == len(distances)
        assert recovery_all["adversarial_distance"] == pytest.approx(sum(distances) / len(distances))
        analysed = records["analyzed"][:, k]
        mean = records["rank_k4_difference"][analysed, k].mean(0)
        torch.testing.assert_close(torch.tensor(entry["rank_k4_difference"], dtype=torch.float64), mean)
    # per image: a sub-batch gives the same records as the whole batch
    part = analysis.analyze_batch(x[2:4], y[2:4], indices[2:4])
    for key, value in part.items():
        torch.testing.assert_close(value, records[key][2:4], rtol=0, atol=0, equal_nan=True, msg=key)


def _smoothing_checkpoint(tmp_path: Path, data: DigitsDataModule) -> Path:
    """A RandomizedSmoothing Lightning checkpoint (σ = 0.3) holding the standard digits network: a stand-in for a
    trained one."""
    pl.seed_everything(0)
    module = RandomizedSmoothing(
        arch="small_cnn",
        sigma=0.3,
        certify=False,
        num_classes=10,
        input_shape=(1, 16, 16),
        mean=data.mean,
        std=data.std,
    )
    options = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=0,
        enable_model_summary=False,
        **options,
    )
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=16))
    module.classifier.load_state_dict(load_classifier(str(STANDARD)).model.state_dict())  # a classifier that works
    path = tmp_path / "smoothing.ckpt"
    trainer.save_checkpoint(path)
    return path


@needs_checkpoints
def test_a_smoothing_checkpoint_is_analysed_as_its_base_classifier_under_noise(tmp_path):
    x, y, data = digits_batch(3)
    path = _smoothing_checkpoint(tmp_path, data)
    models = [{"path": str(path), "name": "smoothing"}]
    analysis = make_defenses(
        data,
        models,
        smoothed={"smoothing": {"num_draws": 2, "seed": 1}},  # sigma from the checkpoint
        detection=None,
        dropout=None,
        recovery=None,
        rank=None,
        only_fooled=False,
        only_reached=False,
    )
    noisy = analysis.models[0]
    assert isinstance(noisy, NoisyLogProbabilities) and noisy.sigma == pytest.approx(0.3) and noisy.num_draws == 2
    assert analysis.run_metadata()["smoothed"]["smoothing"]["sigma"] == pytest.approx(0.3)
    assert "x2 base-classifier passes" in analysis.describe_costs(3)
    records = analysis.analyze_batch(x, y, [0, 1, 2])
    for b in torch.nonzero(records["analyzed"][:, 0]).flatten().tolist():
        xb, yb = x[b : b + 1], y[b : b + 1]
        games = [  # v(S) = E_ε[log p(y | x_S + ε)] (supplement I), the same draws for x and x_adv
            smoothed_game(noisy.base, image, yb, sigma=0.3, num_draws=2, seed=1, grid=4, batch_size=64)
            for image in (xb, records["x_adv"][b : b + 1, 0])
        ]
        generator = torch.Generator().manual_seed(image_seed(SEED, "game", b))
        expected = interaction_change(*games, ORDERS, num_pairs=2, num_contexts=3, generator=generator)
        assert torch.equal(records["delta"][b, 0], expected.per_image[0])
    assert records["analyzed"].any()


@needs_checkpoints
def test_switched_off_analyses_leave_no_records_and_the_tables_still_build():
    x, y, data = digits_batch(2)
    analysis = make_defenses(data, interactions=False, detection=None, dropout=None, recovery=None)
    assert analysis.run_metadata()["rank_labels"] == ["k4", "k16"] and "rank 438" in analysis.describe_costs(None)
    records = analysis.analyze_batch(x, y, [0, 1])
    assert not {"clean", "delta", "detection_clean", "dropout_corrected", "recovery_evaluated"} & set(records)
    assert records["rank_k16_adversarial_change"].shape == (2, 2, 3)
    summary = summarize(analysis, records)
    assert summary["analyses"] == ["rank"] and "detection" not in summary["models"]["standard"]
    tables = defense_tables(summary)
    assert "Rank reduction" in tables and "standard, k4" in tables and "Detection" not in tables


def test_bad_settings_get_clear_errors(tmp_path):
    data = DigitsDataModule()
    with pytest.raises(ValueError, match="unknown detection option.*'order'"):
        make_defenses(data, detection={"order": [1]})
    with pytest.raises(ValueError, match=r"detection \(shapley\[iqr\], n = 16 players\).*\[0, 15\]"):
        make_defenses(data, detection={"orders": [16]})
    with pytest.raises(ValueError, match="dropout.rates .*must lie in \\[0, 1\\); got 1.0"):
        make_defenses(data, dropout={"rates": [0.1, 1.0]})
    with pytest.raises(ValueError, match="rank.fractions must lie in \\(0, 1\\]"):
        make_defenses(data, rank={"fractions": [0.25, 0.0]})
    with pytest.raises(ValueError, match="dropout.cutout_size: cutout size 17 does not fit a 16x16 image"):
        make_defenses(data, dropout={"cutout_size": 17})
    with pytest.raises(ValueError, match="unknown detection.detectors 'loo'|detection.detectors.*'loo'"):
        make_defenses(data, detection={"detectors": ["loo"]})
    with pytest.raises(ValueError, match="smoothed names model 'noisy', which is not among the models"):
        make_defenses(data, smoothed={"noisy": {"sigma": 0.25}})
    with pytest.raises(ValueError, match="smoothed\\['standard'\\].sigma is null but model 'standard' is no"):
        make_defenses(data, smoothed={"standard": {}})
    with pytest.raises(ValueError, match="recovery.seed may not be set"):
        make_defenses(data, recovery={"seed": 4})
    with pytest.raises(ValueError, match="every analysis is off"):
        make_defenses(data, interactions=False, detection=None, dropout=None, recovery=None, rank=None)
    with pytest.raises(ValueError, match="dropout attack: .*'fgsmx'|unknown .*'fgsmx'"):
        make_defenses(data, dropout={"attack": "fgsmx"})
    tight = make_defenses(data, game={**GAME, "max_forward_passes": 200})  # detection needs up to 193 per game
    with pytest.raises(ValueError, match=r"rank reduction \(.* 6 game\(s\)\) needs up to 438 .*=200"):
        tight.check_budgets()
    tight = make_defenses(data, game={**GAME, "max_forward_passes": 150}, rank=None)
    with pytest.raises(ValueError, match=r"detection: shapley\[iqr\].*needs up to 193 .*max_forward_passes=150"):
        tight.check_budgets()


# ----------------------------------------------------------------------------- the job: CLI, resume, DDP
def defenses_config(
    tmp_path: Path, out: Path, subcommand: bool = True, progress: bool = False, report: bool = True
) -> Path:
    """configs/defenses_digits.yaml with a tiny budget (4 digits in 2 batches), the standard model and the standard
    model under noise (a stand-in smoothed model), absolute paths; ``report=False``: no figures, no logger."""
    cfg = yaml.safe_load((CONFIGS / "defenses_digits.yaml").read_text())
    if not subcommand:
        cfg.pop("return_predictions")
    init = cfg["model"]["init_args"]
    init.update(
        models=[{"path": str(STANDARD), "name": "standard"}, {"path": str(STANDARD), "name": "noisy"}],
        smoothed={"noisy": {"sigma": 0.25, "num_draws": 1}},
        game=GAME,
        attack_kwargs={"norm": "linf", **ATTACK},
        seed=SEED,
    )
    init["detection"].update(num_contexts=2)
    init["dropout"].update(steps=8, eps="32/255", step_size="4/255")
    init["recovery"].update(steps=2)
    cfg["data"]["init_args"].update(predict_limit=4, batch_size=2)
    cfg["trainer"]["callbacks"][0]["init_args"]["output_dir"] = str(out)
    cfg["trainer"]["logger"]["init_args"]["save_dir"] = str(out)
    cfg["trainer"].update(default_root_dir=str(out), enable_progress_bar=progress, accelerator="cpu")
    if not report:
        cfg["trainer"]["callbacks"][0]["init_args"]["figures"] = False
        cfg["trainer"]["logger"] = False
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@needs_checkpoints
def test_cli_job_writes_tables_figures_and_tags_resumes_and_runs_each_image_once_under_ddp(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    single = tmp_path / "single"
    main(["predict", "--config", str(defenses_config(tmp_path, single, progress=True))])
    printed = capsys.readouterr().out
    assert "Explaining defenses" in printed and "Attacking" not in printed  # the progress bar names the job's work
    assert "DefenseWriter: explaining defenses 4 images into" in printed
    assert "DefenseAnalysis: up to" in printed and "forward passes per image and model" in printed  # costs first
    assert printed.index("DefenseAnalysis: up to") < printed.index("Detection ROC-AUC")
    reference, meta = load_analysis(single)
    assert reference["index"].tolist() == list(range(4)) and meta["kind"] == "defense_analysis"
    summary = json.loads((single / "summary.json").read_text())
    assert summary["analyses"] == ["interactions", "detection", "dropout", "recovery", "rank"]
    for entry in summary["models"].values():
        assert set(entry["detection"]) == {"num_images", "ml_loo", "shapley", "interaction"}
        assert list(entry["dropout"]["transforms"]) == ["dropout0.1", "dropout0.2", "dropout0.3", "cutout"]
        assert entry["recovery"]["all"]["num_images"] == round(4 * entry["clean_accuracy"])
        assert len(entry["rank_k16_difference"]) == 3 and entry["forward_passes"]["detection"] > 0
    table = (single / "summary.md").read_text()
    for title in ("Detection ROC-AUC", "corrected by the transform", "Recoverability (fooled", "Rank reduction"):
        assert title in table
    for name in ("per_image.csv", "defenses_per_image.csv", "detection_per_image.csv", "defenses_per_image.json"):
        assert (single / name).is_file(), name
    assert len((single / "defenses_per_image.csv").read_text().splitlines()) == 1 + 4 * 2
    for name in ("detection_auc_standard", "detection_auc_noisy", "rank_difference", "correction", "utility"):
        assert (single / "figures" / f"{name}.png").is_file(), name
    scalars = read_scalars(single / "tensorboard")
    assert sorted({step for step, _ in scalars["analysis/standard/detection/shapley/auc"]}) == ORDERS  # step: m
    assert [step for step, _ in scalars["analysis/noisy/detection/ml_loo/auc"]] == [15]
    assert sorted({step for step, _ in scalars["analysis/noisy/rank/k4/difference"]}) == ORDERS
    assert {"analysis/standard/dropout/cutout/corrected", "analysis/noisy/recovery/closer"} <= set(scalars)
    tags = read_image_tags(single / "tensorboard")
    assert {"analysis/detection_auc/standard", "analysis/rank_difference", "analysis/correction"} <= tags

    # killed after the first of two batches, then restarted; 2 processes under DDP: the one-process records
    run = assert_resumes_and_runs_once_under_ddp(
        tmp_path,
        lambda out, subcommand: defenses_config(tmp_path, out, subcommand=subcommand, report=False),
        DefenseWriter,
        reference,
    )
    assert run.stdout.count("Detection ROC-AUC (adversarial positive) ± SE, ml_loo") == 1  # printed once (rank 0)


@needs_checkpoints
def test_the_analysis_job_progress_bar_names_its_work(tmp_path, capsys):
    data = DigitsDataModule(predict_limit=2, batch_size=2)
    analysis = InteractionAnalysis(
        [{"path": str(STANDARD), "name": "standard"}],
        game={"grid": 2, "orders": [0, 1], "num_pairs": 1, "num_contexts": 1},
        attack="pgd",
        attack_kwargs={"steps": 1},
        only_reached=False,
        mean=data.mean,
        std=data.std,
    )
    writer = AnalysisWriter(str(tmp_path / "run"), figures=False)
    trainer = pl.Trainer(accelerator="cpu", inference_mode=False, logger=False, callbacks=[writer])
    trainer.predict(analysis, datamodule=data, return_predictions=False)
    printed = capsys.readouterr().out
    assert "Analysing" in printed and "Attacking" not in printed  # was "Attacking" (issue 12)
    assert f"AnalysisWriter: analysing 2 images into {str(tmp_path / 'run')!r}" in printed
