"""Ensembles with diversity regularizers: the losses against their formulas, double backprop,
the transfer matrix, the Lightning module's logging, configs and DDP."""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import yaml
from pytorch_lightning.loggers import TensorBoardLogger
from torch import nn

from lit_advgame.attacks import Attack
from lit_advgame.attacks.pgd_settings import PGDSettings
from lit_advgame.cli import main
from lit_advgame.data import DigitsDataModule
from lit_advgame.ensembles import (
    ADPRegularizer,
    EnsembleModel,
    GALRegularizer,
    TRSRegularizer,
    build_ensemble_model,
    build_regularizer,
    ensemble_entropy,
    ensemble_log_det,
    gal_coherence,
    gradient_similarity,
    member_cross_entropy,
    member_input_gradients,
    smoothness,
    smoothness_pgd,
    transfer_matrix,
    transfer_report,
)
from lit_advgame.training.ensemble import Ensemble
from tests.conftest import CONFIGS, DDP_CPU_ARGS
from tests.tb_utils import read_scalars

TINY = {"width": 4}


pytestmark = pytest.mark.usefixtures("one_thread_module")  # one intra-op thread (tests/conftest.py)


def _tiny_ensemble(num: int = 3, seed: int = 0, arch: str = "small_cnn") -> EnsembleModel:
    torch.manual_seed(seed)
    return build_ensemble_model(num, arch, 10, (1, 8, 8), [0.3], [0.3], TINY if arch == "small_cnn" else None)


def _batch(b: int = 6, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 1, 8, 8, generator=g), torch.randint(0, 10, (b,), generator=g)


# --------------------------------------------------------------------------- the ensemble model
def test_ensemble_output_is_log_of_mean_probability():
    model = _tiny_ensemble(3)
    x, y = _batch()
    logits = model.member_logits(x)
    assert logits.shape == (3, 6, 10)
    expected = torch.log(torch.softmax(logits, dim=-1).mean(dim=0))
    out = model(x)
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.allclose(out.exp().sum(dim=1), torch.ones(6), atol=1e-6)
    # cross-entropy on the output is the NLL of the averaged probabilities
    nll = -expected[torch.arange(6), y].mean()
    assert torch.allclose(F.cross_entropy(out, y), nll, atol=1e-6)
    # one member: log-softmax of its logits (same argmax and CE as the model alone)
    single = EnsembleModel([model.members[0]])
    assert torch.allclose(single(x), torch.log_softmax(model.members[0](x), dim=1), atol=1e-6)


def test_mixed_architectures_and_bad_members():
    torch.manual_seed(0)
    model = build_ensemble_model(2, ["small_cnn", "mlp"], 10, (1, 8, 8), [0.3], [0.3])
    assert [type(m.net).__name__ for m in model.members] == ["SmallCNN", "MLP"]
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(ValueError, match="archs lists 2"):
        build_ensemble_model(3, ["small_cnn", "mlp"], 10, (1, 8, 8))
    with pytest.raises(ValueError, match="at least one member"):
        EnsembleModel([])
    with pytest.raises(TypeError, match="members\\[1\\]"):
        EnsembleModel([nn.Linear(2, 2), "not a module"])


def test_member_input_gradients_match_per_example_autograd():
    model = _tiny_ensemble(3)
    x, y = _batch(4)
    logits, grads = member_input_gradients(model, x, y)
    assert grads.shape == (3, 4, 64)
    for i, member in enumerate(model.members):
        assert torch.allclose(logits[i], member(x), atol=1e-6)
        for b in range(4):
            xb = x[b : b + 1].clone().requires_grad_(True)
            (g,) = torch.autograd.grad(F.cross_entropy(member(xb), y[b : b + 1]), xb)
            assert torch.allclose(grads[i, b], g.flatten(), atol=1e-6)


def test_member_cross_entropy_scalings():
    logits = torch.randn(3, 5, 10)
    y = torch.randint(0, 10, (5,))
    ces = [F.cross_entropy(logits[i], y) for i in range(3)]
    assert torch.allclose(member_cross_entropy(logits, y, "reference"), sum(ces), atol=1e-6)
    assert torch.allclose(member_cross_entropy(logits, y, "mean"), sum(ces) / 3, atol=1e-6)


# --------------------------------------------------------------------------- TRS
def _grads(*vectors) -> torch.Tensor:
    """(N, 1, D) gradients from N hand-made vectors (one example)."""
    return torch.tensor(vectors, dtype=torch.float32).unsqueeze(1)


def test_trs_similarity_on_hand_made_gradients():
    assert gradient_similarity(_grads([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])).item() == pytest.approx(1.0)
    assert gradient_similarity(_grads([1.0, 0.0], [0.0, 3.0])).item() == pytest.approx(0.0)
    assert gradient_similarity(_grads([1.0, -2.0], [-1.0, 2.0])).item() == pytest.approx(1.0)
    assert gradient_similarity(_grads([1.0, -2.0], [-1.0, 2.0]), absolute=False).item() == pytest.approx(-1.0)
    # cosine is scale invariant
    assert gradient_similarity(_grads([1.0, 1.0], [5.0, 0.0])).item() == pytest.approx(1 / math.sqrt(2))
    # N = 4: the mean over all 6 pairs, by enumeration
    vecs = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0], [-1.0, 0.0, 0.0]]
    expected = np.mean(
        [
            abs(np.dot(a, b)) / (np.linalg.norm(a) * np.linalg.norm(b))
            for a, b in itertools.combinations(np.array(vecs), 2)
        ]
    )
    assert gradient_similarity(_grads(*vecs)).item() == pytest.approx(expected, abs=1e-6)
    # batched: the mean over examples
    batch = torch.stack([_grads([1.0, 0.0], [1.0, 0.0])[:, 0], _grads([1.0, 0.0], [0.0, 1.0])[:, 0]], dim=1)
    assert gradient_similarity(batch).item() == pytest.approx(0.5)


def test_smoothness_matches_the_reference_magnitude():
    model = _tiny_ensemble(3)
    x, y = _batch(5)
    _, grads = member_input_gradients(model, x, y)
    # the reference: gradient of the batch-mean CE, Magnitude = 2·mean_b ||g_b||², averaged over members
    magnitudes = []
    for member in model.members:
        xr = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(member(xr), y), xr)
        magnitudes.append(2 * g.flatten(1).pow(2).sum(1).mean())
    assert smoothness(grads, "reference").item() == pytest.approx((sum(magnitudes) / 3).item(), rel=1e-5)
    per_example = grads.pow(2).sum(-1)  # (N, B)
    assert smoothness(grads, "mean").item() == pytest.approx(per_example.mean().item(), rel=1e-6)
    assert smoothness(grads, "reference").item() == pytest.approx(2 * per_example.mean().item() / 25, rel=1e-5)


class _SoftplusNet(nn.Module):
    def __init__(self, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w1 = nn.Parameter(torch.randn(5, 4, generator=g, dtype=torch.float64))
        self.w2 = nn.Parameter(torch.randn(3, 5, generator=g, dtype=torch.float64))

    def forward(self, x):
        return F.softplus(x.flatten(1) @ self.w1.t()) @ self.w2.t()


class _PenaltyModule(nn.Module):
    def __init__(self, model, reg):
        super().__init__()
        self.model, self.reg = model, reg

    def forward(self, x, y):
        return self.reg(self.model, x, y).penalty


@pytest.mark.parametrize("name", ["trs", "gal"])
def test_gradients_flow_through_the_double_backprop(name):
    """The penalty's weight gradient (double backprop) equals finite differences (float64 gradcheck)."""
    model = EnsembleModel([_SoftplusNet(s) for s in range(3)])
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 2, 2, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1])
    kwargs = {"variant": "vanilla", "lambda_sim": 1.0, "lambda_smooth": 1.0} if name == "trs" else {}
    reg = build_regularizer(name, 3, "mean", **kwargs)
    wrapped = _PenaltyModule(model, reg)

    def penalty(weight):
        return torch.func.functional_call(wrapped, {"model.members.1.w1": weight}, (x, y), strict=False)

    w = model.members[1].w1.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(penalty(w), w)
    assert grad.abs().max() > 1e-3  # the check below is not trivially about a zero gradient
    assert torch.autograd.gradcheck(penalty, (w,), eps=1e-6, atol=1e-5)
    # and with real float32 members, every member's weights get a nonzero gradient from the penalty alone
    ens = _tiny_ensemble(3)
    xb, yb = _batch(6)
    reg32 = build_regularizer(name, 3, **({"variant": "vanilla"} if name == "trs" else {}))
    reg32(ens, xb, yb).penalty.backward()
    for member in ens.members:
        assert member.net.features[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("num", [2, 4])
def test_trs_works_for_any_number_of_members(num):
    model = _tiny_ensemble(num)
    x, y = _batch(6)
    reg = TRSRegularizer(num, lambda_sim=1.0, lambda_smooth=1.0, eps_start=0.05, eps_end=0.1, inner_steps=1)
    out = reg(model, x, y, epoch=0, max_epochs=2, generator=torch.Generator().manual_seed(0))
    assert out.member_logits.shape == (num, 6, 10)
    assert 0.0 <= out.terms["sim"].item() <= 1.0
    assert out.terms["eps"].item() == pytest.approx(0.05)
    assert torch.allclose(out.penalty, out.terms["sim"] + out.terms["smooth"])
    out.penalty.backward()


def test_trs_radius_ramp_follows_the_reference_schedule():
    reg = TRSRegularizer(3, eps_start=0.01, eps_end=0.03)
    for epoch in range(5):
        assert reg.current_eps(epoch, 4) == pytest.approx(0.01 + 0.02 * min(epoch, 4) / 4)
    assert TRSRegularizer(3, eps_start=0.1, eps_end=0.2, ramp_epochs=2).current_eps(1, 100) == pytest.approx(0.15)
    assert TRSRegularizer(3, variant="vanilla").current_eps(3, 10) is None
    with pytest.raises(ValueError, match="max_epochs"):
        reg.current_eps(1, None)


def _objective(model, x, y):
    with torch.enable_grad():
        _, grads = member_input_gradients(model, x, y, create_graph=False)
    return grads.pow(2).sum(-1).sum(0)  # per example


def _smooth_ensemble() -> EnsembleModel:
    """Smooth members (softplus, BatchNorm) so that gradient ascent on the gradient norm is monotone."""
    torch.manual_seed(0)
    return EnsembleModel(
        [
            nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.Softplus(), nn.Linear(32, 10))
            for _ in range(3)
        ]
    )


def test_smoothness_pgd_stays_in_the_ball_and_raises_the_gradient_norm():
    model = _smooth_ensemble()
    model.train()
    x, y = _batch(8)
    eps = 0.1
    running = model.members[0][2].running_mean.clone()
    adv = smoothness_pgd(model, x, y, eps, steps=6, generator=torch.Generator().manual_seed(0))
    assert (adv - x).abs().max() <= eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    assert all(m.training for m in model.modules())  # modes restored after the eval-mode attack
    assert torch.equal(model.members[0][2].running_mean, running)  # BatchNorm statistics untouched
    # deterministic given the generator; differs with another seed
    again = smoothness_pgd(model, x, y, eps, steps=6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(adv, again)
    assert not torch.equal(adv, smoothness_pgd(model, x, y, eps, generator=torch.Generator().manual_seed(1)))
    model.eval()
    start = (x + (2 * torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) - 1) * eps).clamp(0, 1)
    values = [_objective(model, start, y)] + [
        _objective(model, smoothness_pgd(model, x, y, eps, steps=k, generator=torch.Generator().manual_seed(0)), y)
        for k in (2, 6)
    ]
    totals = [v.sum().item() for v in values]
    assert totals == sorted(totals) and totals[-1] > totals[0] > 0
    assert (values[-1] > values[0]).all()  # every example's gradient norm grew
    # reference options: train-mode attack updates the BatchNorm statistics; accumulated sign steps stay in the ball
    model.train()
    acc = smoothness_pgd(
        model, x, y, eps, accumulate_grad=True, bn_mode="train", generator=torch.Generator().manual_seed(0)
    )
    assert (acc - x).abs().max() <= eps + 1e-6
    assert not torch.equal(model.members[0][2].running_mean, running)
    assert torch.equal(smoothness_pgd(model, x, y, 0.0), x)  # eps = 0 is the identity


def test_trs_plus_smoothness_uses_half_clean_half_perturbed_batch(monkeypatch):
    model = _tiny_ensemble(3)
    x, y = _batch(7)
    seen = {}
    from lit_advgame.ensembles import trs

    real = trs.smoothness_pgd

    def spy(model_, xs, ys, eps, **kw):
        seen["n"], seen["eps"] = xs.shape[0], eps
        return real(model_, xs, ys, eps, **kw)

    monkeypatch.setattr(trs, "smoothness_pgd", spy)
    TRSRegularizer(3, eps_start=0.02, eps_end=0.06)(model, x, y, epoch=1, max_epochs=2)
    assert seen == {"n": 7 - 7 // 2, "eps": pytest.approx(0.04)}


# --------------------------------------------------------------------------- GAL and ADP
def test_gal_coherence_formula():
    vecs = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    cosines = [0.0, 1 / math.sqrt(2), 1 / math.sqrt(2)]
    expected = math.log(sum(math.exp(c) for c in cosines))
    assert gal_coherence(_grads(*vecs)).item() == pytest.approx(expected, abs=1e-6)
    # signed cosine: opposite gradients give the smallest coherence
    assert gal_coherence(_grads([1.0, 0.0], [-1.0, 0.0])).item() == pytest.approx(-1.0, abs=1e-6)
    model = _tiny_ensemble(3)
    x, y = _batch(5)
    out = GALRegularizer(3, lambda_gal=0.5)(model, x, y)
    _, grads = member_input_gradients(model, x, y)
    assert out.terms["gal"].item() == pytest.approx(gal_coherence(grads).item(), abs=1e-6)
    assert out.penalty.item() == pytest.approx(0.5 * out.terms["gal"].item(), abs=1e-6)


def _adp_by_hand(probs: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> tuple[float, float, float]:
    entropies, log_dets = [], []
    for b in range(probs.shape[1]):
        mean = probs[:, b].mean(axis=0)
        entropies.append(-(mean * np.log(mean + 1e-20)).sum())
        rows = np.delete(probs[:, b], y[b], axis=1)
        rows = rows / np.linalg.norm(rows, axis=1, keepdims=True)
        log_dets.append(np.linalg.slogdet(rows @ rows.T + 1e-6 * np.eye(len(rows)))[1])
    h, d = float(np.mean(entropies)), float(np.mean(log_dets))
    return h, d, -alpha * h - beta * d


def test_adp_terms_match_the_formula():
    probs = torch.tensor(
        [
            [[0.7, 0.2, 0.1, 0.0], [0.1, 0.1, 0.1, 0.7]],
            [[0.6, 0.1, 0.1, 0.2], [0.25, 0.25, 0.25, 0.25]],
            [[0.5, 0.0, 0.5, 0.0], [0.0, 0.3, 0.3, 0.4]],
        ],
        dtype=torch.float64,
    )
    y = torch.tensor([0, 3])
    h, d, _ = _adp_by_hand(probs.numpy(), y.numpy(), 2.0, 0.5)
    assert ensemble_entropy(probs).item() == pytest.approx(h, rel=1e-9)
    assert ensemble_log_det(probs, y).item() == pytest.approx(d, rel=1e-6)
    # identical non-true predictions have no diversity: log det ≈ (N−1)·log(1e-6)
    same = probs[:1].repeat(3, 1, 1)
    assert ensemble_log_det(same, y).item() == pytest.approx(2 * math.log(1e-6) + math.log(3), abs=1e-3)
    # the regularizer on a real ensemble
    model = _tiny_ensemble(3)
    x, yb = _batch(5)
    out = ADPRegularizer(3, alpha=2.0, beta=0.5)(model, x, yb)
    member_probs = torch.softmax(model.member_logits(x), dim=-1).double().detach().numpy()
    h, d, penalty = _adp_by_hand(member_probs, yb.numpy(), 2.0, 0.5)
    assert out.terms["adp_entropy"].item() == pytest.approx(h, rel=1e-4)
    assert out.terms["adp_logdet"].item() == pytest.approx(d, rel=1e-3)
    assert out.penalty.item() == pytest.approx(penalty, rel=1e-3)


# --------------------------------------------------------------------------- bad input
def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown regularizer 'dverge'.*none, trs, gal, adp"):
        build_regularizer("dverge", 3)
    for name in ("trs", "gal", "adp"):
        with pytest.raises(ValueError, match="num_members >= 2"):
            build_regularizer(name, 1)
    with pytest.raises(TypeError, match="unknown option.*lamda.*lambda_sim"):
        build_regularizer("trs", 3, lamda=2.0)
    with pytest.raises(ValueError, match="variant"):
        build_regularizer("trs", 3, variant="turbo")
    with pytest.raises(ValueError, match="scaling"):
        build_regularizer("gal", 3, scaling="sum")
    with pytest.raises(ValueError, match="num_members >= 2"):
        Ensemble(num_members=1, regularizer="trs")
    with pytest.raises(ValueError, match="unknown regularizer"):
        Ensemble(regularizer="nope")
    with pytest.raises(ValueError, match="num_members=2 but archs lists 3"):
        Ensemble(num_members=2, archs=["small_cnn", "mlp", "lenet"])
    with pytest.raises(ValueError, match="weights"):
        Ensemble(weights="model.pt")
    with pytest.raises(ValueError, match="adv_loss"):
        Ensemble(adv_loss="mix")
    with pytest.raises(ValueError, match="built for 3 members"):
        TRSRegularizer(3)(_tiny_ensemble(2), *_batch(4))
    assert Ensemble(num_members=1).model.num_members == 1  # a plain "ensemble" of one is allowed


# --------------------------------------------------------------------------- transferability
class _SumModel(nn.Module):
    """Class 0 iff the pixel sum exceeds 8 (inputs 1×4×4)."""

    def forward(self, x):
        s = x.flatten(1).sum(1) - 8.0
        return torch.stack([s, -s], dim=1)


class _ConstantModel(nn.Module):
    """Always class 0, whatever the input (an attack cannot move it)."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([1.0, 0.0]))

    def forward(self, x):
        return self.bias.expand(x.shape[0], 2) + 0 * x.flatten(1).sum(1, keepdim=True)


def test_transfer_matrix_on_models_with_known_transfer():
    a, a2, c = _SumModel(), _SumModel(), _ConstantModel()
    x = torch.full((5, 1, 4, 4), 0.75)
    x[4] = 0.25  # misclassified by the sum models: dropped from the probe points
    y = torch.zeros(5, dtype=torch.long)
    factory = lambda m: Attack(m, "linf", eps=0.5, step_size=0.1, steps=10, random_start=False)
    ens = EnsembleModel([a, a2, c])
    report = transfer_report([a, a2, c], x, y, factory, ensemble=ens, restarts=2)
    expected = torch.tensor([[1.0, 1.0, 0.0, 1.0], [1.0, 1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 1.0]])
    assert torch.equal(report.matrix, expected)
    assert report.names == ["member0", "member1", "member2", "ensemble"]
    assert report.num_points == 4 and report.num_candidates == 5
    assert report.off_diagonal_mean() == pytest.approx(2 / 6)
    assert "| member0 | 100.0 | 100.0 | 0.0 | 100.0 |" in report.to_markdown()
    assert torch.equal(transfer_matrix([a, a2, c], x, y, factory), expected[:3, :3])
    with pytest.raises(ValueError, match="no probe point"):
        transfer_matrix([a], x[4:], y[4:], factory)


# --------------------------------------------------------------------------- the LightningModule
def _module(dm: DigitsDataModule, **kwargs) -> Ensemble:
    kwargs.setdefault("arch_kwargs", TINY)
    return Ensemble(num_classes=dm.num_classes, input_shape=dm.input_shape, mean=dm.mean, std=dm.std, **kwargs)


def _fit(tmp_path, module: Ensemble, dm: DigitsDataModule, epochs: int = 1) -> dict:
    logger = TensorBoardLogger(tmp_path, name="run", default_hp_metric=False)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        limit_train_batches=2,
        limit_val_batches=1,
        log_every_n_steps=1,
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
    )
    trainer.fit(module, datamodule=dm)
    return read_scalars(logger.log_dir)


METHODS = {
    "none": ({}, ()),
    "trs": (
        {"lambda_sim": 1.0, "lambda_smooth": 1.0, "eps_start": 0.02, "eps_end": 0.06, "inner_steps": 2},
        ("sim", "smooth", "eps"),
    ),
    "gal": ({}, ("gal",)),
    "adp": ({}, ("adp_entropy", "adp_logdet")),
}


@pytest.mark.parametrize("name", list(METHODS))
def test_short_fit_logs_every_term(tmp_path, name):
    pl.seed_everything(0)
    dm = DigitsDataModule(image_size=8, batch_size=16, seed=0)
    kwargs, terms = METHODS[name]
    epochs = 2 if name == "trs" else 1
    extra = {"attack": {"eps": 0.1, "steps": 2}, "adv_loss": "add"} if name == "gal" else {}
    module = _module(dm, num_members=2 if name == "adp" else 3, regularizer=name, regularizer_kwargs=kwargs, **extra)
    scalars = _fit(tmp_path, module, dm, epochs)
    members = module.num_members
    expected = {
        "train/loss_step",
        "train/ce_step",
        "train/ce_epoch",
        "train/acc",
        "val/loss",
        "val/acc",
        *(f"train/{t}_step" for t in terms),
        *(f"val/acc_member{i}" for i in range(members)),
    }
    if extra:
        expected.add("train/ce_adv_step")
    assert expected <= set(scalars), sorted(expected - set(scalars))
    assert f"val/acc_member{members}" not in scalars
    for tag in expected:
        assert all(math.isfinite(v) for _, v in scalars[tag])
    if name == "trs":
        # the ramped radius: δ0 at epoch 0 and δ0 + (δM − δ0)·1/2 at epoch 1 of 2
        eps = [v for _, v in scalars["train/eps_epoch"]]
        assert eps == pytest.approx([0.02, 0.04])
        assert all(0 <= v <= 1 for _, v in scalars["train/sim_step"])
    # the logged loss is the classification term plus the weighted penalty; ce is the members' summed CE
    assert all(v > 0 for _, v in scalars["train/ce_step"])


def test_training_loss_is_reproducible_and_members_are_distinct():
    dm = DigitsDataModule(image_size=8, seed=0)
    torch.manual_seed(0)
    module = _module(dm, regularizer="trs", regularizer_kwargs={"inner_steps": 2, "lambda_smooth": 100.0})
    x, y = dm.probe_set(8, "train")
    first, logits = module.training_loss(x, y)
    second, _ = module.training_loss(x, y)
    assert torch.equal(first, second)
    assert torch.allclose(logits, module(x), atol=1e-5)
    w = [m.net.features[0].weight for m in module.model.members]
    assert not torch.equal(w[0], w[1])


def test_checkpoint_round_trip(tmp_path):
    pl.seed_everything(0)
    dm = DigitsDataModule(image_size=8, batch_size=16, seed=0)
    module = _module(
        dm,
        num_members=2,
        archs=["small_cnn", "mlp"],
        regularizer="gal",
        regularizer_kwargs={"lambda_gal": 0.25},
        scaling="mean",
        arch_kwargs=None,
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=dm)
    trainer.save_checkpoint(tmp_path / "ens.ckpt")
    restored = Ensemble.load_from_checkpoint(tmp_path / "ens.ckpt", map_location="cpu")
    assert restored.regularizer.lambda_gal == 0.25 and restored.regularizer.scaling == "mean"
    x = torch.rand(3, 1, 8, 8)
    module.eval(), restored.eval()
    assert torch.equal(module(x), restored(x))


def test_gal_input_noise_is_the_one_gaussian_noise_helper():
    """GAL's DVERGE input noise is smoothing.noise.add_gaussian_noise with prob and clamp (same draws as before);
    the old ensembles.add_gaussian_noise is a deprecated alias."""
    import lit_advgame.ensembles as ensembles
    from lit_advgame.smoothing.noise import add_gaussian_noise

    x = torch.rand(16, 1, 4, 4)
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(x.shape, generator=gen)
    apply = torch.rand(16, generator=gen) < 0.5
    expected = torch.where(apply.view(-1, 1, 1, 1), (x + 0.5 * noise).clamp(0, 1), x)  # the previous formula
    assert torch.equal(add_gaussian_noise(x, 0.5, torch.Generator().manual_seed(0), prob=0.5, clamp=True), expected)
    with pytest.warns(DeprecationWarning, match="smoothing.noise.add_gaussian_noise"):
        assert torch.equal(ensembles.add_gaussian_noise(x, 0.5, 0.5, torch.Generator().manual_seed(0)), expected)
    assert 0 < int(apply.sum()) < 16


def test_adversarial_training_settings_and_deprecated_keywords():
    """``attack`` (PGDSettings, default None = off) replaces the flat adversarial_training/adv_* keywords, which
    still work for one release with a DeprecationWarning naming the new argument; the defaults are the same."""
    assert Ensemble(num_members=2).attack_settings is None
    new = Ensemble(num_members=2, attack={"eps": 0.1, "steps": 2})
    assert new.attack_settings == PGDSettings(norm="linf", eps=0.1, steps=2, step_size=0.125, random_start=True)
    assert new.hparams.attack == new.attack_settings.as_dict()
    with pytest.warns(
        DeprecationWarning, match="adversarial_training is deprecated; give the training attack as attack"
    ):
        old = Ensemble(num_members=2, adversarial_training=True, adv_eps=0.1, adv_steps=2)
    assert old.attack_settings == new.attack_settings
    with pytest.warns(DeprecationWarning):
        assert Ensemble(num_members=2, adversarial_training=True).attack_settings == PGDSettings().resolved()
    with pytest.warns(DeprecationWarning):
        assert Ensemble(num_members=2, adversarial_training=False, adv_eps=0.1).attack_settings is None
    assert PGDSettings().resolved().eps == pytest.approx(8 / 255)  # the old adv_eps default


def test_classifier_contract():
    """``classifier`` is the EnsembleModel (with ``.members``); the metadata lists each member's architecture."""
    module = Ensemble(
        num_members=2, archs=["small_cnn", "mlp"], arch_kwargs=None, input_shape=(1, 8, 8), mean=[0.5], std=[0.25]
    )
    assert module.classifier is module.model and len(module.classifier.members) == 2
    meta = module.classifier_metadata()
    assert [m["arch"] for m in meta["members"]] == ["small_cnn", "mlp"]
    assert meta["input_shape"] == [1, 8, 8] and meta["mean"] == [0.5] and meta["std"] == [0.25]
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(module.classifier(x), module(x))


# --------------------------------------------------------------------------- configs and DDP
CONFIG_NAMES = [
    "ensemble_digits.yaml",
    "trs_digits.yaml",
    "gal_digits.yaml",
    "adp_digits.yaml",
    "trs_mnist.yaml",
    "trs_cifar10.yaml",
]


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_configs_parse(name, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(CONFIGS / name), "--print_config"])
    assert exc.value.code == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["model"]["class_path"] == "lit_advgame.training.ensemble.Ensemble"


def test_reference_cifar_config_uses_the_published_coefficients(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(CONFIGS / "trs_cifar10.yaml"), "--print_config"])
    args = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]
    assert args["scaling"] == "reference" and args["regularizer"] == "trs"
    assert args["regularizer_kwargs"] == {
        "lambda_sim": 40.0,
        "lambda_smooth": 2.5,
        "variant": "plus",
        "eps_start": 0.01,
        "eps_end": 0.03,
    }


def test_trs_fit_with_ddp_on_two_cpu_processes(tmp_path):
    """Double backprop under DDP (gloo, 2 CPU processes) through the CLI."""
    cmd = [
        sys.executable,
        "-m",
        "lit_advgame",
        "fit",
        "--config",
        str(CONFIGS / "trs_digits.yaml"),
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "2",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.limit_test_batches",
        "1",
        "--trainer.log_every_n_steps",
        "1",
        "--trainer.enable_progress_bar",
        "false",
        *DDP_CPU_ARGS,
        "--model.init_args.arch_kwargs",
        "{width: 4}",
        "--model.init_args.regularizer_kwargs.inner_steps",
        "1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    ckpt = torch.load(
        tmp_path / "runs/trs_digits/version_0/checkpoints/last.ckpt", map_location="cpu", weights_only=False
    )
    assert ckpt["global_step"] == 2
    scalars = read_scalars(tmp_path / "runs/trs_digits/version_0")
    assert {"train/sim_step", "train/smooth_step", "val/acc", "val/acc_member2", "test/acc"} <= set(scalars)
