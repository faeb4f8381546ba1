"""One perturbation-interaction specification and one naming scheme for attack options (issue 9)."""

from __future__ import annotations

import dataclasses
import importlib
import sys

import pytest
import torch

from lit_advgame.attacks import DEFAULTS, InteractionLoss, Momentum, build_attack, preset_config
from lit_advgame.interactions import perturbation_interaction, perturbation_interaction_estimate
from lit_advgame.interactions.perturbation_spec import FIELDS, PerturbationInteraction


def test_one_specification_with_one_set_of_defaults():
    paper = PerturbationInteraction()
    assert (paper.grid, paper.form, paper.num_samples, paper.value, paper.scale) == (
        16,
        "single",
        64,
        "margin_max",
        "paper",
    )
    code = PerturbationInteraction.ir_code()
    assert (code.grid, code.form, code.num_samples, code.group_size, code.value, code.scale) == (
        16,
        "coalition",
        32,
        32,
        "margin_fixed",
        "reference",
    )
    # the presets' ir_* keys are the specification's fields with the official code's values
    assert {key: DEFAULTS[f"ir_{key}"] for key in FIELDS} == dataclasses.asdict(code)
    assert InteractionLoss().spec == code
    # the engine's keyword defaults are the official code's setting too
    assert PerturbationInteraction.of({"grid": [4, 8]}).grid == (4, 8)
    assert PerturbationInteraction.of({"grid": [4, 4]}).grid == 4
    assert PerturbationInteraction(grid=16).fit_grid(12, 12).grid == 12
    assert PerturbationInteraction(grid=(16, 4)).fit_grid(12, 12).grid == (12, 4)


@pytest.mark.parametrize(
    ("fields", "error", "match"),
    [
        ({"form": "pairs"}, ValueError, "unknown form 'pairs'"),
        ({"scale": "other"}, ValueError, "unknown scale"),
        ({"value": "target_minus_true"}, ValueError, "unknown value"),
        ({"num_samples": 0}, ValueError, "num_samples must be >= 1"),
        ({"group_size": 0}, ValueError, "group_size must be >= 1"),
        ({"grid": 1}, ValueError, "at least 2 cells"),
        ({"grid": "8"}, TypeError, "grid"),
    ],
)
def test_bad_fields_are_errors_naming_the_field(fields, error, match):
    with pytest.raises(error, match=match):
        PerturbationInteraction(**fields)
    with pytest.raises(ValueError, match="unknown interaction option"):
        PerturbationInteraction.of({"samples": 3})


def test_the_specification_computes_what_the_engine_computes():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4))
    x = torch.rand(3, 1, 8, 8)
    delta = (torch.rand_like(x) - 0.5) * 0.1
    x = x.clamp(0.1, 0.9)
    y = torch.tensor([0, 1, 2])
    for spec in (PerturbationInteraction(grid=4), PerturbationInteraction.ir_code(grid=4, num_samples=5, group_size=3)):
        kwargs = dataclasses.asdict(spec)
        got = spec.interaction(model, x, delta, y, generator=torch.Generator().manual_seed(1))
        want = perturbation_interaction(model, x, delta, y, generator=torch.Generator().manual_seed(1), **kwargs)
        assert torch.equal(got, want)
        est = spec.estimate(model, x, delta, y, generator=torch.Generator().manual_seed(1))
        ref = perturbation_interaction_estimate(
            model, x, delta, y, generator=torch.Generator().manual_seed(1), **kwargs
        )
        assert torch.equal(est.per_image, ref.per_image) and est.form == spec.form


def test_interaction_loss_takes_the_specification_or_its_fields():
    spec = PerturbationInteraction.ir_code(grid=4, num_samples=3)
    assert InteractionLoss(2.0, spec).spec == spec
    assert InteractionLoss(2.0, {"grid": 4, "num_samples": 3}).spec == spec
    assert InteractionLoss(2.0, grid=4, num_samples=3).spec == spec
    term = InteractionLoss(2.0, grid=4, num_samples=3)
    assert (term.lambda_, term.grid, term.num_samples, term.form) == (2.0, 4, 3, "coalition")
    with pytest.raises(ValueError, match="unknown interaction option.*samples"):
        InteractionLoss(1.0, samples=3)


def test_deprecated_attack_option_names_still_work_with_a_warning():
    with pytest.warns(DeprecationWarning, match="'ir_samples' is deprecated; use 'ir_num_samples'"):
        assert preset_config("pgd+ir", ir_samples=4)["ir_num_samples"] == 4
    with pytest.raises(ValueError, match="not both"), pytest.warns(DeprecationWarning):
        preset_config("pgd+ir", ir_samples=4, ir_num_samples=5)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4))
    with pytest.warns(DeprecationWarning, match="ir_samples"):
        assert build_attack("pgd+ir", model, ir_grid=4, ir_samples=3).loss_terms[0].num_samples == 3
    with pytest.warns(DeprecationWarning, match="use lambda_"):
        term = InteractionLoss(lam=0.5)
    assert term.lambda_ == 0.5
    with pytest.warns(DeprecationWarning, match="use lambda_"):
        assert term.lam == 0.5
    with pytest.warns(DeprecationWarning, match="use momentum"):
        mi = Momentum(mu=0.25)
    assert mi.momentum == 0.25
    with pytest.warns(DeprecationWarning, match="use momentum"):
        assert mi.mu == 0.25


def test_strength_attack_lives_in_attacks_and_the_old_path_warns():
    from lit_advgame.attacks import StrengthControlledAttack
    from lit_advgame.attacks.strength import StrengthControlledAttack as direct

    assert StrengthControlledAttack is direct
    sys.modules.pop("lit_advgame.callbacks.strength_attack", None)
    with pytest.warns(DeprecationWarning, match="lit_advgame.attacks"):
        old = importlib.import_module("lit_advgame.callbacks.strength_attack")
    assert old.StrengthControlledAttack is direct
    import lit_advgame.callbacks as callbacks

    with pytest.warns(DeprecationWarning, match="lit_advgame.attacks"):
        assert callbacks.StrengthControlledAttack is direct
