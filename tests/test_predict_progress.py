"""Long predict runs show progress and end with a summary (issue 10): the image-counting progress bar, the
line saying what a resumed run finds saved, and the summary table (printed, summary.json, summary.md)."""

from __future__ import annotations

import json
import math

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from lit_advgame.predict import load_adversarial
from lit_advgame.predict.progress import AttackProgressBar, loader_batches
from lit_advgame.predict.writer import summary_table
from tests.test_predict import needs_checkpoints
from tests.test_predict_reliability import run_predict


class KeepProgressBar(pl.Callback):
    """Remembers the trainer's progress bar at the end of predict."""

    bar = None

    def on_predict_end(self, trainer, pl_module):
        self.bar = trainer.progress_bar_callback


@needs_checkpoints
def test_a_resumed_run_says_what_is_saved_counts_images_and_ends_with_the_summary_of_its_records(tmp_path, capsys):
    out = tmp_path / "run"
    keep = KeepProgressBar()
    run_predict(out, 16, attack="pgd", overrides={"steps": 2}, progress_bar=True, callbacks=[keep])
    first = capsys.readouterr().out
    assert f"AdversarialWriter: attacking 16 images into {str(out)!r}" in first
    assert type(keep.bar) is AttackProgressBar and keep.bar.images == 16  # Lightning's default bar, replaced

    writer = run_predict(out, 40, attack="pgd", overrides={"steps": 2}, progress_bar=True, callbacks=[keep])
    printed = capsys.readouterr().out
    assert f"AdversarialWriter: resuming {str(out)!r}: 16/40 already saved, 24 to attack" in printed
    bar = keep.bar.predict_progress_bar
    assert (bar.n, bar.total, bar.initial) == (40, 40, 16)  # the saved batches do not count towards the rate
    assert "/40 [" in printed and "img/s" in printed

    summary = json.loads((out / "summary.json").read_text())
    adv = load_adversarial(out)
    fooled = adv.records["source_margin_adv"] > 0
    clean_correct = adv.records["source_margin_clean"] < 0
    assert summary["num_examples"] == 40 and summary["attacked_this_run"] == 24
    assert summary["whitebox_success"] == pytest.approx(float(fooled.float().mean()))
    assert summary["whitebox_success_on_clean_correct"] == pytest.approx(float(fooled[clean_correct].float().mean()))
    linf = (adv.x_adv - adv.x).flatten(1).abs().amax(dim=1).mean()
    assert summary["mean_perturbation_norm"] == pytest.approx(float(linf), rel=1e-5)
    assert summary["norm"] == "linf" and summary["eps"] == pytest.approx(16 / 255)  # the preset's
    assert summary["seconds"] > 0 and summary["images_per_second"] == pytest.approx(24 / summary["seconds"])
    assert writer.summary == summary
    table = (out / "summary.md").read_text()
    assert table == summary_table(summary, title=f"digits_small_cnn/pgd ({out})")
    assert table.strip() in printed and printed.count("| examples |") == 1
    row = table.strip().splitlines()[-1].split("|")[1:-1]
    assert [cell.strip() for cell in row[:5]] == [
        "40",
        "24",
        f"{100 * float(clean_correct.float().mean()):.1f}",
        f"{100 * float(fooled.float().mean()):.1f}",
        f"{100 * float(fooled[clean_correct].float().mean()):.1f}",
    ]


@needs_checkpoints
def test_without_a_progress_bar_the_lines_are_still_printed_and_no_bar_is_added(tmp_path, capsys):
    keep = KeepProgressBar()
    run_predict(tmp_path / "run", 8, attack="pgd", overrides={"steps": 1}, callbacks=[keep])
    printed = capsys.readouterr().out
    assert keep.bar is None and "Attacking" not in printed
    assert "attacking 8 images into" in printed and "| examples |" in printed


def test_loader_batches_follow_a_sequential_sampler_and_decline_random_ones():
    data = TensorDataset(torch.zeros(10, 1), torch.zeros(10))
    assert loader_batches(DataLoader(data, batch_size=4)) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert loader_batches(DataLoader(data, batch_size=4, drop_last=True)) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert loader_batches(DataLoader(data, batch_size=4), max_batches=1) == [[0, 1, 2, 3]]
    assert loader_batches(DataLoader(data, batch_size=4), max_batches=math.inf) == loader_batches(
        DataLoader(data, batch_size=4)
    )
    state = torch.get_rng_state()
    assert loader_batches(DataLoader(data, batch_size=4, shuffle=True)) is None  # no random draw to plan it
    assert torch.equal(torch.get_rng_state(), state)
    assert loader_batches(DataLoader(data, batch_size=None)) is None


def test_summary_table_formats_rates_as_percent_and_missing_values_as_dashes():
    table = summary_table(
        {"num_examples": 3, "whitebox_success": 2 / 3, "whitebox_success_on_clean_correct": float("nan"), "norm": "l2"}
        | {"mean_perturbation_norm": 0.123456}
    )
    header, rule, row = table.strip().splitlines()
    assert header == "| examples | white-box success (%) | on clean-correct (%) | mean ‖δ‖₂ |"
    assert rule == "|---:|---:|---:|---:|"
    assert row == "| 3 | 66.7 | – | 0.1235 |"
