"""Transfer evaluation: O(N·T) leave-one-out against brute force, the success / utility / white-box
numbers against direct computation, the interaction measurement, the report files, TensorBoard, CLI."""

from __future__ import annotations

import json
import math
import os
import re
import stat
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from lit_advgame.evaluation import (
    evaluate_transfer,
    loo_best_steps,
    loo_best_steps_across_targets,
    loo_success,
    loo_success_rate,
    measure_interaction,
    pearson,
)
from lit_advgame.evaluation.cli import main as evaluation_main
from lit_advgame.evaluation.transfer import _stderr
from lit_advgame.models import build_model
from lit_advgame.predict import (
    AdversarialSet,
    export_classifier,
    load_classifier,
    margins,
)
from lit_advgame.utils.io import atomic_torch_save
from tests.tb_utils import read_scalars


# ----------------------------------------------------------------------------- LOO
def brute_force_loo(success: torch.Tensor) -> tuple[list[int], list[bool]]:
    """The official O(N²·T) loops: for each i, the success rate of each step on the other images."""
    n, steps = success.shape
    best, hits = [], []
    for i in range(n):
        rates = []
        for t in range(steps):
            others = [float(success[j, t]) for j in range(n) if j != i]
            rates.append(sum(others) / len(others) if others else 0.0)
        t_star = max(range(steps), key=lambda t: (rates[t], -t))  # first maximal step
        best.append(t_star)
        hits.append(bool(success[i, t_star]))
    return best, hits


@pytest.mark.parametrize("seed", range(6))
def test_loo_equals_brute_force_on_random_scores(seed):
    g = torch.Generator().manual_seed(seed)
    n = [1, 2, 7, 25, 40, 13][seed]
    steps = [5, 1, 9, 12, 30, 4][seed]
    scores = torch.randn(n, steps, generator=g) + torch.linspace(-1, 1, steps)  # success grows with t
    if seed % 2:
        scores = scores.round()  # many exact ties between steps
    success = scores > 0
    best, hits = brute_force_loo(success)
    assert loo_best_steps(success).tolist() == best
    assert loo_success(success).tolist() == hits
    assert loo_success_rate(success) == pytest.approx(sum(hits) / n)
    assert loo_best_steps(success.float()).tolist() == best  # 0/1 floats too


def test_loo_picks_the_first_of_tied_steps_and_uses_the_other_images():
    success = torch.tensor([[0, 1, 1], [1, 0, 1], [0, 1, 0]], dtype=torch.bool)
    # others' counts per step: image 0 (1, 1, 1) -> the first step; image 1 (0, 2, 1); image 2 (1, 1, 2)
    assert loo_best_steps(success).tolist() == [0, 1, 2]
    assert loo_success(success).tolist() == [False, False, False]  # each image fails where the others succeed
    assert loo_success(success[:, [2, 1, 0]]).tolist() == [True, False, False]


def test_loo_across_targets_equals_brute_force():
    g = torch.Generator().manual_seed(1)
    success = torch.rand(3, 6, 5, generator=g) > 0.5
    expected = torch.zeros(3, 6, dtype=torch.long)
    for k in range(3):
        for i in range(6):
            counts = [sum(int(success[kk, i, t]) for kk in range(3) if kk != k) for t in range(5)]
            expected[k, i] = max(range(5), key=lambda t: (counts[t], -t))
    assert torch.equal(loo_best_steps_across_targets(success), expected)


def test_loo_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\(N, T\)"):
        loo_best_steps(torch.zeros(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="0/1"):
        loo_best_steps(torch.rand(3, 4))
    with pytest.raises(TypeError):
        loo_best_steps([[1, 0]])


# ----------------------------------------------------------------------------- evaluation
@pytest.fixture
def setup(tmp_path):
    """Two random target models saved as files, one source model, and a synthetic attack run."""
    torch.manual_seed(0)
    paths = {}
    for name, arch in (("t_lenet", "lenet"), ("t_mlp", "mlp"), ("src", "small_cnn")):
        model = build_model(arch, 10, 1, 16, mean=[0.3], std=[0.3])
        paths[name] = tmp_path / f"{name}.pt"
        export_classifier(model, paths[name], arch=arch, num_classes=10, input_shape=(1, 16, 16))
    g = torch.Generator().manual_seed(5)
    n, steps = 30, 6
    x = torch.rand(n, 1, 16, 16, generator=g)
    x_adv = (x + 0.2 * torch.randn(n, 1, 16, 16, generator=g)).clamp(0, 1)
    label = torch.randint(0, 10, (n,), generator=g)
    records = {
        "index": torch.arange(n),
        "label": label,
        "x": x,
        "x_adv": x_adv,
        "source_margin_clean": torch.randn(n, generator=g) - 0.5,
        "source_margin_adv": torch.randn(n, generator=g),
        "step_scores": torch.randn(n, steps, 1, generator=g),
    }
    meta = {
        "name": "src/pgd",
        "source_names": ["src"],
        "sources": [{"path": str(paths["src"]), "name": "src"}],
        "attack": "pgd",
        "score_models": ["t_lenet"],
    }
    run = tmp_path / "run"
    run.mkdir()
    atomic_torch_save({"records": records, "meta": meta}, run / "adversarial.pt")
    return paths, AdversarialSet(torch.arange(n), label, x, x_adv, meta, records), run


@pytest.mark.parametrize("subset", ["source_correct", "all", "both_correct"])
def test_report_numbers_equal_direct_computation(setup, subset):
    paths, adv, _ = setup
    report = evaluate_transfer(
        adv, [str(paths["t_lenet"]), str(paths["t_mlp"])], subset=subset, interaction=False, device="cpu"
    )
    row = report.rows[0]
    assert report.targets == ["t_lenet", "t_mlp"] and row.source == "src" and row.method == "pgd"
    source_ok = adv.records["source_margin_clean"] < 0
    rows = torch.ones_like(source_ok) if subset == "all" else source_ok
    assert row.whitebox_success == pytest.approx(float((adv.records["source_margin_adv"][rows] > 0).float().mean()))
    delta = (adv.x_adv - adv.x)[rows].flatten(1)
    assert row.perturbation_l2 == pytest.approx(float(delta.norm(dim=1).mean()), rel=1e-5)
    assert row.perturbation_linf == pytest.approx(float(delta.abs().amax(dim=1).mean()), rel=1e-5)
    for name in report.targets:
        model = load_classifier(str(paths[name])).model
        with torch.no_grad():
            clean, fooled = margins(model(adv.x), adv.label), margins(model(adv.x_adv), adv.label)
        mask = rows & (clean < 0) if subset == "both_correct" else rows
        cell = row.targets[name]
        assert cell.num_images == int(mask.sum())
        if cell.num_images == 0:
            assert math.isnan(cell.success)
            continue
        assert cell.success == pytest.approx(float((fooled[mask] > 0).float().mean()))
        assert cell.utility == pytest.approx(float((fooled - clean)[mask].mean()), abs=1e-6)
        assert cell.clean_accuracy == pytest.approx(float((clean < 0).float().mean()))
        if name == "t_lenet":  # per-step scores recorded for this target: LOO on them
            _, hits = brute_force_loo(adv.records["step_scores"][mask, :, 0] > 0)
            assert cell.success_loo == pytest.approx(sum(hits) / len(hits))
            assert len(cell.step_success) == 6
        else:  # nothing recorded per step
            assert math.isnan(cell.success_loo) and cell.step_success is None


def test_interaction_is_zero_for_zero_perturbations_and_linear_two_class_models():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 1, 8, 8, generator=g)
    y = torch.randint(0, 2, (5,), generator=g)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))  # v(S) is linear in δ_S: no interaction
    adv = AdversarialSet(torch.arange(5), y, x, (x + 0.1 * torch.randn(5, 1, 8, 8, generator=g)).clamp(0, 1))
    mean, _, per_image = measure_interaction(linear, adv, {"grid": 4})
    assert per_image.abs().max() < 1e-5 and abs(mean) < 1e-5
    cnn = build_model("small_cnn", 10, 1, 8)
    unperturbed = AdversarialSet(torch.arange(5), y, x, x.clone())
    assert measure_interaction(cnn, unperturbed, {"grid": 4})[2].abs().max() < 1e-6
    with pytest.raises(ValueError, match="unknown interaction option"):
        measure_interaction(cnn, unperturbed, {"grids": 4})


def test_report_files_tensorboard_and_table_shape(setup, tmp_path):
    paths, _, run = setup
    out = tmp_path / "report"
    report = evaluate_transfer(
        [run, run],
        [str(paths["t_lenet"]), str(paths["t_mlp"])],
        labels=["src/pgd", "src/pgd+ir"],
        interaction={"grid": 4, "num_samples": 8},
        device="cpu",
        output_dir=out,
    )
    for name in ("report.json", "report.csv", "report.md", "utility_vs_interaction.png"):
        assert (out / name).is_file(), name
    data = json.loads((out / "report.json").read_text())
    assert [r["name"] for r in data["rows"]] == ["src/pgd", "src/pgd+ir"]
    assert data["rows"][0]["interaction"] == data["rows"][1]["interaction"]  # same run, seeded measurement
    assert len((out / "report.csv").read_text().strip().splitlines()) == 1 + 2 * 2
    table = report.markdown_table("success_loo").splitlines()
    assert table[0] == "| Source | Method | white-box | t_lenet | t_mlp | interaction | ‖δ‖₂ |"
    assert table[2].startswith("| src | pgd |") and table[3].startswith("|  | pgd+ir |")  # grouped by source
    assert "–" in table[2].split("|")[5]  # no LOO for t_mlp (nothing recorded per step)
    scalars = read_scalars(out / "tensorboard")
    assert "transfer/src/pgd/t_lenet/success_loo" in scalars and "source/src/pgd/interaction" in scalars
    assert "transfer_step/src/pgd/t_lenet/success" in scalars


def _pearson_by_hand(xs, ys):
    """The hand-written formula :func:`pearson` used before it called scipy.stats.pearsonr."""
    pairs = [(a, b) for a, b in zip(xs, ys) if not (math.isnan(a) or math.isnan(b))]
    if len(pairs) < 3:
        return float("nan")
    mx = sum(a for a, _ in pairs) / len(pairs)
    my = sum(b for _, b in pairs) / len(pairs)
    sxy = sum((a - mx) * (b - my) for a, b in pairs)
    sxx = sum((a - mx) ** 2 for a, _ in pairs)
    syy = sum((b - my) ** 2 for _, b in pairs)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else float("nan")


@pytest.mark.parametrize(
    "xs, ys",
    [
        ([0.1, 0.4, 0.2, 0.9, 0.55], [3.0, 1.0, 2.5, -1.0, 0.7]),
        ([0.1, float("nan"), 0.2, 0.9, 0.3], [3.0, 1.0, float("nan"), -1.0, 2.0]),  # NaN pairs dropped
        ([1.0, 2.0, 3.0], [2.0, 4.0, 6.0]),  # r = 1
        ([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]),  # r = -1
    ],
)
def test_pearson_equals_the_former_hand_written_formula(xs, ys):
    assert pearson(xs, ys) == pytest.approx(_pearson_by_hand(xs, ys), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize(
    "xs, ys",
    [
        ([1.0, 2.0], [1.0, 2.0]),  # fewer than 3 points
        ([1.0, float("nan"), 3.0], [1.0, 2.0, 3.0]),  # 2 points left after dropping NaN
        ([2.0, 2.0, 2.0, 2.0], [1.0, 2.0, 3.0, 4.0]),  # no spread in x
        ([1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0]),  # no spread in y
    ],
)
def test_pearson_is_nan_without_enough_points_or_spread(xs, ys):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no scipy ConstantInputWarning either
        assert math.isnan(pearson(xs, ys))
    assert math.isnan(_pearson_by_hand(xs, ys))


def test_transfer_stderr_equals_the_former_formula():
    values = torch.tensor([0.3, -1.2, 0.8, 2.5, 0.0, -0.4], dtype=torch.float64)
    by_hand = float(values.std(correction=1) / math.sqrt(values.numel()))
    assert _stderr(values) == pytest.approx(by_hand, rel=1e-12)
    assert _stderr(values.float()) == pytest.approx(by_hand, rel=1e-6)
    assert math.isnan(_stderr(values[:1])) and math.isnan(_stderr(values[:0]))


def test_pearson_matches_numpy():
    xs, ys = [0.1, 0.4, 0.2, 0.9], [3.0, 1.0, 2.5, -1.0]
    assert pearson(xs, ys) == pytest.approx(np.corrcoef(xs, ys)[0, 1])
    assert math.isnan(pearson([1.0, 2.0], [1.0, 2.0]))


def test_cli_writes_the_report_and_fails_clearly(setup, tmp_path, capsys):
    paths, _, run = setup
    out = tmp_path / "cli"
    code = evaluation_main(
        [
            str(run),
            "--targets",
            str(paths["t_lenet"]),
            "--output",
            str(out),
            "--no-interaction",
            "--device",
            "cpu",
            "--no-tensorboard",
        ]
    )
    assert code == 0 and (out / "report.md").is_file()
    assert "| Source | Method |" in capsys.readouterr().out
    code = evaluation_main([str(run), "--targets", str(tmp_path / "nope.pt"), "--output", str(out)])
    assert code == 2 and "nope.pt" in capsys.readouterr().err
    code = evaluation_main([str(tmp_path / "no_run"), "--targets", str(paths["t_lenet"]), "--output", str(out)])
    assert code == 2 and "no adversarial examples" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown subset"):
        evaluate_transfer(run, [str(paths["t_lenet"])], subset="every")


def test_transfer_reports_progress_per_target_then_the_table(setup, tmp_path, capsys):
    paths, _, run = setup
    args = [str(run), "--targets", str(paths["t_lenet"]), str(paths["t_mlp"]), "--output", str(tmp_path / "cli")]
    args += ["--interaction-grid", "4", "--interaction-samples", "4", "--device", "cpu", "--no-tensorboard"]
    assert evaluation_main(args) == 0
    captured = capsys.readouterr()
    report = json.loads((tmp_path / "cli" / "report.json").read_text())
    cells = report["rows"][0]["targets"]
    lines = [line for line in captured.err.splitlines() if line.startswith("transfer: ")]
    assert lines[0] == "transfer: 1 attack run(s) x 2 target(s) on cpu"
    assert re.fullmatch(r"transfer: run 1/1 'src/pgd': interaction \S+ on the source \([0-9.]+s\)", lines[1])
    for number, name in enumerate(("t_lenet", "t_mlp"), start=1):
        cell = cells[name]
        loo = f", LOO {100 * cell['success_loo']:.1f}%" if name == "t_lenet" else ""  # per-step scores: t_lenet only
        expected = (
            f"transfer: run 1/1 'src/pgd' -> target {number}/2 '{name}': success {100 * cell['success']:.1f}%{loo} "
            f"on {cell['num_images']} images ("
        )
        assert lines[1 + number].startswith(expected) and lines[1 + number].endswith("s)"), lines[1 + number]
    assert re.fullmatch(r"transfer: done in [0-9.]+s", lines[4]) and len(lines) == 5
    assert "| Source | Method |" in captured.out and "transfer:" not in captured.out  # the tables stay on stdout
    assert evaluation_main([*args, "--quiet"]) == 0
    assert "transfer:" not in capsys.readouterr().err
    collected: list[str] = []
    evaluate_transfer(run, [str(paths["t_lenet"])], interaction=False, device="cpu", progress=collected.append)
    assert [line.split(":")[0] for line in collected] == ["transfer"] * 3 and "target 1/1 't_lenet'" in collected[1]
    with pytest.raises(TypeError, match="progress must be"):
        evaluate_transfer(run, [str(paths["t_lenet"])], progress="yes")


def test_runs_of_different_sizes_or_settings_under_one_label_are_refused(setup, tmp_path, capsys):
    paths, adv, run = setup
    target = [str(paths["t_lenet"])]
    other = tmp_path / "other_seed"
    other.mkdir()
    atomic_torch_save({"records": adv.records, "meta": {**adv.meta, "seed": 1}}, other / "adversarial.pt")
    with pytest.raises(ValueError, match=r"both labelled 'src/pgd' but differ \(seed: None -> 1\).*labels"):
        evaluate_transfer([run, other], target, interaction=False, device="cpu")
    smaller = adv.subset(torch.arange(len(adv)) < 20)
    with pytest.raises(ValueError, match=r"both labelled 'src/pgd' but differ \(examples: 30 -> 20\)"):
        evaluate_transfer([adv, smaller], target, interaction=False, device="cpu")
    with pytest.raises(ValueError, match="both labelled 'x'"):
        evaluate_transfer([adv, smaller], target, labels=["x", "x"], interaction=False, device="cpu")
    code = evaluation_main(
        [
            str(run),
            str(other),
            "--targets",
            *target,
            "--output",
            str(tmp_path / "cli"),
            "--no-interaction",
            "--device",
            "cpu",
            "--no-tensorboard",
        ]
    )
    assert code == 2 and "both labelled 'src/pgd'" in capsys.readouterr().err
    # distinct labels, or the same run twice under one label, are fine
    report = evaluate_transfer([run, other], target, labels=["seed0", "seed1"], interaction=False, device="cpu")
    assert [r.name for r in report.rows] == ["seed0", "seed1"]
    assert len(evaluate_transfer([run, run], target, interaction=False, device="cpu").rows) == 2


@pytest.mark.parametrize("suffix", [".pt", ".ckpt"])
def test_truncated_target_or_source_checkpoints_give_one_clear_line(setup, tmp_path, capsys, suffix):
    paths, _, run = setup
    model = load_classifier(str(paths["t_lenet"])).model
    good = tmp_path / f"good{suffix}"
    if suffix == ".pt":
        good.write_bytes(paths["t_lenet"].read_bytes())
    else:
        torch.save(
            {
                "hyper_parameters": {"arch": "lenet", "num_classes": 10, "input_shape": (1, 16, 16)},
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            },
            good,
        )
    truncated = tmp_path / f"truncated{suffix}"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    code = evaluation_main(
        [
            str(run),
            "--targets",
            str(truncated),
            "--output",
            str(tmp_path / "out"),
            "--no-interaction",
            "--device",
            "cpu",
            "--no-tensorboard",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert f"truncated{suffix}" in err and "corrupt" in err
    with pytest.raises(ValueError, match=rf"truncated\{suffix}.*corrupt"):  # a source model of a predict run
        from lit_advgame.predict import AttackModule

        AttackModule(str(truncated), "pgd")


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_report_files_follow_the_umask(setup, tmp_path, umask):
    paths, _, run = setup
    out = tmp_path / "report"
    old = os.umask(umask)
    try:
        evaluate_transfer(run, [str(paths["t_lenet"])], interaction=False, device="cpu", output_dir=out)
    finally:
        os.umask(old)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"report.json", "report.csv", "report.md"}
    assert any(p.name.startswith("events.out.tfevents") for p in files)
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path


# ----------------------------------------------------------------------------- targets at their own input size
def _resized_margins(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, size: int) -> torch.Tensor:
    """The reference: torchvision's v2 resize (bilinear, antialiased), clamped to [0, 1], then the target."""
    from torchvision.transforms.v2.functional import InterpolationMode, resize

    resized = resize(images, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True).clamp(0, 1)
    with torch.no_grad():
        return margins(model(resized), labels)


def test_each_target_is_evaluated_at_its_own_input_size(setup, tmp_path, capsys):
    """A 24x24 target on 16x16 examples: images resized to 24x24 (clean and adversarial); the 16x16 target is not.
    (Before: 'trained on inputs of shape (1, 24, 24)'.)"""
    paths, adv, run = setup
    torch.manual_seed(1)
    big = build_model("mlp", 10, 1, 24, mean=[0.3], std=[0.3])  # an MLP: it takes only 24x24 inputs
    export_classifier(big, tmp_path / "t_big.pt", arch="mlp", num_classes=10, input_shape=(1, 24, 24))
    targets = [str(tmp_path / "t_big.pt"), str(paths["t_mlp"])]
    report = evaluate_transfer(adv, targets, subset="all", loo=False, interaction=False, device="cpu")
    clean = _resized_margins(big.eval(), adv.x, adv.label, 24)
    fooled = _resized_margins(big, adv.x_adv, adv.label, 24)
    cell = report.rows[0].targets["t_big"]
    assert cell.success == pytest.approx(float((fooled > 0).float().mean()))
    assert cell.clean_accuracy == pytest.approx(float((clean < 0).float().mean()))
    assert cell.utility == pytest.approx(float((fooled - clean).mean()), abs=1e-5)
    assert report.settings["image_size"] == [16, 16] and report.settings["resized_targets"] == {"t_big": [24, 24]}
    assert "antialias=True" in report.settings["resize"]
    assert "resized to each target's input size: t_big 24×24" in report.markdown()
    # the same through the CLI: an explicit input_size in a JSON spec, and the progress line says so
    spec = json.dumps({"path": str(tmp_path / "t_big.pt"), "name": "big", "input_size": [24, 24]})
    args = [str(run), "--targets", spec, "--output", str(tmp_path / "cli"), "--no-interaction", "--device", "cpu"]
    assert evaluation_main([*args, "--no-tensorboard", "--subset", "all", "--no-loo"]) == 0
    err = capsys.readouterr().err
    assert "target 1/1 'big': success" in err and "resized 16×16 -> 24×24" in err
    data = json.loads((tmp_path / "cli" / "report.json").read_text())
    assert data["rows"][0]["targets"]["big"]["success"] == pytest.approx(cell.success)


def test_a_dict_target_takes_its_input_size_and_bad_sizes_fail_clearly(setup, tmp_path):
    paths, adv, _ = setup
    torch.manual_seed(2)
    net = build_model("small_cnn", 10, 1, 20, mean=[0.3], std=[0.3])
    torch.save(net.net.state_dict(), tmp_path / "plain.pt")
    spec = {"arch": "small_cnn", "weights": str(tmp_path / "plain.pt"), "mean": [0.3], "std": [0.3], "num_classes": 10}
    report = evaluate_transfer(adv, {**spec, "input_size": 20}, subset="all", loo=False, interaction=False)
    fooled = _resized_margins(net.eval(), adv.x_adv, adv.label, 20)
    assert report.rows[0].targets["plain"].success == pytest.approx(float((fooled > 0).float().mean()))
    same = evaluate_transfer(adv, spec, subset="all", loo=False, interaction=False)  # no size: the images' own
    assert same.settings["resized_targets"] == {}
    with pytest.raises(ValueError, match=r"input_size must be a positive int or \[height, width\]; got 0"):
        evaluate_transfer(adv, {**spec, "input_size": 0}, interaction=False)
    with pytest.raises(ValueError, match=r"trained on inputs of shape \(1, 16, 16\)"):  # a file's size is its own
        evaluate_transfer(adv, {"path": str(paths["t_mlp"]), "input_size": 24}, interaction=False)
    rgb = build_model("small_cnn", 10, 3, 16)
    export_classifier(rgb, tmp_path / "rgb.pt", arch="small_cnn", num_classes=10, input_shape=(3, 16, 16))
    with pytest.raises(ValueError, match="target 'rgb' takes 3-channel images but the attack run's have 1"):
        evaluate_transfer(adv, str(tmp_path / "rgb.pt"), interaction=False)
