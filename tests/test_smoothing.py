"""Randomized smoothing (Cohen et al. 2019): statistics, PREDICT/CERTIFY, pixel-space noise, the Lightning
module through the CLI (TensorBoard read back), the prediction writer under DDP, and the configs."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import yaml
from scipy.stats import beta, binomtest, norm
from torch import nn

from lit_advgame.cli import main
from lit_advgame.data import DigitsDataModule
from lit_advgame.models.normalize import NormalizedModel
from lit_advgame.smoothing import (
    ABSTAIN,
    Smooth,
    SmoothingRecords,
    binomial_test_pvalue,
    certified_accuracy,
    certified_radius,
    clopper_pearson_lower,
    example_generators,
    radius_cap,
)
from lit_advgame.smoothing.noise import (
    STREAM_PREDICT,
    add_per_example_noise,
    example_seed,
)
from lit_advgame.training.smoothing import RandomizedSmoothing
from tests.conftest import CONFIGS, DDP_CPU_ARGS
from tests.tb_utils import read_image_tags, read_scalars

SHAPE = (1, 4, 4)


class Constant(nn.Module):
    """Always votes for ``label``."""

    def __init__(self, label: int, num_classes: int = 3) -> None:
        super().__init__()
        self.label, self.num_classes = label, num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = torch.zeros(x.shape[0], self.num_classes, device=x.device)
        scores[:, self.label] = 1.0
        return scores


class PixelThreshold(nn.Module):
    """Class 1 iff pixel (0, 0, 0) exceeds ``threshold``: a half-space at L2 distance |v − t| from an image
    whose pixel is v, so under N(0, σ²I) noise P(class 1) = Φ((v − t)/σ) exactly."""

    def __init__(self, threshold: float = 0.5) -> None:
        super().__init__()
        self.threshold = threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        above = (x[:, 0, 0, 0] > self.threshold).float()
        return torch.stack([1 - above, above], dim=1)


class Alternating(nn.Module):
    """Votes 0, 1, 0, 1, ... by position in the batch: an exact 50/50 split for even chunk sizes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        label = torch.arange(x.shape[0], device=x.device) % 2
        return nn.functional.one_hot(label, 2).float()


def _image(value: float = 0.5) -> torch.Tensor:
    return torch.full(SHAPE, value)


def _gens(seed: int = 0, indices=(0,)):
    return example_generators(seed, indices)


def _digits_smoothing(dm: DigitsDataModule, **options) -> RandomizedSmoothing:
    """A RandomizedSmoothing MLP for the digits data module ``dm`` (classes, shape and normalization from it)."""
    return RandomizedSmoothing(
        arch="mlp", num_classes=10, input_shape=dm.input_shape, mean=dm.mean, std=dm.std, **options
    )


def _cpu_trainer(**options) -> pl.Trainer:
    """A one-process CPU trainer without a logger."""
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, **options)


# --------------------------------------------------------------------------- statistics


@pytest.mark.parametrize(
    "k,n,alpha", [(60, 100, 0.001), (1, 10, 0.05), (999, 1000, 0.001), (500, 1000, 0.01), (7, 7, 0.1)]
)
def test_clopper_pearson_matches_scipy_exact_interval_and_beta_form(k, n, alpha):
    bound = clopper_pearson_lower(k, n, alpha)
    assert bound == pytest.approx(
        binomtest(k, n).proportion_ci(confidence_level=1 - 2 * alpha, method="exact").low, abs=1e-10
    )
    assert bound == pytest.approx(beta.ppf(alpha, k, n - k + 1), abs=1e-12)


def test_clopper_pearson_edge_cases_and_arrays():
    assert clopper_pearson_lower(60, 100, 0.001) == pytest.approx(0.44098, abs=5e-6)  # the reference's value
    assert clopper_pearson_lower(0, 50, 0.01) == 0.0
    assert clopper_pearson_lower(50, 50, 0.01) == pytest.approx(0.01 ** (1 / 50))
    k = np.array([0, 3, 10])
    bounds = clopper_pearson_lower(k, np.array([10, 10, 10]), 0.05)
    assert (
        bounds[0] == 0.0 and bounds[1] == pytest.approx(beta.ppf(0.05, 3, 8)) and bounds[2] == pytest.approx(0.05**0.1)
    )
    with pytest.raises(ValueError, match="successes"):
        clopper_pearson_lower(11, 10, 0.05)
    with pytest.raises(ValueError, match="alpha"):
        clopper_pearson_lower(3, 10, 1.0)


def test_binomial_test_and_radius_formulas():
    assert binomial_test_pvalue(50, 50) == pytest.approx(1.0)
    assert binomial_test_pvalue(70, 30) == pytest.approx(binomtest(70, 100, 0.5).pvalue)
    assert certified_radius(0.98, 0.5) == pytest.approx(0.5 * norm.ppf(0.98))  # README: p = 0.98 gives ≈ 2.05σ
    assert certified_radius(0.98, 1.0) == pytest.approx(2.054, abs=1e-3)
    # the caps quoted by the reference: 3.81σ (n=1e5, α=1e-3), 1.50σ / 2.46σ / 3.20σ for n = 100 / 1000 / 10000
    for n, factor in [(100_000, 3.81), (100, 1.50), (1000, 2.46), (10_000, 3.20)]:
        assert radius_cap(n, 0.001, 1.0) == pytest.approx(factor, abs=0.01)
    assert radius_cap(100_000, 0.001, 0.25) == pytest.approx(0.25 * norm.ppf(0.001**1e-5))


def test_certified_accuracy_counts_abstentions_as_wrong():
    predictions = [1, ABSTAIN, 2, 3, ABSTAIN]
    labels = [1, 0, 2, 0, 4]
    radii = [0.5, 0.0, 0.2, 1.0, 0.0]
    acc = certified_accuracy(predictions, labels, radii, [0.0, 0.1, 0.3, 0.6])
    np.testing.assert_allclose(acc, [2 / 5, 2 / 5, 1 / 5, 0.0])
    records = SmoothingRecords(
        index=torch.arange(5), label=torch.tensor(labels), predict=torch.tensor(predictions), radius=torch.tensor(radii)
    )
    np.testing.assert_allclose(records.certified_accuracy([0.0, 0.3]), [0.4, 0.2])
    assert records.abstain_rate() == pytest.approx(0.4) and records.accuracy() == pytest.approx(0.4)
    # an abstention is wrong even if the label were -1
    assert certified_accuracy([ABSTAIN], [ABSTAIN], [0.0], [0.0])[0] == 0.0


def test_records_merge_by_index_and_tsv_round_trip(tmp_path):
    a = SmoothingRecords(
        index=[4, 0, 2], label=[1, 0, 2], predict=[1, ABSTAIN, 2], radius=[0.3, 0.0, 0.1], p_lower=[0.9, 0.4, 0.7]
    )
    b = SmoothingRecords(
        index=[2, 6], label=[2, 1], predict=[2, 0], radius=[0.1, 0.2], p_lower=[0.7, 0.8]
    )  # 2 is a padding duplicate
    merged = SmoothingRecords.concat([a, b]).merge()
    assert merged.index.tolist() == [0, 2, 4, 6]
    assert merged.predict.tolist() == [ABSTAIN, 2, 1, 0]
    assert merged.correct.tolist() == [False, True, True, False]
    path = merged.write_tsv(tmp_path / "rows.tsv")
    assert path.read_text().splitlines()[0].split("\t") == ["idx", "label", "predict", "radius", "correct", "p_lower"]
    back = SmoothingRecords.read_tsv(path)
    assert torch.equal(back.index, merged.index) and torch.equal(back.radius, merged.radius)
    clash = SmoothingRecords(index=[0], label=[0], predict=[1], radius=[0.1], p_lower=[0.6])
    with pytest.raises(ValueError, match="disagree"):
        SmoothingRecords.concat([merged, clash]).merge()


# --------------------------------------------------------------------------- CERTIFY / PREDICT
def test_constant_classifier_reaches_the_radius_cap():
    smooth = Smooth(Constant(2), num_classes=3, sigma=0.25)
    label, radius = smooth.certify(_image(), n0=10, n=200, alpha=0.01, batch_size=64, generator=_gens()[0])
    assert label == 2
    assert radius == pytest.approx(0.25 * norm.ppf(0.01 ** (1 / 200)))
    assert radius == pytest.approx(radius_cap(200, 0.01, 0.25))
    assert smooth.predict(_image(), n=50, alpha=0.001, batch_size=64, generator=_gens()[0]) == 2


@pytest.mark.parametrize("value,sigma", [(0.6, 0.25), (0.35, 0.5)])
def test_half_space_classifier_radius_matches_the_analytic_probability(value, sigma):
    """P(f(x+ε) = c_A) = Φ(|v − t|/σ); the certified radius σΦ⁻¹(p̲_A) lies below the true distance |v − t|."""
    n, alpha = 4000, 0.001
    p_true = norm.cdf(abs(value - 0.5) / sigma)
    expected_class = int(value > 0.5)
    smooth = Smooth(PixelThreshold(0.5), num_classes=2, sigma=sigma)
    result = smooth.certify_batch(_image(value)[None], n0=100, n=n, alpha=alpha, batch_size=1000, generators=_gens(1))
    count = int(result.count[0])
    assert int(result.prediction[0]) == expected_class
    assert abs(count - n * p_true) <= 4 * math.sqrt(n * p_true * (1 - p_true))  # the vote frequency estimates p
    p_lower = clopper_pearson_lower(count, n, alpha)
    assert float(result.p_lower[0]) == pytest.approx(p_lower)
    assert float(result.radius[0]) == pytest.approx(sigma * norm.ppf(p_lower))
    assert 0 < float(result.radius[0]) <= abs(value - 0.5)  # valid: never beyond the decision boundary
    # the radius is that of some p inside the (1 − 2α) Clopper–Pearson interval of the count, which contains p_true
    ci = binomtest(count, n).proportion_ci(confidence_level=1 - 2 * alpha)
    assert ci.low <= p_true <= ci.high


def test_predict_abstains_on_an_even_split_and_certify_abstains_with_radius_zero():
    smooth = Smooth(Alternating(), num_classes=2, sigma=0.5)
    result = smooth.predict_batch(_image()[None], n=200, alpha=0.01, batch_size=100, generators=_gens())
    assert result.counts.tolist() == [[100, 100]]
    assert result.p_value.item() == pytest.approx(1.0)
    assert result.prediction.item() == ABSTAIN
    assert smooth.certify(_image(), n0=10, n=200, alpha=0.01, batch_size=100) == (ABSTAIN, 0.0)
    # a random 50/50 classifier (pixel at the threshold) also abstains
    coin = Smooth(PixelThreshold(0.5), num_classes=2, sigma=0.25)
    assert coin.predict(_image(0.5), n=1000, alpha=0.001, batch_size=500, generator=_gens(3)[0]) == ABSTAIN


def test_certify_is_seeded_per_example_and_independent_of_batching():
    x = torch.stack([_image(v) for v in (0.45, 0.55, 0.6, 0.52)])
    smooth = Smooth(PixelThreshold(0.5), num_classes=2, sigma=0.25)
    idx = [10, 11, 12, 13]
    batched = smooth.certify_batch(x, 20, 300, 0.01, 128, example_generators(7, idx))
    again = smooth.certify_batch(x, 20, 300, 0.01, 128, example_generators(7, idx))
    assert torch.equal(batched.count, again.count) and torch.equal(batched.radius, again.radius)
    singles = [smooth.certify(x[i], 20, 300, 0.01, 128, example_generators(7, [j])[0]) for i, j in enumerate(idx)]
    assert [s[0] for s in singles] == batched.prediction.tolist()
    assert [s[1] for s in singles] == pytest.approx(batched.radius.tolist())
    reversed_ = smooth.certify_batch(x.flip(0), 20, 300, 0.01, 128, example_generators(7, idx[::-1]))
    assert torch.equal(reversed_.count, batched.count.flip(0))
    other_seed = smooth.certify_batch(x, 20, 300, 0.01, 128, example_generators(8, idx))
    assert not torch.equal(other_seed.count, batched.count)
    assert example_seed(7, 10, 3) == example_seed(7, 10, 3) != example_seed(7, 10, 4)


class Recorder(nn.Module):
    """Records the inputs reaching its normalizer (i.e. the pixel-space input of the classifier)."""

    def __init__(self) -> None:
        super().__init__()
        self.model = NormalizedModel(Constant(0, 2), mean=[0.5], std=[0.25])
        self.seen: list[torch.Tensor] = []
        self.model.normalize.register_forward_pre_hook(lambda mod, args: self.seen.append(args[0].clone()))

    def forward(self, x):
        return self.model(x)


def test_smooth_noise_is_in_pixel_space_unclamped_with_independent_draws():
    recorder = Recorder()
    recorder.train()
    x = torch.rand(SHAPE, generator=torch.Generator().manual_seed(0))
    Smooth(recorder, num_classes=2, sigma=0.5).certify(
        x, n0=64, n=2000, alpha=0.01, batch_size=512, generator=_gens()[0]
    )
    assert recorder.training and recorder.model.training  # modes restored
    inputs = torch.cat(recorder.seen)
    assert inputs.shape == (2064, *SHAPE)
    noise = inputs - x
    assert noise.mean().item() == pytest.approx(0.0, abs=0.02)
    assert noise.std().item() == pytest.approx(0.5, rel=0.02)
    assert inputs.min() < -0.5 and inputs.max() > 1.5  # no clamp to [0, 1]
    assert torch.unique(inputs.flatten(1), dim=0).shape[0] == 2064  # n0 selection and n estimation draws differ


def test_module_training_noise_is_added_in_pixel_space_before_the_normalizer():
    module = RandomizedSmoothing(arch="mlp", input_shape=SHAPE, num_classes=3, mean=[0.3], std=[0.2], sigma=0.25)
    seen = []
    module.model.normalize.register_forward_pre_hook(lambda mod, args: seen.append(args[0].clone()))
    x = torch.rand(512, *SHAPE)
    loss, logits = module.training_loss(x, torch.zeros(512, dtype=torch.long))
    assert logits.shape == (512, 3) and loss.requires_grad
    noise = seen[0] - x
    assert noise.std().item() == pytest.approx(0.25, rel=0.03)
    assert seen[0].min() < 0 and seen[0].max() > 1
    # per-example evaluation noise: the same example index gives the same noise whatever its batch
    x4 = torch.rand(4, *SHAPE)
    a = add_per_example_noise(x4, 0.25, example_generators(0, [5, 6, 7, 8]))
    b = add_per_example_noise(x4[2:], 0.25, example_generators(0, [7, 8]))
    assert torch.equal(a[2:], b)


def test_bad_arguments_are_clear_errors():
    for sigma in (0, -0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="sigma"):
            Smooth(Constant(0), 3, sigma)
        with pytest.raises(ValueError, match="sigma"):
            RandomizedSmoothing(sigma=sigma)
    with pytest.raises(TypeError, match="sigma"):
        Smooth(Constant(0), 3, "big")
    with pytest.raises(ValueError, match="num_classes"):
        Smooth(Constant(0), 1, 0.25)
    smooth = Smooth(Constant(0), 3, 0.25)
    with pytest.raises(ValueError, match="n0"):
        smooth.certify(_image(), 0, 10, 0.01, 10)
    with pytest.raises(ValueError, match="alpha"):
        smooth.certify(_image(), 10, 10, 0.0, 10)
    with pytest.raises(ValueError, match="alpha"):
        smooth.predict(_image(), 10, 1.5, 10)
    with pytest.raises(ValueError, match="batch_size"):
        smooth.predict(_image(), 10, 0.01, 0)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        smooth.certify(_image()[None], 10, 10, 0.01, 10)
    with pytest.raises(ValueError, match="pixel space"):
        smooth.certify(_image(2.0), 10, 10, 0.01, 10)
    with pytest.raises(ValueError, match="one generator per example"):
        smooth.certify_batch(_image()[None].repeat(2, 1, 1, 1), 10, 10, 0.01, 10, _gens())
    with pytest.raises(ValueError, match="num_classes=5"):
        Smooth(Constant(0, 3), 5, 0.25).certify(_image(), 10, 10, 0.01, 10)
    with pytest.raises(ValueError, match="radii"):
        RandomizedSmoothing(radii=[0.25, -1.0])
    with pytest.raises(ValueError, match="predict_method"):
        RandomizedSmoothing(predict_method="vote")
    with pytest.raises(ValueError, match="certify_skip"):
        RandomizedSmoothing(certify_skip=0)
    with pytest.raises(ValueError, match="seed"):
        RandomizedSmoothing(seed=-1)


# --------------------------------------------------------------------------- Lightning
def test_test_certification_does_not_depend_on_the_data_batch_size(tmp_path):
    results = []
    for batch_size in (3, 16):
        dm = DigitsDataModule(image_size=8, batch_size=batch_size, seed=0)
        torch.manual_seed(0)
        module = _digits_smoothing(
            dm,
            sigma=0.25,
            n0=16,
            n=64,
            alpha=0.01,
            certify_batch_size=256,
            certify_skip=2,
            certify_limit=5,
            radii=[0.0, 0.1],
        )
        trainer = _cpu_trainer(
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp_path,
            limit_test_batches=4 if batch_size == 3 else 1,
        )
        metrics = trainer.test(module, datamodule=dm, verbose=False)[0]
        results.append((module.certified, metrics))
    (small, m_small), (large, m_large) = results
    assert small.index.tolist() == large.index.tolist() == [0, 2, 4, 6, 8]
    assert torch.equal(small.predict, large.predict) and torch.allclose(small.radius, large.radius)
    assert (
        m_small["test/certified_acc@0"]
        == m_large["test/certified_acc@0"]
        == pytest.approx(small.certified_accuracy([0.0])[0])
    )


@pytest.mark.parametrize("with_writer", [False, True])
def test_predict_batch_indices_come_from_public_lightning_apis(tmp_path, monkeypatch, with_writer):
    """With a batch-interval writer the indices are ``trainer.predict_loop.current_batch_indices`` (the
    rebuilt batches are not consulted); without one they are rebuilt from the batch sampler's sampler.
    Both give the dataset indices of the batches, the last one partial."""
    from lit_advgame.smoothing import indices as indices_module
    from lit_advgame.smoothing.writer import SmoothingPredictionWriter

    if with_writer:

        def fail(batch_sampler):
            raise AssertionError("the predict loop's indices should have been used")

        monkeypatch.setattr(indices_module, "_rebuilt_batches", fail)
    dm = DigitsDataModule(image_size=8, batch_size=4, seed=0, predict_limit=10)
    module = _digits_smoothing(
        dm,
        sigma=0.5,
        n=16,
        alpha=0.01,
        certify_batch_size=64,
        certify_skip=1,
        predict_method="predict",
    )
    callbacks = [SmoothingPredictionWriter(output_dir=str(tmp_path / "out"))] if with_writer else []
    trainer = _cpu_trainer(
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=callbacks,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="could not infer the dataset indices")
        rows = trainer.predict(module, datamodule=dm)
    assert [r["index"].tolist() for r in rows] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_predict_step_runs_predict_with_binomial_p_values(tmp_path):
    dm = DigitsDataModule(image_size=8, batch_size=8, seed=0, predict_limit=10)
    module = _digits_smoothing(
        dm,
        sigma=0.5,
        n=64,
        alpha=0.01,
        certify_batch_size=256,
        certify_skip=3,
        predict_method="predict",
    )
    trainer = _cpu_trainer(
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    rows = trainer.predict(module, datamodule=dm)
    index = torch.cat([r["index"] for r in rows])
    assert index.tolist() == [0, 3, 6, 9]
    assert all("radius" not in r for r in rows)
    predict, p_value = torch.cat([r["predict"] for r in rows]), torch.cat([r["p_lower"] for r in rows])
    assert torch.all((predict == ABSTAIN) == (p_value > 0.01))
    smooth = module.smoothed_classifier()
    x = torch.stack([dm.dataset("test")[i][0] for i in index.tolist()])
    direct = smooth.predict_batch(x, 64, 0.01, 256, example_generators(0, index.tolist(), stream=STREAM_PREDICT))
    assert torch.equal(direct.prediction, predict) and torch.allclose(direct.p_value, p_value)


FAST = [
    "--trainer.limit_train_batches",
    "3",
    "--trainer.limit_val_batches",
    "2",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.log_every_n_steps",
    "1",
    "--trainer.max_epochs",
    "1",
]
CERTIFY_FAST = [
    "--model.init_args.n0",
    "10",
    "--model.init_args.n",
    "60",
    "--model.init_args.certify_batch_size",
    "512",
    "--model.init_args.certify_limit",
    "6",
    "--model.init_args.certify_skip",
    "2",
]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A one-epoch CLI fit of configs/smoothing_digits.yaml (no test): the run folder."""
    root = tmp_path_factory.mktemp("smoothing_cli")
    import os

    cwd = os.getcwd()
    os.chdir(root)
    try:
        main(["fit", "--config", str(CONFIGS / "smoothing_digits.yaml"), *FAST, "--test_after_fit", "false"])
    finally:
        os.chdir(cwd)
    return root


def test_cli_fit_logs_noisy_and_clean_metrics(trained_run):
    scalars = read_scalars(trained_run / "runs/smoothing_digits/version_0")
    for tag in (
        "train/loss_step",
        "train/loss_epoch",
        "train/acc",
        "val/loss",
        "val/acc",
        "val/acc_clean",
        "val/loss_clean",
    ):
        assert tag in scalars, f"{tag} missing from {sorted(scalars)}"
    assert 0.0 <= scalars["val/acc"][-1][1] <= 1.0 and 0.0 <= scalars["val/acc_clean"][-1][1] <= 1.0
    ckpt = torch.load(
        trained_run / "runs/smoothing_digits/version_0/checkpoints/last.ckpt", map_location="cpu", weights_only=False
    )
    assert ckpt["hyper_parameters"]["sigma"] == 0.25
    assert "n" not in ckpt["hyper_parameters"]  # evaluation options come from the config at test time


def test_cli_test_certifies_and_logs_certified_accuracy_and_figure(trained_run, monkeypatch):
    monkeypatch.chdir(trained_run)
    ckpt = trained_run / "runs/smoothing_digits/version_0/checkpoints/last.ckpt"
    main(
        [
            "test",
            "--config",
            str(CONFIGS / "smoothing_digits.yaml"),
            "--ckpt_path",
            str(ckpt),
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.limit_test_batches",
            "1",
            *CERTIFY_FAST,
        ]
    )
    version = trained_run / "runs/smoothing_digits/version_1"
    scalars = read_scalars(version)
    for radius in ("0", "0.125", "0.25", "0.375", "0.5"):
        assert f"test/certified_acc@{radius}" in scalars, sorted(scalars)
    for tag in ("test/abstain_rate", "test/smoothed_acc", "test/acc", "test/acc_clean"):
        assert tag in scalars
    assert scalars["test/certified_examples"][0][1] == 6  # certify_limit given at test time wins over the checkpoint
    assert "test/certified_accuracy" in read_image_tags(version)
    records = SmoothingRecords.read_tsv(version / "certify_test.tsv")
    assert records.index.tolist() == [0, 2, 4, 6, 8, 10]
    acc = records.certified_accuracy([0.0, 0.125, 0.25, 0.375, 0.5])
    logged = [scalars[f"test/certified_acc@{r}"][0][1] for r in ("0", "0.125", "0.25", "0.375", "0.5")]
    np.testing.assert_allclose(logged, acc, atol=1e-6)
    assert np.all(np.diff(acc) <= 0)  # non-increasing in the radius
    assert records.radius.max() <= radius_cap(60, 0.001, 0.25) + 1e-9


DDP_RUNNER = """
import json, sys
from lit_advgame.cli import main
for args in json.load(open(sys.argv[1])):
    main(args)
"""


def test_test_and_predict_under_ddp_match_one_process(trained_run, monkeypatch):
    """CERTIFY in `test` (results gathered over ranks, DistributedSampler padding removed by index) and in
    `predict` (per-rank TSVs of the writer merged by index) give the same rows on 1 and on 2 (DDP, gloo) processes."""
    monkeypatch.chdir(trained_run)
    ckpt = trained_run / "runs/smoothing_digits/version_0/checkpoints/last.ckpt"
    common = [
        "--config",
        str(CONFIGS / "smoothing_digits.yaml"),
        "--ckpt_path",
        str(ckpt),
        "--trainer.enable_progress_bar",
        "false",
        *CERTIFY_FAST,
    ]
    # 359 test images (odd): DDP pads rank 1 with a duplicate of index 0, which is certified
    test_args = [
        "test",
        *common,
        "--data.init_args.test_fraction",
        "0.2",
        "--model.init_args.certify_skip",
        "1",
        "--model.init_args.certify_limit",
        "5",
    ]
    predict_args = [
        "predict",
        *common,
        "--data.init_args.predict_limit",
        "20",
        "--data.init_args.batch_size",
        "4",
        "--model.init_args.certify_limit",
        "7",
    ]
    version = "--trainer.logger.init_args.version"
    main([*test_args, version, "single"])
    main([*predict_args, version, "single_predict"])
    out = trained_run / "runs/smoothing_digits/predictions"
    single_test = SmoothingRecords.read_tsv(trained_run / "runs/smoothing_digits/single/certify_test.tsv")
    single_predict = SmoothingRecords.read_tsv(out / "predictions.tsv")
    assert single_test.index.tolist() == [0, 1, 2, 3, 4]
    assert single_predict.index.tolist() == [0, 2, 4, 6, 8, 10, 12]
    assert (out / "certified_accuracy.tsv").is_file() and not (out / "predictions_rank0.tsv").exists()
    (out / "predictions.tsv").unlink()

    ddp = [
        *DDP_CPU_ARGS,
    ]
    runs = trained_run / "ddp_runs.json"
    runs.write_text(json.dumps([[*test_args, *ddp, version, "ddp"], [*predict_args, *ddp, version, "ddp_predict"]]))
    (trained_run / "ddp_runner.py").write_text(DDP_RUNNER)
    proc = subprocess.run(
        [sys.executable, "ddp_runner.py", str(runs)],
        check=False,
        cwd=trained_run,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for one, two in [
        (single_test, SmoothingRecords.read_tsv(trained_run / "runs/smoothing_digits/ddp/certify_test.tsv")),
        (single_predict, SmoothingRecords.read_tsv(out / "predictions.tsv")),
    ]:
        assert two.index.tolist() == one.index.tolist()
        assert torch.equal(two.predict, one.predict) and torch.allclose(two.radius, one.radius)
    scalars = read_scalars(trained_run / "runs/smoothing_digits/ddp")
    assert scalars["test/certified_examples"][0][1] == 5
    assert scalars["test/certified_acc@0"][0][1] == pytest.approx(single_test.certified_accuracy([0.0])[0])
    assert not list(out.glob("predictions_rank*.tsv"))


@pytest.mark.parametrize("name", ["smoothing_digits.yaml", "smoothing_mnist.yaml", "smoothing_cifar10.yaml"])
def test_configs_parse(name, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(CONFIGS / name), "--print_config"])
    assert exc.value.code == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["model"]["class_path"] == "lit_advgame.training.smoothing.RandomizedSmoothing"
    assert cfg["model"]["init_args"]["sigma"] > 0


def test_rank_zero_merge_raises_its_error_on_every_rank():
    """The writers' merge runs on rank 0 between two barriers; its error is broadcast (no rank waits forever)."""
    from types import SimpleNamespace

    from lit_advgame.utils.distributed import run_on_rank_zero

    calls: list[str] = []
    strategy = SimpleNamespace(barrier=lambda name: calls.append(name), broadcast=lambda obj, src=0: obj)
    assert run_on_rank_zero(SimpleNamespace(strategy=strategy, is_global_zero=True), lambda: 7, "merge") == 7
    assert calls == ["merge", "merge_done"]
    other_rank = SimpleNamespace(
        strategy=SimpleNamespace(barrier=lambda name: None, broadcast=lambda obj, src=0: "OSError: disk full"),
        is_global_zero=False,
    )
    with pytest.raises(RuntimeError, match="disk full"):
        run_on_rank_zero(other_rank, lambda: 7, "merge")

    def fail():
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        run_on_rank_zero(SimpleNamespace(strategy=strategy, is_global_zero=True), fail, "merge")
