"""The IR term (interaction loss, IR paper Eq. 5) inside the attack."""

from __future__ import annotations

import math

import pytest
import torch

import lit_advgame.interactions as interactions
from lit_advgame.attacks import Attack, InteractionLoss, Momentum, build_attack


@pytest.fixture
def spy(engine, monkeypatch):
    """Wrap the active engine and record each call's arguments and result."""
    calls = []

    def wrapped(model, x, delta, y, **kwargs):
        out = engine(model, x, delta, y, **kwargs)
        calls.append(dict(x=x, delta=delta.detach().clone(), y=y.clone(), kwargs=kwargs, out=out.detach().clone()))
        return out

    monkeypatch.setattr(interactions, "perturbation_interaction", wrapped, raising=False)
    return calls


def term(lam=1.0, **kwargs):
    return InteractionLoss(
        lambda_=lam,
        grid=kwargs.pop("grid", 4),
        num_samples=kwargs.pop("num_samples", 4),
        group_size=kwargs.pop("group_size", 3),
        **kwargs,
    )


def test_engine_gets_the_agreed_arguments(cnn, batch, spy):
    x, y = batch
    attack = Attack(cnn, steps=3, seed=0, loss_terms=[term(2.0, value="margin_max", form="single", batch_size=7)])
    result = attack.run(x, y)
    assert len(spy) == 3
    kwargs = spy[0]["kwargs"]
    assert kwargs["grid"] == 4 and kwargs["num_samples"] == 4 and kwargs["group_size"] == 3
    assert kwargs["form"] == "single" and kwargs["value"] == "margin_max" and kwargs["scale"] == "reference"
    assert kwargs["batch_size"] == 7 and isinstance(kwargs["generator"], torch.Generator)
    assert torch.equal(spy[0]["delta"], torch.zeros_like(x))  # IR starts from δ = 0 (official code)
    assert torch.equal(spy[0]["y"], y)
    for step, call in enumerate(spy):  # the logged interaction is the engine's value; objective = ℓ − λ·I
        assert torch.equal(result.losses["interaction"][step], call["out"])
    torch.testing.assert_close(
        result.losses["objective"], result.losses["classification"] - 2.0 * result.losses["interaction"]
    )


def test_lambda_infinity_optimises_the_interaction_only(cnn, batch, spy):
    x, y = batch
    result = Attack(cnn, steps=3, seed=0, random_start=True, loss_terms=[term("inf")]).run(x, y)
    assert "classification" not in result.losses
    assert torch.equal(result.losses["objective"], -result.losses["interaction"])
    assert math.isinf(InteractionLoss("Infinity").lambda_)


def test_targeted_ir_measures_interaction_for_the_true_label(cnn, batch, spy):
    x, y = batch
    target = (y + 1) % 5
    Attack(cnn, steps=2, seed=0, targeted=True, loss_terms=[term(1.0)])(x, y, target)
    assert len(spy) == 2  # one measurement per step
    assert all(torch.equal(call["y"], y) and not torch.equal(call["y"], target) for call in spy)


def test_ir_changes_the_attack_and_reproduces(cnn, batch, engine):
    x, y = batch
    pgd = Attack(cnn, steps=4, seed=0, random_start=False)(x, y)
    ir = Attack(cnn, steps=4, seed=0, loss_terms=[term(5.0)])
    out = ir(x, y)
    assert not torch.equal(out, pgd)
    assert torch.equal(out, ir(x, y))  # the IR sampling stream comes from the seed
    assert (out - x).abs().max() <= 16 / 255 + 1e-6


def test_ir_term_sampling_does_not_depend_on_other_transforms(cnn, batch, spy):
    """The IR term has its own random stream: adding MI (no randomness) leaves its samples unchanged."""
    x, y = batch
    Attack(cnn, steps=1, seed=4, loss_terms=[term(1.0)]).run(x, y)
    Attack(cnn, steps=1, seed=4, loss_terms=[term(1.0)], transforms=[Momentum(1.0)]).run(x, y)
    assert torch.equal(spy[0]["out"], spy[1]["out"])


def test_ir_lowers_the_interaction_on_a_trained_model(digits_model, engine):
    """PGD+IR perturbations carry less interaction than PGD's, measured with fresh samples (IR paper Sec. 5)."""
    model, x, y = digits_model
    x, y = x[:24], y[:24]
    common = dict(eps=0.1, step_size=0.01, steps=20, seed=0, random_start=False)
    pgd = Attack(model, **common)(x, y)
    ir = Attack(model, loss_terms=[term(2.0, num_samples=8, group_size=4)], **common)(x, y)

    def measured(x_adv):
        delta = (x_adv - x).detach()
        return engine(
            model, x, delta, y, grid=4, num_samples=256, group_size=4, generator=torch.Generator().manual_seed(1)
        ).detach()

    with torch.enable_grad():
        i_pgd, i_ir = measured(pgd), measured(ir)
    assert i_ir.mean() < i_pgd.mean()


def test_ir_presets_run_end_to_end(skip_resnet, batch, engine):
    x, y = batch
    for name in ("pgd+ir", "vr+ir", "hybridir"):
        attack = build_attack(
            name,
            skip_resnet,
            steps=2,
            seed=0,
            ir_grid=4,
            ir_num_samples=2,
            ir_group_size=2,
            **({"vr_copies": 2} if name != "pgd+ir" else {}),
        )
        result = attack.run(x, y, record_iterates=True)
        assert torch.equal(result.iterates[0], torch.zeros_like(x))
        assert result.losses["interaction"].shape == (2, len(x))
