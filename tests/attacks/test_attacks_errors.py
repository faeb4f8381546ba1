"""Bad input gets a clear error naming the argument."""

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
    build_attack,
)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(eps=-0.1), ValueError, "eps must be >= 0"),
        (dict(eps=float("nan")), ValueError, "eps must be a finite number"),
        (dict(step_size=0.0), ValueError, "step_size must be > 0"),
        (dict(steps=0), ValueError, "steps must be >= 1"),
        (dict(steps=2.5), TypeError, "steps must be an integer"),
        (dict(norm="l1"), ValueError, "unknown norm 'l1'"),
        (dict(loss="hinge"), ValueError, "unknown loss 'hinge'"),
        (dict(targeted="yes"), TypeError, "targeted must be a bool"),
        (dict(random_start="auto"), TypeError, "random_start must be a bool or None"),
        (dict(eps_scaling="sqrt_dim"), ValueError, "only applies to the l2 norm"),
        (dict(seed=1, generator=torch.Generator()), ValueError, "either seed or generator"),
        (dict(transforms=[object()]), TypeError, r"transforms\[0\] must be a Transform"),
        (dict(loss_terms=[Momentum()]), TypeError, r"loss_terms\[0\] must be a LossTerm"),
        (dict(record_format="png"), ValueError, "unknown record_format 'png'"),
    ],
)
def test_bad_attack_arguments(kwargs, error, match, cnn):
    with pytest.raises(error, match=match):
        Attack(cnn, **kwargs)


def test_bad_model():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        Attack("resnet")
    with pytest.raises(TypeError, match=r"model\[1\] must be a torch.nn.Module"):
        Attack([torch.nn.Identity(), 3])


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: VarianceReduction(copies=0), "copies \\(VR K\\) must be >= 1"),
        (lambda: VarianceReduction(sigma=-1.0), "sigma \\(VR noise std\\) must be >= 0"),
        (lambda: VarianceReduction(reduction="max"), "unknown VR reduction"),
        (lambda: DiverseInputs(prob=1.5), "prob \\(DI probability\\) must be in \\[0, 1\\]"),
        (lambda: DiverseInputs(prob=-0.1), "prob \\(DI probability\\) must be >= 0"),
        (lambda: DiverseInputs(resize_rate=0.0), "resize_rate \\(DI\\) must be > 0"),
        (lambda: TranslationInvariance(kernel_size=4), "kernel_size must be odd"),
        (lambda: TranslationInvariance(kernel_size=0), "kernel_size must be >= 1"),
        (lambda: Momentum(momentum=-1.0), "momentum \\(MI decay μ\\) must be >= 0"),
        (lambda: SkipGradient(gamma=1.5), "gamma \\(SGM decay\\) must be in \\[0, 1\\]"),
        (lambda: InteractionLoss(lambda_=-1.0), "ir_lambda \\(the IR weight λ, keyword lambda_\\) must be >= 0"),
        (
            lambda: InteractionLoss(lambda_="big"),
            "ir_lambda \\(the IR weight λ, keyword lambda_\\) must be a number >= 0 or 'inf'",
        ),
        (lambda: InteractionLoss(grid=0), "grid.* must be >= 1.*\\(IR interaction loss\\)"),
    ],
)
def test_bad_component_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_call_inputs(cnn, batch):
    x, y = batch
    attack = Attack(cnn, steps=1, seed=0)
    with pytest.raises(ValueError, match="x must lie in pixel space"):
        attack(x * 2, y)
    with pytest.raises(ValueError, match="x must lie in pixel space"):
        attack(x - 0.5, y)
    with pytest.raises(ValueError, match="x must have shape \\(B, C, H, W\\)"):
        attack(x[0], y)
    with pytest.raises(ValueError, match="x contains NaN"):
        attack(torch.full_like(x, float("nan")), y)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        attack(x.numpy(), y)
    with pytest.raises(ValueError, match="y must be a 1-D tensor of 4 class indices"):
        attack(x, y[:3])
    with pytest.raises(TypeError, match="y must hold integer class indices"):
        attack(x, y.float())
    with pytest.raises(ValueError, match="y must be in \\[0, 4\\]"):
        attack(x, y + 10)
    with pytest.raises(ValueError, match="needs target labels"):
        Attack(cnn, targeted=True)(x, y)
    with pytest.raises(ValueError, match="target labels were given to an untargeted attack"):
        attack(x, y, y)
    with pytest.raises(ValueError, match="target must be in \\[0, 4\\]"):
        Attack(cnn, targeted=True, steps=1)(x, y, y + 5)
    with pytest.raises(ValueError, match="empty batch"):
        attack(x[:0], y[:0])


def test_grid_larger_than_image(cnn, batch):
    x, y = batch
    with pytest.raises(ValueError, match=r"grid \(IR\) = 16 is larger than the image \(12×12 pixels\)"):
        build_attack("pgd+ir", cnn, steps=1)(x, y)


def test_sgm_without_skip_connections(cnn):
    with pytest.raises(ValueError, match="SGM needs a model with identity skip connections"):
        build_attack("sgm", cnn)
    with pytest.raises(ValueError, match="SGM needs a model with identity skip connections"):
        build_attack("hybridir", cnn)
