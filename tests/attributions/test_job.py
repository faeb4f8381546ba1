"""The attribution job (issue 11): per-image records equal the functional API on each image alone and do not depend on
the batch, the settings are checked before any work, and the writer's tables and figures."""

from __future__ import annotations

import pytest
import torch

from lit_advgame.analysis import image_seed
from lit_advgame.attacks import Attack
from lit_advgame.attributions import (
    AttributionAnalysis,
    AttributionWriter,
    ComponentAnalysisSettings,
    ComponentSettings,
    CostGame,
    RegionalSettings,
    StratifiedRegionalShapley,
    TaylorRewardApproximator,
    attribution_iou,
    component_effects,
    extract_components,
    foreground_mask_from_image,
    foreground_share,
    regional_magnitudes,
    superpixel_game,
)
from lit_advgame.attributions.cost import L2CostAttack, LinfCostAttack
from lit_advgame.attributions.results import aggregate, summary_table
from lit_advgame.attributions.writer import image_figures, summary_scalars
from lit_advgame.data import DigitsDataModule
from tests.conftest import REPO_ROOT

STANDARD = REPO_ROOT / "checkpoints" / "digits_small_cnn.pt"
ROBUST = REPO_ROOT / "checkpoints" / "digits_small_cnn_at.pt"
needs_checkpoints = pytest.mark.skipif(
    not (STANDARD.is_file() and ROBUST.is_file()), reason="checkpoints/ not built (scripts/make_checkpoints.sh)"
)
MODELS = [{"path": str(STANDARD), "name": "standard"}, {"path": str(ROBUST), "name": "adversarial"}]
#: tiny budgets: L = 2 (4 regions in a 2-px border), 4 subsets per size; few attack steps (on digits 0-3 the
#: border-only attacks succeed for digit 0 only, so both the analysed and the border-failed paths run)
REGIONAL = {
    "norms": ["l2", "linf"],
    "num_regions": 2,
    "beta": 1 / 3,
    "estimator": "stratified",
    "estimator_options": {"samples_per_size": 4, "chain_sizes": 3},
    "l2": {"box": "clip", "steps": 30, "binary_search_steps": 3, "lr": 0.1},
    "linf": {"search": "bisection", "step_size": 1 / 32, "steps": 20},
}
#: 2x2-pixel players (8x8), 2x2 patches, components up to 16 players, K = 2 sub-players, a 10-step attack
COMPONENTS = {
    "attack": {"norm": "l2", "eps": 2.0, "steps": 10, "step_size": 0.3},
    "superpixel": 2,
    "extraction": {"q": 4, "patch_grid": 2, "max_size": 16, "estimator": {"num_subplayers": 2}},
}

pytestmark = pytest.mark.usefixtures("one_thread")  # one intra-op thread (tests/conftest.py)


def digits(count: int, first: int = 0) -> tuple[torch.Tensor, torch.Tensor, DigitsDataModule]:
    data = DigitsDataModule()
    test = data.dataset("test")
    x = torch.stack([test[i][0] for i in range(first, first + count)])
    y = torch.tensor([int(test[i][1]) for i in range(first, first + count)])
    return x, y, data


def make_job(data: DigitsDataModule, models=MODELS, **kwargs) -> AttributionAnalysis:
    data_args = {"num_classes": 10, "input_shape": (1, 16, 16), "mean": data.mean, "std": data.std}
    return AttributionAnalysis(models, seed=3, **data_args, **kwargs)


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, equal_nan=True, msg=key)  # bit for bit


# ----------------------------------------------------------------------------- per-image numbers
@needs_checkpoints
def test_regional_records_are_the_functional_estimates_of_each_image_alone():
    x, y, data = digits(2)
    job = make_job(data, models=MODELS[:1], regional=REGIONAL)
    records = job.analyze_batch(x, y, [0, 1])
    assert records["regional_l2_importance"].shape == (2, 1, 4) and records["x_adv"].shape == (2, 1, 1, 16, 16)
    assert torch.equal(records["target"], (y + 1) % 10)
    analysed = records["regional_analyzed"][:, 0]
    assert analysed.tolist() == [True, False]  # a border-only attack fails on digit 1
    assert not records["regional_l2_border_ok"][1:, 0].all() or not records["regional_linf_border_ok"][1:, 0].all()
    assert (
        records["regional_l2_importance"][1:].isnan().all() and records["regional_iou_attributions"][1:].isnan().all()
    )
    model, settings = job.models[0], RegionalSettings(**REGIONAL)
    maps, deltas = {}, {}
    for norm, attack in (("l2", L2CostAttack(**REGIONAL["l2"])), ("linf", LinfCostAttack(**REGIONAL["linf"]))):
        game = CostGame(model, x[:1], records["target"][:1], attack, num_regions=2, beta=1 / 3)
        game.cost_of(False)  # the job attacks the border alone first (rows batched differently round differently)
        alone = StratifiedRegionalShapley(4, 3, random_state=image_seed(3, "regional", 0)).approximate(game)
        assert torch.equal(records[f"regional_{norm}_importance"][0, 0], alone.importance.flatten())
        stderr = records[f"regional_{norm}_importance_stderr"][0, 0]
        torch.testing.assert_close(stderr, alone.per_image_stderr[0], rtol=0, atol=0, equal_nan=True)
        assert records[f"regional_{norm}_cost_empty"][0, 0] == alone.cost_empty[0]
        assert records[f"regional_{norm}_num_attacks"][0, 0] == game.num_attacks + 1  # + the unrestricted attack
        full = torch.ones(1, 1, 16, 16, dtype=torch.bool)
        deltas[norm] = attack(model, x[:1], records["target"][:1], full, return_perturbation=True).perturbation[:, 0]
        maps[norm] = (alone.importance, regional_magnitudes(deltas[norm], settings.grid(16, 16)))
        assert torch.equal(records[f"regional_{norm}_magnitude"][0, 0], maps[norm][1].flatten())
        assert (
            -records[f"regional_{norm}_efficiency_residual"][0, 0] < 1e-9 + records[f"regional_{norm}_cost_full"][0, 0]
        )
    assert torch.equal(records["x_adv"][0, 0], (x[:1] + deltas["l2"])[0])  # the first norm's unrestricted attack
    iou = attribution_iou(maps["l2"][0], maps["linf"][0])[0]
    assert records["regional_iou_attributions"][0, 0] == iou
    assert records["regional_iou_magnitudes"][0, 0] == attribution_iou(maps["l2"][1], maps["linf"][1])[0]
    # per image: a sub-batch gives the same records as the whole batch (no dependence on the batch size)
    part = job.analyze_batch(x[:1], y[:1], [0])
    assert_same(part, {k: v[:1] for k, v in records.items()})


@needs_checkpoints
def test_component_records_are_the_functional_analysis_of_each_image_alone():
    x, y, data = digits(2, first=4)
    job = make_job(data, components=COMPONENTS)
    records = job.analyze_batch(x, y, [4, 5])
    assert records["components_map"].shape == (2, 2, 64) and records["components_delta_true"].shape == (2, 2, 16)
    target = (y + 1) % 10
    settings = ComponentSettings(q=4, patch_grid=2, max_size=16, estimator=TaylorRewardApproximator(num_subplayers=2))
    checked = 0
    for k, model in enumerate(job.models):
        for b in range(2):
            index = 4 + b
            attack = Attack(
                model, "l2", 2.0, 0.3, 10, loss="margin", targeted=True, seed=image_seed(3, "attack", index)
            )
            x_adv = attack(x[b : b + 1], y[b : b + 1], target[b : b + 1])
            assert torch.equal(records["x_adv"][b, k], x_adv[0])
            success = bool(model(x_adv).argmax(1) == target[b])
            assert bool(records["components_attack_success"][b, k]) == success
            if not success:
                assert not records["components_analyzed"][b, k] and (records["components_map"][b, k] == -1).all()
                continue
            game = superpixel_game(
                model, x[b : b + 1], x_adv - x[b : b + 1], y[b : b + 1], target[b : b + 1], superpixel=2
            )
            seeded = ComponentSettings(**{**vars(settings), "random_state": image_seed(3, "components", index)})
            result = extract_components(game, seeded)
            effects = component_effects(game, result.component_map)
            count = len(effects.delta_true[0])
            assert torch.equal(records["components_map"][b, k], result.component_map[0])
            assert records["components_count"][b, k] == count
            assert records["components_num_forward_passes"][b, k] == result.num_forward_passes > 0
            assert torch.equal(records["components_delta_true"][b, k, :count], effects.delta_true[0])
            assert records["components_delta_target"][b, k, count:].isnan().all()
            share = foreground_share(result.component_map, game.player_map, foreground_mask_from_image(x[b : b + 1]))
            assert torch.equal(records["components_foreground"][b, k, :count], share[0])
            checked += 1
    assert checked >= 2
    part = job.analyze_batch(x[1:], y[1:], [5])
    assert_same(part, {k: v[1:] for k, v in records.items()})
    # aggregates: pooled shares over the components of the analysed images, the table and the figures
    summary = aggregate(records, job.run_metadata())
    entry = summary["models"]["standard"]["components"]
    analysed = records["components_analyzed"][:, 0]
    true, tgt = records["components_delta_true"][analysed, 0], records["components_delta_target"][analysed, 0]
    assert entry["num_components"] == int(records["components_count"][analysed, 0].sum()) == int(true.isfinite().sum())
    assert entry["share_decreasing_true"] == pytest.approx(float((true > tgt).sum()) / entry["num_components"])
    assert "| standard | 2 |" in summary_table(summary) and "share in foreground" in summary_table(summary)
    figures = image_figures(records, job.run_metadata(), num_figures=1)
    assert {key[:2] for key in figures} <= {("components", "standard"), ("components", "adversarial")} and figures
    scalars = summary_scalars(summary)
    assert "attributions/standard/components/share_decreasing_true_stderr" in scalars


# ----------------------------------------------------------------------------- settings and budgets
def test_bad_settings_get_clear_errors_before_any_work():
    data = DigitsDataModule()
    with pytest.raises(ValueError, match="needs regional settings, components settings or both"):
        make_job(data)
    bad_regional = [
        ({"norms": []}, "regional.norms must be a non-empty list"),
        ({"norms": ["l3"]}, "unknown regional.norms 'l3'"),
        ({"beta": -0.5}, "regional.beta .* must be a finite number >= 0"),
        ({"num_regions": 1}, "regional.num_regions"),
        ({"num_regions": 5}, "num_regions=5 does not divide the 14x14 inner part"),
        ({"estimator": "exact", "on_failure": "drop"}, "on_failure must be 'cap'"),
        ({"estimator_options": {"num_samples": 3}}, r"unknown option\(s\) \['num_samples'\] of 'stratified'"),
        ({"estimator_options": {"random_state": 3}}, "may not set random_state"),
        ({"l2": {"stepz": 3}}, r"unknown l2 option\(s\) \['stepz'\]"),
        (
            {"num_regions": 2, "beta": 1 / 3, "estimator_options": {"max_attacks": 10}},
            "needs up to 194 restricted attacks, more than max_attacks=10",
        ),
    ]
    for options, message in bad_regional:
        with pytest.raises((ValueError, TypeError), match=message):
            make_job(data, regional=options)
    bad_components = [
        ({"superpixel": 3}, "components.superpixel=3 must divide the image sides"),
        ({"extraction": {"q": 1}}, "q must be"),
        ({"foreground_threshold": 1.5}, r"components.foreground_threshold must be a fraction in \[0, 1\]"),
        ({"extraction": {"random_state": 1}}, "random_state must be unset"),
        ({"loss": "hinge"}, "unknown components.loss 'hinge'"),
        ({"superpixel": 1, "max_masked_inputs": 1000}, "more than components.max_masked_inputs=1,000"),
    ]
    for options, message in bad_components:
        with pytest.raises((ValueError, TypeError), match=message):
            make_job(data, components=options)
    with pytest.raises(ValueError, match="target_shift must be in 1..num_classes-1 = 1..9"):
        make_job(data, regional={"num_regions": 4}, target_shift=10)


def test_the_cost_is_announced_per_image_and_model_and_for_the_run():
    data = DigitsDataModule()
    job = make_job(data, regional={"num_regions": 2, "beta": 1 / 3, "estimator": "exact"}, components=COMPONENTS)
    line = job.cost_line(8)
    # exact: 2^4 coalitions + the unrestricted attack; L2 5 x 200 steps, L∞ scan 255 x 80 steps
    assert "up to 17 restricted attacks per norm (l2: 17 x 1,000 steps, linf: 17 x 20,400 steps)" in line
    assert "a 10-step targeted attack + about" in line and "whole run: up to about" in line
    assert RegionalSettings(num_regions=2, estimator="exact").planned_attacks() == 17
    settings = ComponentAnalysisSettings(**COMPONENTS)
    assert settings.planned_masked_inputs(16, 16) > 0 and settings.attack.norm == "l2"

    with pytest.raises(ValueError, match="num_figures"):
        AttributionWriter("runs/x", num_figures=-1)
