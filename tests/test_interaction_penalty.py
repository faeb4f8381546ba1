"""Interaction-regularized training: the sampled strength estimate against the exact oracle, its parameter
gradient, the penalty injected into the training modules (λ = 0 is plain training), the strength callback,
the over-fitting configs (train_subset, dropout) and clear errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lit_advgame.callbacks import InteractionStrengthCallback
from lit_advgame.cli import main
from lit_advgame.data import DigitsDataModule
from lit_advgame.interactions import InputGame, InteractionStrength, exact_interactions, interaction_strength
from lit_advgame.models import build_model
from lit_advgame.training import AdversarialTraining, Ensemble, InteractionPenalty, StandardClassifier
from tests.conftest import CONFIGS, DDP_CPU_ARGS
from tests.tb_utils import read_scalars

SMALL = {"arch": "small_cnn", "arch_kwargs": {"width": 4}, "input_shape": (1, 16, 16), "mean": [0.5], "std": [0.5]}
PENALTY = {"weight": 1.0, "grid": 4, "num_pairs": 2, "num_samples": 4}


pytestmark = pytest.mark.usefixtures("one_thread_module")  # one intra-op thread (tests/conftest.py)


def _tiny_game(seed: int = 0) -> InputGame:
    """Two 4x4 images, a 2x2 grid (n = 4 players), a float64 tanh MLP, raw-logit value."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64)
    return InputGame(model, x, torch.tensor([0, 2]), grid=2, baseline="zeros", value="logit")


def _pair_values(table: torch.Tensor) -> torch.Tensor:
    """``(B, n, n)`` symmetric table -> ``(B, n(n-1)/2)`` in the row-major pair order of ``num_pairs=None``."""
    n = table.shape[-1]
    rows, cols = torch.triu_indices(n, n, offset=1)
    return table[:, rows, cols]


# ----------------------------------------------------------------------------- the estimate against the oracle
def test_plug_in_estimate_matches_the_exact_mean_abs_sii():
    game = _tiny_game()
    exact = _pair_values(exact_interactions(game).shapley_interaction).abs()
    estimate = InteractionStrength(num_pairs=None, num_samples=3000).estimate(game, 0, grad=False)
    # the stated cost: images x pairs x samples x 4 coalitions
    assert estimate.forward_passes == 2 * InteractionStrength(
        num_pairs=None, num_samples=3000
    ).forward_passes_per_image(4)
    assert estimate.forward_passes == 2 * 6 * 3000 * 4
    assert abs(float(estimate.value) - float(exact.mean())) <= 3 * estimate.stderr
    # per pair, within the contexts' sampling noise (a few times the noise floor σ/√S)
    assert float((estimate.per_unit - exact).abs().max()) <= 8 * estimate.noise_floor


def test_split_estimator_squares_are_unbiased_for_the_signed_exact_values():
    game = _tiny_game(1)
    signed = _pair_values(exact_interactions(game).shapley_interaction)
    settings = InteractionStrength(num_pairs=None, num_samples=500, estimator="split")
    # 16 independent estimates of the mean squared interaction over images and pairs
    pooled = torch.stack([settings.estimate(game, seed, grad=False).squares.mean() for seed in range(16)])
    stderr = float(pooled.std() / 4)
    assert abs(float(pooled.mean()) - float((signed**2).mean())) <= 4 * stderr
    estimate = InteractionStrength(num_pairs=None, num_samples=2000, estimator="split").estimate(game, 0, grad=False)
    assert torch.equal(torch.sign(estimate.per_unit), torch.sign(estimate.squares))
    assert abs(float(estimate.value) - float(signed.abs().mean())) <= 3 * estimate.stderr


def test_order_band_targets_the_multi_order_interactions_and_shapley_values():
    game = _tiny_game(2)
    exact = exact_interactions(game)
    band = InteractionStrength(num_pairs=None, num_samples=2000, order_band=[1, 1]).estimate(game, 0, grad=False)
    assert bool((band.orders == 1).all())
    target = _pair_values(exact.multi_order[:, 1]).abs().mean()
    assert abs(float(band.value) - float(target)) <= 3 * band.stderr
    # ratios of n: for multi-order Shapley values m = int((n - 1) r) = int(3 * 0.5) = 1, so orders 0..1
    shapley = InteractionStrength(target="shapley", num_players=None, num_samples=2000, order_band=[0.0, 0.5])
    result = shapley.estimate(game, 0, grad=False)
    assert set(result.orders.unique().tolist()) <= {0, 1}
    phi = exact.multi_order_shapley.abs()  # (B, m, i)
    per_unit_target = phi.gather(1, result.orders.unsqueeze(1)).squeeze(1)  # |φ^(m_bi)(i)|
    assert float((result.per_unit - per_unit_target).abs().max()) <= 8 * result.noise_floor
    # without a band: |Shapley value|, with the same functional entry point
    plain = interaction_strength(game, target="shapley", num_players=None, num_samples=2000, generator=0)
    assert abs(float(plain.value) - float(exact.shapley.abs().mean())) <= 3 * plain.stderr


def test_the_gradient_reaches_the_parameters_and_matches_finite_differences():
    game = _tiny_game(3)
    model = game.model
    settings = InteractionStrength(num_pairs=3, num_samples=8)
    weight = model[1].weight
    value = settings.estimate(game, 5).value
    (grad,) = torch.autograd.grad(value, weight)
    step = 1e-6
    for index in [(0, 0), (3, 7), (7, 15)]:
        with torch.no_grad():
            weight[index] += step
            up = float(settings.estimate(game, 5, grad=False).value)
            weight[index] -= 2 * step
            down = float(settings.estimate(game, 5, grad=False).value)
            weight[index] += step
        assert (up - down) / (2 * step) == pytest.approx(float(grad[index]), rel=1e-5, abs=1e-9)
    assert not game.present.requires_grad  # no gradient into the input


# ----------------------------------------------------------------------------- training
def _fit(module: pl.LightningModule, batches: int = 2, **trainer: object) -> pl.Trainer:
    generator = torch.Generator().manual_seed(1)
    x, y = torch.rand(16, 1, 16, 16, generator=generator), torch.randint(0, 10, (16,), generator=generator)
    options = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False, **trainer}
    fit = pl.Trainer(
        max_epochs=1, limit_train_batches=batches, accelerator="cpu", enable_model_summary=False, **options
    )
    fit.fit(module, DataLoader(TensorDataset(x, y), batch_size=8))
    return fit


def _trained(**kwargs: object) -> tuple[StandardClassifier, pl.Trainer]:
    pl.seed_everything(0)
    module = StandardClassifier(**SMALL, **kwargs)
    return module, _fit(module)


def test_weight_zero_is_plain_training_bit_for_bit_and_a_weight_changes_it():
    plain, _ = _trained()
    zero, _ = _trained(penalty={**PENALTY, "weight": 0.0})
    penalized, trainer = _trained(penalty=PENALTY)
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), zero.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(plain.parameters(), penalized.parameters()))
    metrics = trainer.callback_metrics
    assert float(metrics["train/penalty"]) > 0
    assert float(metrics["train/penalty_forward_passes"]) == 8 * 2 * 4 * 4  # batch x pairs x samples x 4
    assert isinstance(penalized.penalty, InteractionPenalty)
    assert penalized.hparams.penalty["weight"] == 1.0  # a plain dict in the hyper-parameters


def test_penalty_composes_with_adversarial_training_and_ensembles():
    pl.seed_everything(0)
    adversarial = AdversarialTraining(**SMALL, attack={"eps": 0.1, "steps": 1}, penalty=PENALTY)
    assert float(_fit(adversarial, batches=1).callback_metrics["train/penalty"]) > 0
    ensemble = Ensemble(num_members=2, **SMALL, penalty={**PENALTY, "target": "shapley", "num_players": 2})
    assert float(_fit(ensemble, batches=1).callback_metrics["train/penalty"]) > 0


def test_the_penalty_survives_a_checkpoint(tmp_path):
    module = StandardClassifier(**SMALL, penalty={**PENALTY, "order_band": [0.0, 0.5]})
    trainer = _fit(module, batches=1)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    loaded = StandardClassifier.load_from_checkpoint(tmp_path / "m.ckpt")
    assert loaded.penalty == module.penalty


# ----------------------------------------------------------------------------- the monitor
def test_strength_callback_logs_with_the_epoch_as_step(tmp_path):
    pl.seed_everything(0)
    generator = torch.Generator().manual_seed(2)
    x, y = torch.rand(16, 1, 16, 16, generator=generator), torch.randint(0, 10, (16,), generator=generator)
    callback = InteractionStrengthCallback(
        probe_x=x, probe_y=y, probe_size=4, game={"grid": 4, "orders": [0.2, 0.9], "num_pairs": 2, "num_contexts": 4}
    )
    logger = TensorBoardLogger(tmp_path, name="strength", default_hp_metric=False)
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    trainer = pl.Trainer(
        max_epochs=2, limit_train_batches=1, limit_val_batches=1, accelerator="cpu", logger=logger,
        callbacks=[callback], enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(StandardClassifier(**SMALL), loader, loader)
    scalars = read_scalars(logger.log_dir)
    margins = ("zz_margin/strength/sii/lower", "zz_margin/strength/sii/upper")  # value -/+ 1 SE (TensorBoard layout)
    for tag in ("strength/sii", *margins, "strength/noise_floor", "strength/r0.20", "strength/r0.90"):
        assert [step for step, _ in scalars[tag]] == [0, 1], tag
    assert "strength/sii_stderr" in callback.last_metrics and not any(t.endswith("_stderr") for t in scalars)
    assert all(value > 0 for _, value in scalars["strength/sii"])
    # 4 probes x (1 + 2 orders) estimates x 2 pairs x 4 contexts x 4 coalitions
    assert callback.last_metrics["zz_cost/strength/forward_passes"] == 4 * 3 * 2 * 4 * 4


# ----------------------------------------------------------------------------- configs and data
def test_train_subset_and_dropout_option():
    dm = DigitsDataModule(train_subset=200, seed=0)
    again = DigitsDataModule(train_subset=200, seed=0)
    assert dm.split_sizes()["train"] == 200
    assert dm.dataset("train").indices == again.dataset("train").indices
    with pytest.raises(ValueError, match="train_subset=100000 exceeds"):
        DigitsDataModule(train_subset=100000).setup()
    net = build_model("small_cnn", num_classes=10, in_channels=1, input_size=(16, 16), dropout=0.5)
    assert any(isinstance(m, nn.Dropout) for m in net.modules())
    plain = build_model("small_cnn", num_classes=10, in_channels=1, input_size=(16, 16))
    assert not any(isinstance(m, nn.Dropout) for m in plain.modules())
    with pytest.raises(ValueError, match="dropout must be a probability"):
        build_model("small_cnn", num_classes=10, in_channels=1, input_size=(16, 16), dropout=1.5)


@pytest.mark.parametrize("name", ["penalty_digits_plain", "penalty_digits_dropout"])  # penalty_digits: the DDP test
def test_penalty_configs_run_through_the_cli(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fast = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"]
    fast += ["--trainer.log_every_n_steps", "1"]
    main(["fit", "--config", str(CONFIGS / f"{name}.yaml"), *fast, "--test_after_fit", "false"])
    scalars = read_scalars(tmp_path / "runs" / name)
    assert "train/loss_step" in scalars and "train/penalty_step" not in scalars


def test_penalty_under_ddp(tmp_path):
    cmd = [
        sys.executable, "-m", "lit_advgame", "fit", "--config", str(CONFIGS / "penalty_digits.yaml"),
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", "1", "--test_after_fit", "false",
        "--data.init_args.batch_size", "8", *DDP_CPU_ARGS,
    ]  # fmt: skip
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "train/penalty_step" in read_scalars(tmp_path / "runs/penalty_digits")


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "options, error, match",
    [
        ({"weight": -1.0}, ValueError, "weight"),
        ({"order_band": [3, 1]}, ValueError, "order_band .* is empty"),
        ({"order_band": []}, ValueError, "order_band must be None or \\[lo, hi\\]"),
        ({"order_band": [0, 0.5]}, TypeError, "order_band must be two ints"),
        ({"num_samples": 0}, ValueError, "num_samples"),
        ({"num_pairs": 0}, ValueError, "num_pairs"),
        ({"estimator": "split", "num_samples": 3}, ValueError, "num_samples must be even"),
        ({"estimator": "mean"}, ValueError, "estimator"),
        ({"no_such_option": 1}, TypeError, "no_such_option"),
    ],
)
def test_bad_penalty_settings_name_the_argument(options, error, match):
    with pytest.raises(error, match=match):
        StandardClassifier(**SMALL, penalty={**PENALTY, **options})


def test_bad_game_inputs_name_the_argument():
    # checked when the module is built (input_shape is known), before any training
    with pytest.raises(ValueError, match="penalty: grid 32x32 is larger than the image"):
        StandardClassifier(**SMALL, penalty={**PENALTY, "grid": 32})
    with pytest.raises(ValueError, match=r"penalty: interaction order 20 is outside \[0, n-2\] = \[0, 14\]"):
        StandardClassifier(**SMALL, penalty={**PENALTY, "order_band": [0, 20]})
    # and at step time, for images of another size than input_shape
    module = StandardClassifier(**SMALL, penalty={**PENALTY, "grid": 16})
    with pytest.raises(ValueError, match="penalty: grid 16x16 is larger than the image"):
        module.add_penalty(torch.zeros(()), torch.rand(2, 1, 8, 8), torch.tensor([0, 1]))
    game = _tiny_game()
    with pytest.raises(ValueError, match=r"interaction order 5 is outside \[0, n-2\]"):
        InteractionStrength(order_band=[0, 5]).estimate(game, 0)
    with pytest.raises(ValueError, match="max_forward_passes"):
        InteractionStrength(num_samples=100, max_forward_passes=10).estimate(game, 0)
