"""Named presets: the paper's defaults, overrides and the model-dependent λ / γ."""

from __future__ import annotations

import math

import pytest

from lit_advgame.attacks import (
    DiverseInputs,
    InteractionLoss,
    Momentum,
    SkipGradient,
    TranslationInvariance,
    VarianceReduction,
    available_presets,
    build_attack,
    preset_config,
    source_family,
)

PAPER_TABLE_NAMES = ["PGD", "PGD+IR", "MI", "MI+IR", "VR", "VR+IR", "SGM", "SGM+IR", "TI", "TI+IR", "DI", "HybridIR"]


def kinds(attack):
    return {type(t) for t in attack.transforms} | {type(t) for t in attack.loss_terms}


def test_every_paper_table_name_is_a_preset():
    assert len(available_presets()) == len(PAPER_TABLE_NAMES)
    for name in PAPER_TABLE_NAMES:
        preset_config(name)  # case-insensitive
    assert preset_config("ir") == preset_config("pgd+ir")
    assert preset_config("hybrid_ir") == preset_config("HybridIR")
    assert preset_config("mi-ir") == preset_config("MI+IR")


def test_paper_defaults():
    c = preset_config("pgd")
    assert (c["norm"], c["eps"], c["step_size"], c["steps"], c["loss"]) == ("linf", 16 / 255, 2 / 255, 100, "ce")
    assert c["random_start"] is None and c["eps_scaling"] == "none"
    ir = preset_config("pgd+ir")
    assert (ir["ir_grid"], ir["ir_num_samples"], ir["ir_group_size"]) == (16, 32, 32)
    assert (ir["ir_form"], ir["ir_value"], ir["ir_scale"]) == ("coalition", "margin_fixed", "reference")
    assert ir["ir_lambda"] == "auto"
    assert preset_config("mi")["momentum"] == 1.0
    assert (preset_config("vr")["vr_copies"], preset_config("vr")["vr_sigma"]) == (20, 15 / 255)
    vr_ir = preset_config("vr+ir")
    assert (vr_ir["vr_copies"], vr_ir["steps"]) == (5, 50)
    assert preset_config("ti")["ti_kernel_size"] == 15 and preset_config("ti")["ti_nsig"] == 3.0
    assert (preset_config("di")["di_prob"], preset_config("di")["di_resize_rate"]) == (0.5, 1.1)
    l2 = preset_config("pgd", norm="l2")
    assert (l2["eps"], l2["eps_scaling"], l2["step_size"]) == (16 / 255, "sqrt_dim", 2.0)


def test_presets_build_the_right_components(skip_resnet, cnn):
    expected = {
        "pgd": set(),
        "pgd+ir": {InteractionLoss},
        "mi": {Momentum},
        "mi+ir": {Momentum, InteractionLoss},
        "vr": {VarianceReduction},
        "vr+ir": {VarianceReduction, InteractionLoss},
        "sgm": {SkipGradient},
        "sgm+ir": {SkipGradient, InteractionLoss},
        "ti": {TranslationInvariance},
        "ti+ir": {TranslationInvariance, InteractionLoss},
        "di": {DiverseInputs},
        "hybridir": {Momentum, VarianceReduction, SkipGradient, InteractionLoss},
    }
    for name, components in expected.items():
        attack = build_attack(name, skip_resnet)
        assert kinds(attack) == components, name
        assert attack.uses_random_start == (InteractionLoss not in components), name  # IR variants start at δ = 0
    hybrid = build_attack("hybridir", skip_resnet)
    assert hybrid.steps == 100 and hybrid.transforms[1].copies == 5


def test_lambda_and_gamma_depend_on_the_source_family(skip_resnet, tv_resnet, tv_densenet, cnn):
    assert source_family([skip_resnet]) == source_family([tv_resnet]) == "resnet"
    assert source_family([tv_densenet]) == "densenet"
    assert source_family([cnn]) == "other"
    assert source_family([tv_resnet, tv_densenet]) == "other"
    assert build_attack("pgd+ir", tv_resnet).loss_terms[0].lambda_ == 1.0
    assert build_attack("pgd+ir", tv_densenet).loss_terms[0].lambda_ == 2.0
    assert build_attack("pgd+ir", cnn).loss_terms[0].lambda_ == 2.0
    assert build_attack("pgd+ir", [tv_resnet, tv_densenet]).loss_terms[0].lambda_ == 2.0
    assert build_attack("sgm", tv_resnet).transforms[0].gamma == 0.2
    assert build_attack("sgm", tv_densenet).transforms[0].gamma == 0.5


@pytest.mark.parametrize(
    "name, family",
    [("resnet8", "resnet"), ("preact_resnet18", "resnet"), ("densenet_small", "densenet"), ("small_cnn", "other")],
)
def test_package_models_family_and_sgm(name, family):
    from lit_advgame.models import build_model

    model = build_model(name, num_classes=10, in_channels=1, input_size=16, mean=[0.5], std=[0.25])
    assert source_family([model]) == family
    if family == "other":
        with pytest.raises(ValueError, match="SGM needs a model with identity skip connections"):
            build_attack("sgm", model)
    else:
        attack = build_attack("sgm+ir", model, steps=1, seed=0, ir_grid=4, ir_num_samples=2, ir_group_size=2)
        assert attack.transforms[0].gamma == (0.5 if family == "densenet" else 0.2)
        assert attack.loss_terms[0].lambda_ == (2.0 if family == "densenet" else 1.0)


def test_overrides_apply(skip_resnet):
    attack = build_attack(
        "mi+ir",
        skip_resnet,
        steps=7,
        eps="8/255",
        momentum=0.5,
        ir_lambda="inf",
        ir_grid=4,
        seed=3,
        norm="l2",
        step_size=0.5,
        random_start=True,
    )
    assert attack.steps == 7 and attack.eps == pytest.approx(8 / 255) and attack.seed == 3
    # a given L2 eps is the radius as given: the √n scaling belongs to the L2 default only
    assert attack.norm.name == "l2" and attack.step_size == 0.5 and attack.eps_scaling == "none"
    assert attack.uses_random_start
    momentum = next(t for t in attack.transforms if isinstance(t, Momentum))
    term = attack.loss_terms[0]
    assert momentum.momentum == 0.5 and math.isinf(term.lambda_) and term.grid == 4
    assert term.replaces_classification_loss
    # a component is switched on by giving it a value
    assert kinds(build_attack("pgd", skip_resnet, ti_kernel_size=5)) == {TranslationInvariance}


def test_unknown_preset_and_option_errors(skip_resnet):
    with pytest.raises(ValueError, match=r"unknown attack preset 'fgsm'; choose one of: pgd, pgd\+ir"):
        build_attack("fgsm", skip_resnet)
    with pytest.raises(ValueError, match=r"unknown attack option\(s\) \['epsilon'\]"):
        build_attack("pgd", skip_resnet, epsilon=0.1)
    with pytest.raises(ValueError, match="unknown norm 'l1'"):
        build_attack("pgd", skip_resnet, norm="l1")
    with pytest.raises(ValueError, match="eps must be a number or a fraction"):
        build_attack("pgd", skip_resnet, eps="16 over 255")
    with pytest.raises(TypeError, match="preset must be a string"):
        build_attack(3, skip_resnet)
