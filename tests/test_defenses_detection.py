"""Attribution-based detection (Ren et al., NeurIPS 2021, supplement G): ML-LOO's score, its decomposition into
interactions, the three detectors and their ROC-AUC."""

from __future__ import annotations

import logging

import pytest
import torch
from scipy.stats import iqr
from sklearn.metrics import roc_auc_score
from torch import nn

from lit_advgame.defenses import (
    AttributionDetector,
    attribution_statistic,
    detect,
    detection_auc,
    leave_one_out_scores,
    ml_loo_game,
    shapley_from_interactions,
)
from lit_advgame.interactions import InputGame, exact_interactions


@pytest.fixture
def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 12), nn.Tanh(), nn.Linear(12, 4)).double()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(3, 1, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def test_ml_loo_score_is_the_leave_one_out_difference_of_the_unmasked_prediction(model, images):
    game = ml_loo_game(model, images, grid=3)  # 9 players of 2x2 pixels
    scores = leave_one_out_scores(game)
    predicted = model(images).argmax(dim=1)
    assert torch.equal(game.labels, predicted)  # the class is the unmasked prediction
    n = 9
    assert scores.per_player.shape == (3, n) and scores.num_forward_passes == 3 * (n + 1) + 3
    for i in range(n):
        masked = images.clone()
        row, col = divmod(i, 3)
        masked[..., 2 * row : 2 * row + 2, 2 * col : 2 * col + 2] = 0.0  # ML-LOO masks the variable by 0
        full = torch.log_softmax(model(images), 1).gather(1, predicted[:, None]).squeeze(1)
        left_out = torch.log_softmax(model(masked), 1).gather(1, predicted[:, None]).squeeze(1)
        torch.testing.assert_close(scores.per_player[:, i], (full - left_out).detach(), rtol=0, atol=1e-12)


def test_ml_loo_game_defaults_to_one_player_per_pixel(model, images):
    assert ml_loo_game(model, images).num_players == 36


def test_ml_loo_score_is_the_highest_order_shapley_value_and_decomposes_into_interactions(model, images):
    game = ml_loo_game(model, images, grid=3)
    exact = exact_interactions(game)
    n = exact.num_players
    loo = leave_one_out_scores(game).per_player
    torch.testing.assert_close(exact.multi_order_shapley[:, n - 1], loo, rtol=0, atol=1e-12)
    # φ^(m)(i) = E_j[Σ_{k<m} I^(k)_ij] + φ^(0)(i) for every order, φ^(n-1) = ML-LOO's score included
    torch.testing.assert_close(shapley_from_interactions(exact), exact.multi_order_shapley, rtol=0, atol=1e-12)
    torch.testing.assert_close(shapley_from_interactions(exact, [n - 1])[:, 0], loo, rtol=0, atol=1e-12)


def test_decomposition_holds_on_a_synthetic_game_with_every_order():
    generator = torch.Generator().manual_seed(3)
    table = torch.randn(2, 1 << 7, generator=generator, dtype=torch.float64)
    exact = exact_interactions(table)
    torch.testing.assert_close(shapley_from_interactions(exact), exact.multi_order_shapley, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r"outside \[0, n-1\] = \[0, 6\]"):
        shapley_from_interactions(exact, [7])


def test_auc_matches_scikit_learn_on_fixed_scores_with_ties_and_large_values():
    normal = torch.tensor([0.1, 0.4, 0.4, 35.0, 60.0, -3.0, 0.4])
    adversarial = torch.tensor([0.4, 50.0, 70.0, 0.9, -5.0, 45.0])
    expected = roc_auc_score([0] * 7 + [1] * 6, torch.cat([normal, adversarial]).numpy())
    assert detection_auc(normal, adversarial) == pytest.approx(expected, abs=1e-6)  # torchmetrics: float32
    assert detection_auc(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])) == 1.0
    assert detection_auc(torch.tensor([3.0, 4.0]), torch.tensor([1.0, 2.0])) == 0.0
    with pytest.raises(ValueError, match="normal must hold at least one score"):
        detection_auc(torch.tensor([]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="adversarial contains NaN"):
        detection_auc(torch.tensor([1.0]), torch.tensor([float("nan")]))


def test_iqr_statistic_matches_scipy():
    values = torch.randn(4, 3, 11, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(
        attribution_statistic(values, "iqr"), torch.as_tensor(iqr(values.numpy(), axis=-1)), rtol=0, atol=1e-12
    )
    torch.testing.assert_close(attribution_statistic(values, "mean_abs"), values.abs().mean(-1))
    with pytest.raises(ValueError, match="unknown statistic 'median'"):
        attribution_statistic(values, "median")


def test_detectors_equal_the_exact_oracle_when_every_context_and_pair_is_used(model, images):
    game = InputGame(model, images, None, grid=3, baseline="zeros")
    exact = exact_interactions(game)
    detectors = [
        AttributionDetector("ml_loo"),
        AttributionDetector("shapley", orders=[0, 3, 8], num_contexts=100),  # C(8, m) <= 100: enumerated
        AttributionDetector("interaction", orders=[0, 2, 7], num_pairs=None, pairs="uniform", num_contexts=100),
        AttributionDetector("interaction", orders=[1, 6], statistic="iqr", num_pairs=None, pairs="uniform"),
    ]
    for detector in detectors:
        scores = detector.scores(game)
        assert scores.scores.shape == (3, len(scores.orders))
        torch.testing.assert_close(scores.scores, detector.exact_scores(exact), rtol=0, atol=1e-10)
        assert scores.num_forward_passes <= detector.planned_forward_passes(3, 9)


def test_detect_scores_normal_and_adversarial_images_per_order(model, images):
    noisy = (images + 0.3 * torch.randn(images.shape, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    detector = AttributionDetector("shapley", orders=[0, 8], num_contexts=8, random_state=0)
    result = detect(detector, ml_loo_game(model, images, grid=3), ml_loo_game(model, noisy, grid=3))
    assert result.auc.shape == (2,) and bool(((result.auc >= 0) & (result.auc <= 1)).all())
    torch.testing.assert_close(result.separation, torch.maximum(result.auc, 1 - result.auc))
    expected = detection_auc(result.normal.scores[:, 1], result.adversarial.scores[:, 1])
    assert result.to_dict()["detection/shapley/auc/m8"] == pytest.approx(expected)
    with pytest.raises(ValueError, match="same players"):
        detect(detector, ml_loo_game(model, images, grid=3), ml_loo_game(model, images, grid=2))


def test_detector_orders_outside_their_range_are_refused(model, images):
    game = ml_loo_game(model, images, grid=3)  # n = 9
    with pytest.raises(ValueError, match=r"multi-order Shapley order 9 is outside \[0, n-1\] = \[0, 8\]"):
        AttributionDetector("shapley", orders=[9]).scores(game)
    with pytest.raises(ValueError, match=r"interaction order 8 is outside \[0, n-2\] = \[0, 7\]"):
        AttributionDetector("interaction", orders=[8]).scores(game)
    with pytest.raises(ValueError, match=r"interaction order -1 is outside"):
        AttributionDetector("interaction", orders=[-1]).scores(game)
    with pytest.raises(ValueError, match="scores order n-1 only"):
        AttributionDetector("ml_loo", orders=[3])
    with pytest.raises(ValueError, match="unknown kind 'lid'"):
        AttributionDetector("lid")
    with pytest.raises(ValueError, match="unknown statistic 'max'"):
        AttributionDetector("shapley", statistic="max")
    assert game.forward_passes == 0


def test_costs_are_announced_and_checked_before_any_work(model, images, caplog):
    game = ml_loo_game(model, images, grid=3)
    detector = AttributionDetector("interaction", orders=[1, 4], num_pairs=5, num_contexts=3)
    planned = detector.planned_forward_passes(3, 9)
    assert planned == 3 * (4 * 5 * (3 + 3) + 1)  # m = 1 has C(7, 1) = 7 > 3 contexts; m = 4 has 35
    with pytest.raises(ValueError, match=f"needs up to {planned:,} forward passes"):
        AttributionDetector("interaction", orders=[1, 4], num_pairs=5, num_contexts=3, max_forward_passes=10).scores(
            game
        )
    assert game.forward_passes == 0
    with caplog.at_level(logging.INFO):
        detector.scores(game)
    assert f"interaction[mean]: up to {planned:,} masked forward passes (3 images x 9 players x 2 order(s))" in (
        caplog.text
    )


def test_a_smoothed_model_counts_its_base_classifier_passes_in_the_plan_and_the_budget(model, images, caplog):
    from lit_advgame.defenses import NoisyLogProbabilities

    noisy = NoisyLogProbabilities(model, sigma=0.1, num_draws=4, seed=0)
    game = ml_loo_game(noisy, images, grid=3)
    planned = AttributionDetector("ml_loo").planned_forward_passes(3, 9)  # 3 x (9 + 2) masked inputs
    with pytest.raises(ValueError, match=f"needs up to {4 * planned:,} forward passes"):
        AttributionDetector("ml_loo", max_forward_passes=4 * planned - 1).scores(game)
    assert game.forward_passes == 0
    with caplog.at_level(logging.INFO):
        AttributionDetector("ml_loo", max_forward_passes=4 * planned).scores(game)
    assert f"up to {planned:,} masked forward passes (3 images x 9 players x 1 order(s)) x 4 base-classifier" in (
        caplog.text
    )
