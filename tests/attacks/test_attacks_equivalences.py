"""Each transform/term at its neutral setting equals the base attack bit for bit, under the same seed."""

from __future__ import annotations

import pytest
import torch

from lit_advgame.attacks import (
    Attack,
    DiverseInputs,
    InteractionLoss,
    Momentum,
    SkipGradient,
    TranslationInvariance,
    VarianceReduction,
)

NORMS = {"linf": dict(norm="linf", eps=16 / 255, step_size=3 / 255), "l2": dict(norm="l2", eps=1.0, step_size=0.3)}


def run(model, x, y, norm, steps=4, **kwargs):
    return Attack(model, steps=steps, seed=11, **NORMS[norm], **kwargs)(x, y)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_momentum_zero_equals_base(norm, cnn, batch):
    x, y = batch
    assert torch.equal(run(cnn, x, y, norm, transforms=[Momentum(0.0)]), run(cnn, x, y, norm))
    assert not torch.equal(run(cnn, x, y, norm, transforms=[Momentum(1.0)]), run(cnn, x, y, norm))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_variance_reduction_sigma_zero_equals_base(norm, cnn, batch):
    x, y = batch
    base = run(cnn, x, y, norm)
    assert torch.equal(run(cnn, x, y, norm, transforms=[VarianceReduction(copies=1, sigma=0.0)]), base)
    # K identical copies: the summed gradient is K·g (same sign; same L2 direction up to rounding)
    many = run(cnn, x, y, norm, transforms=[VarianceReduction(copies=3, sigma=0.0)])
    if norm == "linf":
        assert torch.equal(many, base)
    else:
        torch.testing.assert_close(many, base, atol=1e-5, rtol=0)
    assert not torch.equal(run(cnn, x, y, norm, transforms=[VarianceReduction(copies=3, sigma=0.1)]), base)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("model_name", ["skip_resnet", "tv_resnet", "tv_densenet"])
def test_skip_gradient_gamma_one_equals_base(norm, model_name, request, batch):
    model = request.getfixturevalue(model_name)
    x, y = batch
    base = run(model, x, y, norm)
    assert torch.equal(run(model, x, y, norm, transforms=[SkipGradient(1.0)]), base)
    assert not torch.equal(run(model, x, y, norm, transforms=[SkipGradient(0.1)]), base)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_interaction_lambda_zero_equals_base(norm, cnn, batch):
    x, y = batch
    term = InteractionLoss(lambda_=0.0, grid=4, num_samples=4, group_size=4)
    base = run(cnn, x, y, norm)  # random start (auto): IR with λ = 0 also starts at random (official code)
    assert torch.equal(run(cnn, x, y, norm, loss_terms=[term]), base)
    term = InteractionLoss(lambda_=1.0, grid=4, num_samples=4, group_size=4)
    assert not torch.equal(run(cnn, x, y, norm, loss_terms=[term], random_start=True), base)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_diverse_inputs_p_zero_and_translation_size_one_equal_base(norm, cnn, batch):
    x, y = batch
    base = run(cnn, x, y, norm)
    assert torch.equal(run(cnn, x, y, norm, transforms=[DiverseInputs(prob=0.0)]), base)
    assert torch.equal(run(cnn, x, y, norm, transforms=[TranslationInvariance(kernel_size=1)]), base)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_all_neutral_transforms_together_equal_base(norm, skip_resnet, batch):
    x, y = batch
    neutral = [
        SkipGradient(1.0),
        VarianceReduction(1, 0.0),
        DiverseInputs(0.0),
        TranslationInvariance(1),
        Momentum(0.0),
    ]
    term = InteractionLoss(lambda_=0.0, grid=3, num_samples=2, group_size=3)
    hybrid = run(skip_resnet, x, y, norm, transforms=neutral, loss_terms=[term])
    assert torch.equal(hybrid, run(skip_resnet, x, y, norm))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_batched_attack_equals_per_image_attack(norm, skip_resnet, batch):
    x, y = batch
    kwargs = dict(random_start=False, transforms=[Momentum(0.9), TranslationInvariance(3), SkipGradient(0.5)])
    batched = run(skip_resnet, x, y, norm, **kwargs)
    singles = torch.cat([run(skip_resnet, x[i : i + 1], y[i : i + 1], norm, **kwargs) for i in range(len(x))])
    torch.testing.assert_close(batched, singles, atol=1e-6, rtol=0)


def test_same_seed_same_output_and_seeds_differ(skip_resnet, batch):
    x, y = batch
    transforms = lambda: [VarianceReduction(3, 0.05), DiverseInputs(0.5)]  # noqa: E731
    a = Attack(skip_resnet, steps=3, seed=5, transforms=transforms())
    assert torch.equal(a(x, y), a(x, y))  # a seed makes every call reproducible
    assert torch.equal(a(x, y), Attack(skip_resnet, steps=3, seed=5, transforms=transforms())(x, y))
    assert not torch.equal(a(x, y), Attack(skip_resnet, steps=3, seed=6, transforms=transforms())(x, y))


def test_generator_gives_reproducible_but_fresh_streams(cnn, batch):
    x, y = batch
    a = Attack(cnn, steps=2, generator=torch.Generator().manual_seed(3))
    b = Attack(cnn, steps=2, generator=torch.Generator().manual_seed(3))
    first_a, first_b = a(x, y), b(x, y)
    assert torch.equal(first_a, first_b)
    assert not torch.equal(a(x, y), first_a)  # the next call draws a new base seed
