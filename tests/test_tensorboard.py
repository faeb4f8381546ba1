"""TensorBoard at a glance: margins instead of ``_stderr`` cards, the cost group last, the Custom Scalars layout,
one-panel figures, image grids, and every tag README.md's "TensorBoard" section names logged under that name."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from tensorboard.plugins.custom_scalar import layout_pb2

from lit_advgame.cli import main
from lit_advgame.interactions import resolve_orders
from lit_advgame.utils.tensorboard import (
    COST_GROUP,
    MARGIN_GROUP,
    Chart,
    example_grid,
    layout_summary,
    log_scalars,
    margin_tags,
    merge_layouts,
    order_bands,
    tensorboard_scalars,
)
from tests.conftest import CONFIGS
from tests.tb_utils import REPO_ROOT, read_images, read_layouts, read_scalars, readme_tags, tag_regex


# ------------------------------------------------------------------------------------------ units
def test_standard_errors_become_margins_and_other_loggers_keep_them(tmp_path):
    metrics = {"d/r0.10": 0.5, "d/r0.10_stderr": 0.125, "d/num_images": 3.0, "orphan_stderr": 1.0}
    assert tensorboard_scalars(metrics) == {
        "d/r0.10": 0.5,
        "zz_margin/d/r0.10/lower": 0.375,
        "zz_margin/d/r0.10/upper": 0.625,
        "d/num_images": 3.0,
        "orphan_stderr": 1.0,  # no estimate of that name: kept as it is
    }
    tb, csv_logger = TensorBoardLogger(tmp_path, name="tb"), CSVLogger(tmp_path, name="csv")
    trainer = pl.Trainer(logger=[tb, csv_logger], enable_checkpointing=False, enable_progress_bar=False)
    log_scalars(trainer, metrics, step=3)
    csv_logger.save()
    scalars = read_scalars(tb.log_dir)
    assert "d/r0.10_stderr" not in scalars
    assert scalars["zz_margin/d/r0.10/upper"] == [(3, 0.625)] and scalars["d/r0.10"] == [(3, 0.5)]
    with open(Path(csv_logger.log_dir) / "metrics.csv", newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    assert float(row["d/r0.10_stderr"]) == 0.125 and int(row["step"]) == 3
    with pytest.warns(DeprecationWarning, match="step="):  # the keyword's old name, for one release
        log_scalars(trainer, {"d/r0.10": 1.0}, epoch=4)
    assert read_scalars(tb.log_dir)["d/r0.10"][-1] == (4, 1.0)


def test_order_bands_split_the_reference_orders_into_low_middle_high():
    orders = resolve_orders("reference", 64)
    bands = order_bands(orders.labels, orders.orders, 64)
    assert [labels for _, labels in bands] == [
        ["r0.10", "r0.20", "r0.30"],
        ["r0.40", "r0.50", "r0.60"],
        ["r0.70", "r0.80", "r0.85", "r0.90", "r0.95"],
    ]
    assert bands[0][0] == "low orders (r0.10-r0.30)"
    assert order_bands(["m1"], [1], 16) == [("low orders (m1)", ["m1"])]  # empty bands are left out


def test_example_grid_rows_are_clean_adversarial_and_amplified_perturbation():
    x = torch.rand(3, 1, 4, 4)
    delta = torch.zeros_like(x)
    delta[:, :, 0, 0], delta[:, :, 1, 1] = 0.01, -0.02
    grid = example_grid(x, x + delta, max_images=2)
    assert grid.shape == (3, 3 * 5 + 1, 2 * 5 + 1)  # 3 rows x 2 columns of 4x4 tiles, padding 1
    tile = lambda row, col: grid[0, 1 + 5 * row : 5 + 5 * row, 1 + 5 * col : 5 + 5 * col]  # noqa: E731
    assert torch.allclose(tile(0, 1), x[1, 0]) and torch.allclose(tile(1, 1), (x + delta)[1, 0])
    amplified = tile(2, 0)
    assert amplified[1, 1] == 0.0 and amplified[0, 0] == pytest.approx(0.75) and amplified[2, 2] == 0.5
    as_bytes = example_grid((255 * x).round().to(torch.uint8), (255 * x).round().to(torch.uint8))
    assert as_bytes.shape == (3, 16, 16) and as_bytes.dtype == torch.float32 and as_bytes.max() <= 1.0
    with pytest.raises(ValueError, match="x and x_adv"):
        example_grid(x, x[:, :, :2])


def test_layout_margin_charts_hold_a_series_per_estimate():
    layout = merge_layouts(
        [
            {"a": [Chart("low", ("p/r0.10", "p/r0.20"), margin=True)]},
            {"a": [Chart("low", ("p/r0.10", "p/r0.20"), margin=True), Chart("lines", ("^p/share/",))], "b": []},
        ]
    )
    assert list(layout) == ["a", "b"] and len(layout["a"]) == 2  # joined, duplicates dropped, order kept
    (value,) = layout_summary(layout).value
    proto = layout_pb2.Layout.FromString(value.tensor.string_val[0])
    margin, lines = proto.category[0].chart
    assert [(s.value, s.lower, s.upper) for s in margin.margin.series] == [
        ("p/r0.10", *margin_tags("p/r0.10")),
        ("p/r0.20", *margin_tags("p/r0.20")),
    ]
    assert list(lines.multiline.tag) == ["^p/share/"]


def test_readme_tag_patterns():
    assert tag_regex("interaction/{clean,delta}/<o>").fullmatch("interaction/delta/r0.95")
    assert not tag_regex("interaction/{clean,delta}/<o>").fullmatch("interaction/share/r0.95")
    assert tag_regex("val/acc_member<i>").fullmatch("val/acc_member12")
    assert tag_regex("zz_margin/<tag>/{lower,upper}").fullmatch("zz_margin/interaction/delta/m3/upper")
    assert not tag_regex("transfer/<source>_to_<target>").fullmatch("transfer/a/b_to_c")


# ------------------------------------------------------------------------------------------ the quickstart
def _tiny_quickstart(tmp_path: Path) -> Path:
    """configs/quickstart.yaml with small callback budgets and members that start trained (one training step)."""
    config = yaml.safe_load((CONFIGS / "quickstart.yaml").read_text())
    for callback in config["trainer"]["callbacks"]:
        args = callback.get("init_args", {})
        if "probe_size" in args:
            args["probe_size"] = 8
        if "game" in args:
            args["game"].update(num_pairs=1, num_contexts=2)
    config["trainer"]["callbacks"].append({"class_path": "tests.tb_utils.TrainedMembers"})
    config["model"]["init_args"]["arch_kwargs"] = {"width": 32}  # the trained small_cnn's width
    path = tmp_path / "quickstart_tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """Tags, images and layouts of a one-step quickstart and of the README's predict command with a logger."""
    tmp_path = tmp_path_factory.mktemp("tensorboard")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.chdir(tmp_path)
        once = ["--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1"]
        main(["fit", "--config", str(_tiny_quickstart(tmp_path)), "--trainer.max_epochs", "1", *once,
              "--trainer.limit_train_batches", "1", "--trainer.log_every_n_steps", "1",
              "--trainer.enable_progress_bar", "false"])  # fmt: skip
        models = tmp_path / "models.yaml"  # the attack config's relative checkpoint paths, from here
        checkpoints = REPO_ROOT / "checkpoints"
        source, target = str(checkpoints / "digits_small_cnn.pt"), str(checkpoints / "digits_lenet.pt")
        models.write_text(yaml.safe_dump({"model": {"init_args": {"source": source, "score_models": [target]}}}))
        main(["predict", "--config", str(CONFIGS / "attack_quickstart.yaml"), "--config", str(models),
              "--trainer.logger", "TensorBoardLogger", "--trainer.logger.save_dir", "runs",
              "--trainer.logger.name", "attack_quickstart", "--trainer.logger.default_hp_metric", "false",
              "--model.init_args.overrides.steps", "2", "--data.init_args.predict_limit", "8",
              "--trainer.enable_progress_bar", "false"])  # fmt: skip
    fit_dir, predict_dir = tmp_path / "runs/quickstart/version_0", tmp_path / "runs/attack_quickstart/version_0"
    return {
        "scalars": {**read_scalars(fit_dir), **read_scalars(predict_dir)},
        "images": {**read_images(fit_dir), **read_images(predict_dir)},
        "layouts": read_layouts(fit_dir),
    }


def test_every_tag_the_readme_names_is_logged_and_every_logged_tag_is_named(logged):
    rows = readme_tags()
    assert {row.kind for row in rows} == {"scalar", "image"} and len(rows) > 30
    logged_tags = {"scalar": set(logged["scalars"]), "image": set(logged["images"])}
    never = [row.text for row in rows if not any(row.matches(tag) for tag in logged_tags[row.kind])]
    assert not never, f"README.md names tags that are not logged: {never}"
    for kind, tags in logged_tags.items():
        unnamed = sorted(tag for tag in tags if not any(r.matches(tag) for r in rows if r.kind == kind))
        assert not unnamed, f"logged {kind} tags missing from README.md's TensorBoard section: {unnamed}"


def test_bookkeeping_sorts_last_and_standard_errors_are_margins(logged):
    scalars = logged["scalars"]
    assert scalars["interaction/num_images"][-1][1] > 0 and scalars["transfer/num_points"][-1][1] > 0
    assert not [tag for tag in scalars if tag.endswith("_stderr")]
    groups = sorted({tag.split("/", 1)[0] for tag in scalars})
    assert groups[-2:] == [COST_GROUP, MARGIN_GROUP] and groups[0] == "attack"
    bookkeeping = [t for t in scalars if ("cost" in t or "forward_passes" in t) and not t.startswith(COST_GROUP)]
    assert not bookkeeping
    estimates = ["interaction/delta/r0.50", "interaction/clean/r0.95", "disentanglement/r0.10"]
    for tag in [*estimates, "perturbation_interaction/value"]:
        lower, upper = (scalars[t][-1][1] for t in margin_tags(tag))
        value = scalars[tag][-1][1]
        assert lower <= value <= upper and upper - value == pytest.approx(value - lower, abs=1e-6)


def test_one_layout_per_run_with_the_cost_last_and_every_chart_filled(logged):
    (layout,) = logged["layouts"]
    titles = [category.title for category in layout.category]
    assert titles[0].startswith("interaction/delta") and titles[-1].startswith("cost")
    assert any(title.startswith("disentanglement") for title in titles)
    scalars = set(logged["scalars"])
    margins = 0
    for category in layout.category:
        for chart in category.chart:
            if chart.HasField("margin"):
                for series in chart.margin.series:
                    margins += 1
                    assert {series.value, series.lower, series.upper} <= scalars, chart.title
            else:
                for pattern in chart.multiline.tag:
                    assert any(re.search(pattern, tag) for tag in scalars), (chart.title, pattern)
    assert margins == 4 * 11 + 11 + 1  # I clean/adversarial, ΔI, ΔJ and D per order, E_ij[I_ij(δ)]


def test_figures_are_one_panel_sized_for_a_card_and_grids_show_three_rows(logged):
    images = logged["images"]
    for tag in ("interaction/clean_vs_adversarial", "interaction/delta", "interaction/utility", "interaction/share",
                "disentanglement/curve"):  # fmt: skip
        assert images[tag][-1][1].size == (400, 300), tag
    width, height = images["transfer/matrix"][-1][1].size
    assert 400 <= width <= 500 and 300 <= height <= 400
    for tag in ("interaction/examples", "perturbation_interaction/examples", "attack/examples"):
        width, height = images[tag][-1][1].size  # clean, adversarial and δ rows of 16x16 digits, padding 1
        assert height == 3 * 17 + 1 and (width - 1) % 17 == 0 and 1 <= (width - 1) // 17 <= 8, tag
    assert images["attack/examples"][-1][1].size[0] == 8 * 17 + 1  # the first 8 of the 8 attacked
