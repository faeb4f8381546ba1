"""No silent inputs (issue 8): radius units, the L2 radius as given, ignored options, dtypes, non-modules."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from lit_advgame.attacks import Attack, attack_from_config, build_attack, preset_config
from tests.attacks.tiny_models import SIZE

N = 3 * SIZE * SIZE  # values per image of the test batch: the L2 diameter of the pixel cube is √N


# ---------------------------------------------------------------- units of ε and α
@pytest.mark.parametrize("kwargs, name", [(dict(eps=16), "eps"), (dict(step_size=2), "step_size")])
def test_linf_radius_above_one_is_an_error_naming_the_value_and_the_fraction(cnn, kwargs, name):
    with pytest.raises(ValueError, match=rf"{name} = \d+ \(linf\) is larger than 1.*'16/255'.*unit='1/255'"):
        Attack(cnn, **kwargs)
    with pytest.raises(ValueError, match=rf"{name} = \d+ \(linf\) is larger than 1"):
        build_attack("pgd", cnn, **kwargs)


def test_explicit_units_are_accepted(cnn, batch):
    x, y = batch
    levels = Attack(cnn, eps=16, step_size=2, unit="1/255", steps=2, seed=0)
    fraction = Attack(cnn, eps="16/255", step_size="2/255", steps=2, seed=0)
    assert (levels.eps, levels.step_size) == (fraction.eps, fraction.step_size) == (16 / 255, 2 / 255)
    assert torch.equal(levels(x, y), fraction(x, y))
    assert build_attack("pgd", cnn, eps=16, step_size=2, unit="1/255").eps == pytest.approx(16 / 255)
    with pytest.raises(ValueError, match=r"eps = 300 × 1/255 = 1.17647 \(linf\) is larger than 1"):
        Attack(cnn, eps=300, unit="1/255")
    with pytest.raises(ValueError, match="unknown unit '255'"):
        Attack(cnn, unit="255")


def test_l2_radius_is_bounded_by_the_diameter_of_the_pixel_cube(cnn, batch):
    x, y = batch
    diameter = math.sqrt(N)
    x_adv = Attack(cnn, norm="l2", eps=0.9 * diameter, step_size=1.0, steps=1, seed=0)(x, y)  # > 1 is fine in L2
    assert ((x_adv - x).flatten(1).norm(dim=1) <= 0.9 * diameter + 1e-4).all()
    with pytest.raises(ValueError, match=rf"eps = 25.0 \(l2\) is larger than √n = {diameter:.6g}.*n = {N}.*'16/255'"):
        Attack(cnn, norm="l2", eps=25.0, steps=1, seed=0)(x, y)
    with pytest.raises(ValueError, match=r"step_size = 30.0 \(l2\) is larger than √n"):
        Attack(cnn, norm="l2", step_size=30.0, steps=1, seed=0)(x, y)
    # ε·√n with eps_scaling="sqrt_dim" exceeds √n iff ε > 1: caught when the attack is built
    with pytest.raises(ValueError, match=r"eps = 16 \(l2\) is larger than 1: it is multiplied by √n"):
        Attack(cnn, norm="l2", eps=16, eps_scaling="sqrt_dim")


# ---------------------------------------------------------------- the L2 radius as given
def test_a_given_l2_eps_is_used_as_given(cnn, batch, caplog):
    x, y = batch
    attack = build_attack("pgd", cnn, norm="l2", eps=2.0, step_size=0.75, steps=3, seed=0)
    assert attack.effective_eps(x) == 2.0 and attack.resolved_eps == 2.0 and attack.resolved_step_size == 0.75
    x_adv = attack(x, y)
    assert ((x_adv - x).flatten(1).norm(dim=1) <= 2.0 + 1e-5).all()
    # the √n scaling is the paper's L2 *default*: 16/255·√n
    default = build_attack("pgd", cnn, norm="l2", steps=1, seed=0)
    assert default.eps_scaling == "sqrt_dim" and default.resolved_eps is None  # unknown until n is known
    default(x, y)
    assert default.resolved_eps == pytest.approx(16 / 255 * math.sqrt(N))
    # an explicit eps_scaling is honoured
    scaled = build_attack("pgd", cnn, norm="l2", eps="8/255", eps_scaling="sqrt_dim", steps=1)
    assert scaled.effective_eps(x) == pytest.approx(8 / 255 * math.sqrt(N))
    # the resolved radius is logged once per distinct configuration
    with caplog.at_level(logging.INFO):
        build_attack("pgd", cnn, norm="l2", eps=1.25, step_size=0.5, steps=4)
        build_attack("pgd", cnn, norm="l2", eps=1.25, step_size=0.5, steps=4)
    lines = [r.getMessage() for r in caplog.records if "ε = 1.25," in r.getMessage()]
    assert lines == ["attack: l2 ε = 1.25, step α = 0.5, 4 steps (pixel units, images in [0, 1])"]


# ---------------------------------------------------------------- options a preset ignores
@pytest.mark.parametrize(
    "preset, options, match",
    [
        ("pgd", dict(ir_grid=8), r"\['ir_grid'\] have no effect in attack 'pgd' \(ir_grid: IR is off \(ir_lambda"),
        ("mi", dict(ir_num_samples=4, ir_lambda=None), r"\['ir_num_samples'\] have no effect in attack 'mi'"),
        ("mi", dict(vr_sigma=0.1), r"\['vr_sigma'\] .* VR is off \(vr_copies"),
        ("pgd", dict(di_mode="nearest"), r"\['di_mode'\] .* DI is off \(di_prob"),
        ("pgd", dict(ti_nsig=2.0), r"\['ti_nsig'\] .* TI is off \(ti_kernel_size"),
        ("pgd", dict(l2_init="ball"), r"\['l2_init'\] .* the norm is linf"),
    ],
)
def test_options_the_preset_ignores_are_errors(cnn, preset, options, match):
    with pytest.raises(ValueError, match=match + r".*Options this attack uses: norm, eps"):
        build_attack(preset, cnn, **options)


def test_options_of_active_components_are_accepted_and_flat_configs_are_checked_too(cnn):
    assert build_attack("pgd+ir", cnn, ir_grid=4).loss_terms[0].grid == 4
    assert build_attack("pgd", cnn, ir_lambda=1.0, ir_grid=4).loss_terms[0].grid == 4  # switched on
    assert build_attack("pgd", cnn, norm="l2", l2_init="ball").norm.init == "ball"
    assert build_attack("pgd", cnn, ir_lambda=None).loss_terms == []
    with pytest.raises(ValueError, match=r"\['ir_grid'\] have no effect in attack 'configuration'"):
        attack_from_config({**preset_config("pgd"), "ir_grid": 8}, cnn)


# ---------------------------------------------------------------- dtypes, models, batches
def test_float64_images_are_cast_to_the_model_dtype(cnn, batch):
    x, y = batch
    attack = Attack(cnn, steps=2, seed=0)
    x_adv = attack(x.double(), y)
    assert x_adv.dtype == torch.float32
    assert torch.equal(x_adv, attack(x, y))


def test_a_plain_function_is_not_a_model(cnn):
    with pytest.raises(TypeError, match=r"model must be a torch.nn.Module .*got function \(a plain function"):
        Attack(lambda v: cnn(v))
    with pytest.raises(TypeError, match=r"model must be a torch.nn.Module .*got function"):
        build_attack("pgd", lambda v: cnn(v))
    with pytest.raises(TypeError, match=r"model\[1\] must be a torch.nn.Module .*got function"):
        Attack([cnn, lambda v: cnn(v)])


def test_an_empty_batch_is_an_error(cnn, batch):
    x, y = batch
    with pytest.raises(ValueError, match=r"x must contain at least one image; got an empty batch \(B = 0"):
        Attack(cnn, steps=1)(x[:0], y[:0])
