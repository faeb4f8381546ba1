"""Mixed precision (``autocast``) and ``channels_last`` for masked evaluations and attacks; the GPU check script.

The policy (:mod:`lit_advgame.utils.precision`): only the model's forward runs in bfloat16/float16, its logits
come back in float32; δ, its gradient, the projection and the clipping stay float32.

Tolerances, and why. bfloat16 keeps 8 significant bits (unit roundoff 2^-9 ≈ 0.2%), float16 11 (2^-12 ≈
0.02%). Logits of size |z| ≈ 1–5 are then off by ≈ |z|·2^-9 in bf16 -- about the size of this tiny net's
pairwise terms Δv = v(S∪{i,j}) − v(S∪{i}) − v(S∪{j}) + v(S) (≈ 1e-3), which cancel four values:

* multi-order estimate (:data:`ESTIMATE_TOLERANCE`): relative L2 error of the per-pair ``I^(m)_ij`` at most
  0.5 (bf16) / 0.1 (fp16), and each order's aggregate ``I^(m)`` within 2 (bf16) / 0.5 (fp16) standard errors
  of the float32 estimate (the same coalitions are drawn in both). Measured over 12 seeds on two tiny nets:
  0.12–0.30 / 0.01–0.05 relative, at most 1.2 / 0.3 standard errors.
* PGD+IR (:data:`ATTACK_TOLERANCE`): sign steps may flip where the float32 gradient is near 0, so the
  perturbations are compared by what the attack achieves: the same white-box successes, ‖δ‖₂ per image
  within 5% (measured ≤ 1%), sign(δ) equal on ≥ 85% of the pixels (measured ≥ 95%), the source's float32
  margin at x_adv within 0.01 (measured ≤ 1.1e-3). x_adv stays in [0, 1] and the ε-ball with the float32
  bounds of ``tests/attacks/test_attacks_bounds.py``.
* ``channels_last`` in float32: the same numbers up to the order of float summation: values within 1e-5
  (relative), exact interactions within 1e-5 of the value scale, attacks equal on ≥ 99% of the pixels.
"""

from __future__ import annotations

import json
import math
import os
import subprocess

import pytest
import pytorch_lightning as pl
import torch

from lit_advgame.attacks import Attack, build_attack
from lit_advgame.attacks.norms import l2_norms
from lit_advgame.data import DigitsDataModule
from lit_advgame.interactions import InputGame, MultiOrderApproximator, exact_interactions, perturbation_interaction
from lit_advgame.predict import AdversarialWriter, AttackModule, load_adversarial
from lit_advgame.predict.models import margins
from lit_advgame.utils import precision
from lit_advgame.utils.precision import PrecisionModel, autocast_context, forward_logits, resolve_autocast
from tests.attacks.tiny_models import make_cnn, make_tv_resnet
from tests.conftest import REPO_ROOT

#: (relative L2 error of the per-pair I^(m)_ij, change of each order's I^(m) in float32 standard errors)
ESTIMATE_TOLERANCE = {"bf16": (0.5, 2.0), "fp16": (0.1, 0.5)}
#: (‖δ‖₂ relative difference per image, share of pixels with the same sign of δ, float32 margin difference)
ATTACK_TOLERANCE = (0.05, 0.85, 0.01)
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
IR = {"ir_grid": 4, "ir_num_samples": 4, "ir_group_size": 4}


@pytest.fixture(autouse=True)
def exact_float32():
    """float32 means float32 on GPUs too: no TF32 convolutions or matmuls in the reference runs."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def supported(mode: str, device: str) -> None:
    """Skip where this device or torch build cannot autocast to ``mode``."""
    try:
        with autocast_context(mode, device):
            pass
    except ValueError as err:
        pytest.skip(str(err))


def images(seed: int, device: str, batch: int = 4) -> torch.Tensor:
    return torch.rand(batch, 3, 12, 12, generator=torch.Generator().manual_seed(seed)).to(device)


# ----------------------------------------------------------------------------- the forward
def test_only_the_forward_runs_in_reduced_precision_and_logits_come_back_in_float32():
    model = make_cnn().eval()
    seen = {}
    conv = model.net[0]
    hook = conv.register_forward_hook(
        lambda m, i, o: seen.update(dtype=o.dtype, channels_last=i[0].is_contiguous(memory_format=torch.channels_last))
    )
    x = images(0, "cpu")
    expected = model(x)
    logits = forward_logits(model, x, autocast="bf16", channels_last=True)
    assert seen == {"dtype": torch.bfloat16, "channels_last": True} and logits.dtype == torch.float32
    assert forward_logits(model, x).dtype == torch.float32 and seen == {"dtype": torch.float32, "channels_last": False}
    with torch.autocast("cpu", dtype=torch.bfloat16):  # ambient: None follows it, "none" switches it off
        assert resolve_autocast(None, "cpu") == "bf16" and forward_logits(model, x).dtype == torch.float32
        assert seen["dtype"] == torch.bfloat16
        assert torch.equal(forward_logits(model, x, autocast="none"), expected) and seen["dtype"] == torch.float32
    hook.remove()
    # the attack's gradient w.r.t. its input is float32 (autograd casts it back at the model's input)
    delta = torch.zeros_like(x, requires_grad=True)
    PrecisionModel(model, "bf16")(x + delta).sum().backward()
    assert delta.grad.dtype == torch.float32 and delta.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- masked evaluations
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["bf16", "fp16"])
def test_multi_order_estimate_under_autocast_stays_within_the_stated_tolerance_of_float32(mode, device):
    supported(mode, device)
    model = make_cnn().eval().to(device)
    x = images(0, device)
    y = model(x).argmax(1)
    results, games = {}, {}
    for autocast in ("none", mode):
        games[autocast] = InputGame(model, x, y, grid=4, autocast=autocast, channels_last=autocast != "none")
        estimator = MultiOrderApproximator([0, 3, 7, 14], 20, num_pairs=8, random_state=0)
        results[autocast] = estimator.approximate(games[autocast])
    reference, mixed = results["none"], results[mode]
    relative, standard_errors = ESTIMATE_TOLERANCE[mode]
    pair_error = ((mixed.per_pair - reference.per_pair).norm() / reference.per_pair.norm()).item()
    assert 0 < pair_error <= relative  # autocast acts (the values change), within the tolerance
    assert ((mixed.values - reference.values).abs() <= standard_errors * reference.stderr).all()
    assert mixed.values.dtype == reference.values.dtype == torch.float64
    # values are float32; the rounding floor of D^(m) knows they were computed in the autocast dtype
    assert games[mode].evaluate(torch.ones(1, 16, dtype=torch.bool)).dtype == torch.float32
    assert games[mode].value_dtype == precision.AUTOCAST_DTYPES[mode] and games["none"].value_dtype == torch.float32


@pytest.mark.parametrize("device", DEVICES)
def test_channels_last_gives_the_float32_values_interactions_and_attack(device):
    model = make_tv_resnet().eval().to(device)
    x = images(1, device, batch=2)
    y = torch.tensor([0, 1], device=device)
    coalitions = torch.rand(64, 9, generator=torch.Generator().manual_seed(0)) > 0.5
    exact, values = {}, {}
    for channels_last in (False, True):
        game = InputGame(model, x, y, grid=3, channels_last=channels_last)
        exact[channels_last] = exact_interactions(game)
        values[channels_last] = game.evaluate(coalitions.to(device))
    torch.testing.assert_close(values[True], values[False], rtol=1e-5, atol=1e-6)
    scale = values[False].abs().max().item()
    torch.testing.assert_close(exact[True].multi_order, exact[False].multi_order, rtol=0, atol=1e-5 * scale)
    runs = [
        build_attack("pgd+ir", model, steps=4, seed=0, channels_last=channels_last, **IR).run(x, y)
        for channels_last in (False, True)
    ]
    assert (runs[0].x_adv == runs[1].x_adv).float().mean() >= 0.99
    torch.testing.assert_close(runs[1].losses["objective"], runs[0].losses["objective"], rtol=1e-5, atol=1e-6)


def test_the_perturbation_interaction_takes_the_precision_options():
    model = make_cnn().eval()
    x = images(2, "cpu", batch=2)
    delta = (0.05 * torch.rand_like(x) - 0.025).clamp(-x, 1 - x)
    y = model(x).argmax(1)
    values = {}
    for autocast in ("none", "bf16"):
        generator = torch.Generator().manual_seed(0)
        values[autocast] = perturbation_interaction(model, x, delta, y, grid=4, generator=generator, autocast=autocast)
    assert values["bf16"].dtype == torch.float32 and not torch.equal(values["bf16"], values["none"])


# ----------------------------------------------------------------------------- attacks
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["bf16", "fp16"])
def test_pgd_ir_under_autocast_agrees_with_float32(mode, device):
    supported(mode, device)
    model = make_tv_resnet().eval().to(device)
    x = images(0, device)
    y = model(x).argmax(1)
    runs = {
        autocast: build_attack(
            "pgd+ir",
            model,
            steps=10,
            step_size=1 / 255,
            seed=0,
            autocast=autocast,
            channels_last=autocast != "none",
            **IR,
        ).run(x, y)
        for autocast in ("none", mode)
    }
    reference, mixed = runs["none"].x_adv - x, runs[mode].x_adv - x
    norm_tolerance, sign_share, margin_tolerance = ATTACK_TOLERANCE
    assert ((l2_norms(mixed) / l2_norms(reference) - 1).abs() <= norm_tolerance).all()
    assert (torch.sign(mixed) == torch.sign(reference)).float().mean() >= sign_share
    assert not torch.equal(mixed, reference)  # autocast acts
    with torch.no_grad():
        margin = {key: margins(model(run.x_adv), y) for key, run in runs.items()}
    assert torch.equal(margin["none"] > 0, margin[mode] > 0) and bool((margin["none"] > 0).any())
    assert ((margin[mode] - margin["none"]).abs() <= margin_tolerance).all()
    for name, values in runs[mode].losses.items():  # logged objective, classification loss, interaction
        assert values.dtype == torch.float32 and torch.isfinite(values).all(), name


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_attack_outputs_stay_in_the_image_box_and_the_ball_under_bf16(norm):
    """The float32 bounds of tests/attacks/test_attacks_bounds.py hold unchanged: δ never passes through bf16."""
    model = make_tv_resnet().eval()
    x = images(3, "cpu")
    y = model(x).argmax(1)
    overrides = {"step_size": 8 / 255} if norm == "linf" else {}
    attack = build_attack("mi+ir", model, norm=norm, steps=3, seed=0, autocast="bf16", **IR, **overrides)
    x_adv = attack(x, y)
    assert x_adv.dtype == torch.float32 and x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    delta = x_adv - x
    if norm == "linf":
        assert 16 / 255 - 1e-6 <= delta.abs().max() <= 16 / 255 + 1e-6
    else:
        eps = attack.effective_eps(x)
        assert (l2_norms(delta) <= eps * (1 + 1e-5)).all() and l2_norms(delta).max() >= 0.5 * eps


def test_an_ambient_autocast_region_is_followed_by_default_and_overridden_by_none():
    model = make_cnn().eval()
    x = images(4, "cpu", batch=2)
    y = torch.tensor([0, 1])

    def attack(autocast):
        return Attack(model, steps=3, seed=0, autocast=autocast, loss_terms=[], transforms=[])(x, y)

    with torch.autocast("cpu", dtype=torch.bfloat16):  # e.g. Lightning's bf16-mixed predict step
        ambient, forced = attack(None), attack("none")
        game_values = InputGame(model, x, y, grid=4).evaluate(torch.ones(1, 16, dtype=torch.bool))
    assert torch.equal(ambient, attack("bf16")) and torch.equal(forced, attack("none"))
    assert not torch.equal(ambient, forced)
    expected = InputGame(model, x, y, grid=4, autocast="bf16").evaluate(torch.ones(1, 16, dtype=torch.bool))
    assert torch.equal(game_values, expected)


# ----------------------------------------------------------------------------- Lightning
def _predict(tmp_path, name: str, trainer_precision: str, **module_args):
    """A tiny PGD+IR predict run on 8 digits with an untrained small CNN (the same weights every time)."""
    data = DigitsDataModule(predict_limit=8, batch_size=4)
    torch.manual_seed(0)
    module = AttackModule(
        {"arch": "small_cnn", "name": "cnn"},
        "pgd+ir",
        overrides={"steps": 2, "ir_grid": 4, "ir_num_samples": 2, "ir_group_size": 4},
        num_classes=10,
        input_shape=(1, 16, 16),
        mean=data.mean,
        std=data.std,
        **module_args,
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        precision=trainer_precision,
        inference_mode=False,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[AdversarialWriter(str(tmp_path / name))],
    )
    trainer.predict(module, datamodule=data, return_predictions=False)
    return load_adversarial(tmp_path / name)


def test_attack_module_honours_the_trainer_precision_and_records_it(tmp_path):
    lightning = _predict(tmp_path, "bf16_mixed", "bf16-mixed")
    explicit = _predict(tmp_path, "explicit", "32-true", autocast="bf16")
    plain = _predict(tmp_path, "float32", "32-true")
    assert torch.equal(lightning.x_adv, explicit.x_adv) and not torch.equal(lightning.x_adv, plain.x_adv)
    assert lightning.records["source_margin_adv"].dtype == torch.float32
    assert lightning.meta["precision"] == explicit.meta["precision"] == {"autocast": "bf16", "channels_last": False}
    assert "precision" not in plain.meta  # a float32 run's metadata is unchanged
    forced = _predict(tmp_path, "forced", "bf16-mixed", autocast="none")
    assert torch.equal(forced.x_adv, plain.x_adv)
    with pytest.raises(ValueError, match="different attack.*precision"):  # a folder never mixes precisions
        _predict(tmp_path, "bf16_mixed", "32-true")


def test_attack_module_channels_last_converts_its_models():
    module = AttackModule(
        {"arch": "small_cnn", "name": "cnn"},
        "pgd",
        overrides={"steps": 1},
        channels_last=True,
        num_classes=10,
        input_shape=(1, 16, 16),
        mean=[0.5],
        std=[0.25],
    )
    weights = [p for p in module.source_models.parameters() if p.dim() == 4]
    assert weights and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)
    assert module.build_attack(0).channels_last is True
    records = module.attack_batch(torch.rand(2, 1, 16, 16), torch.tensor([3, 7]), indices=[0, 1])
    assert records["x_adv"].dtype == torch.float32


# ----------------------------------------------------------------------------- errors
def test_bad_precision_options_get_clear_errors(monkeypatch):
    model = make_cnn()
    x = images(0, "cpu", batch=1)
    with pytest.raises(ValueError, match="unknown autocast 'fp32'; choose one of: none, bf16, fp16"):
        Attack(model, autocast="fp32")
    with pytest.raises(ValueError, match="unknown autocast"):
        InputGame(model, x, grid=4, autocast="float16")
    with pytest.raises(ValueError, match="unknown autocast"):
        build_attack("pgd", model, autocast="half")
    with pytest.raises(TypeError, match="channels_last must be a bool"):
        Attack(model, channels_last="yes")
    with pytest.raises(TypeError, match="channels_last must be a bool"):
        InputGame(model, x, grid=4, channels_last=1)
    with pytest.raises(ValueError, match="unknown autocast"):
        AttackModule(
            {"arch": "small_cnn"}, num_classes=10, input_shape=(1, 16, 16), mean=[0.5], std=[0.25], autocast="bf"
        )
    with pytest.raises(ValueError, match="autocast='bf16'.*not supported on device 'meta'"):
        with autocast_context("bf16", "meta"):
            pass
    # a torch build that switches autocast off for a dtype (with a warning) is an error, not a silent float32 run
    monkeypatch.setattr(precision, "_state", lambda device_type: (False, torch.float32))
    with pytest.raises(
        ValueError, match="autocast='fp16'.*not supported on device 'cpu'.*use autocast='bf16' or 'none'"
    ):
        forward_logits(model, x, autocast="fp16")


# ----------------------------------------------------------------------------- the GPU check script
def test_device_check_script_runs_on_the_cpu_and_prints_one_table(tmp_path):
    """scripts/device_check.sh at tiny sizes on the CPU (no pytest, no install): every check is a row, all ok."""
    command = ["bash", "scripts/device_check.sh", "--cpu", "--tiny", "--no-install", "--no-tests", "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [*command, "--out", str(tmp_path)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env=env
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = json.loads((tmp_path / "results.json").read_text())
    checks = [row["check"] for row in rows]
    for check in (
        "IR attack fp32",
        "IR attack bf16",
        "IR attack bf16+channels_last",
        "multi-order fp32",
        "multi-order bf16",
        "predict DDP ×1",
    ):
        assert check in checks
    assert all(row["ok"] == "ok" for row in rows)
    table = (tmp_path / "table.md").read_text()
    assert table in out.stdout and table.count("\n") == len(rows) + 2
    seconds = next(row["result"] for row in rows if row["check"] == "IR attack fp32")
    assert math.isfinite(float(seconds.split()[0]))


@pytest.mark.cuda
def test_cuda_masked_values_equal_the_cpu_ones_in_float32():
    model = make_tv_resnet().eval()
    x = images(5, "cpu", batch=2)
    y = torch.tensor([0, 1])
    coalitions = torch.rand(32, 16, generator=torch.Generator().manual_seed(0)) > 0.5
    cpu = InputGame(model, x, y, grid=4).evaluate(coalitions)
    cuda = InputGame(model.cuda(), x.cuda(), y.cuda(), grid=4, channels_last=True).evaluate(coalitions.cuda())
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=1e-4, atol=1e-5)
