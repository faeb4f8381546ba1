"""Every preset, in both norms, keeps ‖δ‖ ≤ ε and x + δ in [0, 1]."""

from __future__ import annotations

import math

import pytest
import torch

from lit_advgame.attacks import attack_from_config, available_presets, preset_config
from lit_advgame.attacks.norms import l2_norms


def small_config(preset: str, **overrides):
    """The preset, shrunk to a few cheap steps without switching on any component it lacks."""
    config = preset_config(preset, steps=3, seed=0, **overrides)
    if config["ir_lambda"] is not None:
        config.update(ir_grid=4, ir_num_samples=4, ir_group_size=4)
    if config["vr_copies"] is not None:
        config["vr_copies"] = 3
    if config["ti_kernel_size"] is not None:
        config["ti_kernel_size"] = 5
    return config


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("preset", available_presets())
def test_preset_respects_norm_ball_and_image_box(preset, norm, skip_resnet, batch):
    x, y = batch
    overrides = {"step_size": 8 / 255} if norm == "linf" else {}  # reach the boundary within 3 steps
    config = small_config(preset, norm=norm, **overrides)
    attack = attack_from_config(config, skip_resnet)
    x_adv = attack(x, y)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert torch.isfinite(x_adv).all()
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    delta = x_adv - x
    if norm == "linf":
        eps = 16 / 255
        assert delta.abs().max() <= eps + 1e-6
        assert delta.abs().max() >= eps - 1e-6  # the constraint is active, so the test is not vacuous
    else:
        eps = 16 / 255 * math.sqrt(x[0].numel())
        assert attack.effective_eps(x) == pytest.approx(eps)
        assert (l2_norms(delta) <= eps * (1 + 1e-5)).all()
        assert l2_norms(delta).max() >= 0.5 * eps


def test_l2_bound_with_tiny_eps_and_zero_eps(cnn, batch):
    from lit_advgame.attacks import Attack

    x, y = batch
    for eps in (0.0, 1e-3):
        attack = Attack(cnn, norm="l2", eps=eps, step_size=0.5, steps=3, seed=0)
        x_adv = attack(x, y)
        assert not torch.isnan(x_adv).any()
        assert (l2_norms(x_adv - x) <= eps * (1 + 1e-5) + 1e-7).all()
    assert torch.equal(Attack(cnn, eps=0.0, steps=2, seed=0)(x, y), x)
