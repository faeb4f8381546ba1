"""Norm steps and projections (IR paper, Appendix C, Eqs. 9–10)."""

from __future__ import annotations

import math

import pytest
import torch

from lit_advgame.attacks.norms import L2Norm, LinfNorm, build_norm, clip_to_box, l2_norms


def _x(shape=(5, 3, 6, 6), seed=0):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def test_linf_step_is_sign_step_and_projection_clamps():
    norm = LinfNorm()
    delta = torch.zeros(2, 1, 2, 2)
    grad = torch.tensor([[[[0.3, -2.0], [0.0, 1e-9]]], [[[-1.0, 1.0], [5.0, -5.0]]]])
    stepped = norm.step(delta, grad, 0.1)
    assert torch.equal(stepped, 0.1 * grad.sign())
    x = torch.full_like(delta, 0.5)
    projected = norm.project(torch.tensor([0.7, -0.2, 0.05, -0.05]).view(1, 1, 2, 2).repeat(2, 1, 1, 1), x, 0.1)
    assert torch.allclose(projected[0].flatten(), torch.tensor([0.1, -0.1, 0.05, -0.05]))


def test_linf_projection_respects_box_and_ball():
    x = _x()
    delta = 0.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    out = LinfNorm().project(delta, x, 8 / 255)
    assert out.abs().max() <= 8 / 255 + 1e-7
    assert (x + out).min() >= 0 and (x + out).max() <= 1


def test_l2_projection_rescales_per_sample_exactly_like_eq_10():
    x = torch.full((3, 1, 4, 4), 0.5)
    delta = torch.zeros(3, 1, 4, 4)
    delta[0, 0, 0, 0] = 0.3  # inside the ball: unchanged
    delta[1, 0, :2, :2] = 0.4  # norm 0.8 > eps: rescaled
    # sample 2: all zero: stays zero, no NaN
    out = L2Norm().project(delta, x, 0.5)
    assert torch.equal(out[0], delta[0])
    assert torch.allclose(out[1], delta[1] * 0.5 / 0.8)
    assert torch.equal(out[2], torch.zeros_like(out[2]))
    assert not torch.isnan(out).any()


def test_l2_step_with_zero_gradient_and_zero_delta_has_no_nan():
    norm = L2Norm()
    x = _x()
    delta = torch.zeros_like(x)
    grad = torch.zeros_like(x)
    grad[0, 0, 0, 0] = 3.0  # one sample with a gradient
    stepped = norm.step(delta, grad, 2.0)
    assert not torch.isnan(stepped).any()
    assert torch.allclose(l2_norms(stepped), torch.tensor([2.0, 0, 0, 0, 0]))
    out = norm.project(stepped, x, 1.0)
    assert not torch.isnan(out).any()
    assert (l2_norms(out) <= 1.0 + 1e-6).all()


@pytest.mark.parametrize("init", ["image", "ball"])
def test_l2_random_init_inside_ball_and_box(init):
    x = _x()
    eps = 0.8
    delta = L2Norm(init).random_init(x, eps, torch.Generator().manual_seed(7))
    assert (l2_norms(delta) <= eps * (1 + 1e-6)).all()
    assert (x + delta).min() >= 0 and (x + delta).max() <= 1
    assert (l2_norms(delta) > 0).all()


def test_linf_random_init_is_uniform_in_box():
    x = torch.full((4, 3, 16, 16), 0.5)
    delta = LinfNorm().random_init(x, 0.1, torch.Generator().manual_seed(0))
    assert delta.abs().max() <= 0.1
    assert abs(delta.mean().item()) < 0.005
    assert math.isclose(delta.var().item(), 0.1**2 / 3, rel_tol=0.1)


def test_clip_to_box_and_build_norm():
    x = torch.tensor([0.0, 0.5, 1.0]).view(1, 1, 1, 3)
    assert torch.equal(
        clip_to_box(torch.tensor([-0.1, 0.7, 0.2]).view(1, 1, 1, 3), x).flatten(), torch.tensor([0.0, 0.5, 0.0])
    )
    assert isinstance(build_norm("Linf"), LinfNorm) and isinstance(build_norm("inf"), LinfNorm)
    assert isinstance(build_norm("l2", init="ball"), L2Norm)
    with pytest.raises(ValueError, match="unknown norm 'l1'"):
        build_norm("l1")
    with pytest.raises(ValueError, match="unknown L2 random init"):
        L2Norm("sphere")
