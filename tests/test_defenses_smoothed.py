"""Games on a base classifier under Gaussian noise (Ren et al., NeurIPS 2021, supplement I): defenses.smoothed."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lit_advgame.defenses import NoisyLogProbabilities, smoothed_game
from lit_advgame.interactions import InputGame, exact_interactions, interaction_change
from lit_advgame.models.normalize import NormalizedModel
from lit_advgame.smoothing.noise import add_gaussian_noise
from lit_advgame.utils.seeding import make_generator


def _base() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 6), nn.Tanh(), nn.Linear(6, 3))


def _x(batch: int = 3) -> torch.Tensor:
    return torch.rand(batch, 1, 4, 4, generator=torch.Generator().manual_seed(2))


def test_expected_log_prob_averages_the_base_over_the_same_seeded_draws():
    base, x = _base(), _x()
    model = NoisyLogProbabilities(base, sigma=0.3, num_draws=5, seed=7)
    noise = add_gaussian_noise(torch.zeros(5, 1, 4, 4, dtype=torch.float64), 0.3, make_generator(7, "smoothed_value"))
    expected = torch.stack([F.log_softmax(base(x + noise[d].float()), dim=1) for d in range(5)]).mean(dim=0)
    torch.testing.assert_close(model(x), expected)
    torch.testing.assert_close(model(x[1:]), expected[1:])  # every input sees the same draws
    assert not torch.equal(NoisyLogProbabilities(base, 0.3, 5, seed=8)(x), model(x))


def test_smoothed_log_prob_is_the_log_of_the_mean_probability():
    base, x = _base(), _x()
    expected_log = NoisyLogProbabilities(base, 0.3, 6, output="expected_log_prob")(x)
    smoothed = NoisyLogProbabilities(base, 0.3, 6, output="smoothed_log_prob")(x)
    torch.testing.assert_close(smoothed.exp().sum(dim=1), torch.ones(3))
    assert bool((smoothed >= expected_log - 1e-6).all())  # Jensen: log E p >= E log p


def test_the_smoothed_game_values_are_expected_log_probabilities_and_the_estimators_apply():
    base, x = _base(), _x(2)
    y = torch.tensor([0, 2])
    game = smoothed_game(base, x, y, sigma=0.2, num_draws=4, grid=2, baseline="zeros")
    full = torch.ones(1, 4, dtype=torch.bool)
    torch.testing.assert_close(game.evaluate(full)[:, 0], game.model(x).gather(1, y.view(-1, 1))[:, 0])
    exact = exact_interactions(game)  # n = 4: the oracle runs on the noisy model like on any classifier
    assert exact.multi_order.shape == (2, 3, 4, 4)
    adversarial = smoothed_game(base, (x + 0.1).clamp(0, 1), y, sigma=0.2, num_draws=4, grid=2, baseline="zeros")
    change = interaction_change(game, adversarial, [0, 1, 2], num_pairs=2, num_contexts=2, generator=0)
    assert torch.isfinite(change.values).all()


def test_tiny_noise_with_one_draw_recovers_the_base_game():
    base, x = _base(), _x(2).double()
    base = base.double()
    y = torch.tensor([1, 0])
    noisy = smoothed_game(base, x, y, sigma=1e-9, num_draws=1, grid=2, baseline="zeros")
    plain = InputGame(base, x, y, grid=2, baseline="zeros")
    torch.testing.assert_close(exact_interactions(noisy).multi_order, exact_interactions(plain).multi_order)


def test_mean_baseline_is_read_through_the_wrapper():
    base = NormalizedModel(_base(), mean=[0.4], std=[0.2])
    game = smoothed_game(base, _x(1), sigma=0.1, num_draws=2, grid=2)
    torch.testing.assert_close(game.absent.flatten(), torch.tensor([0.4]))


def test_bad_input_gets_clear_errors():
    with pytest.raises(ValueError, match="sigma"):
        NoisyLogProbabilities(_base(), sigma=0.0)
    with pytest.raises(ValueError, match="num_draws"):
        NoisyLogProbabilities(_base(), sigma=0.1, num_draws=0)
    with pytest.raises(ValueError, match="output"):
        NoisyLogProbabilities(_base(), sigma=0.1, output="mean")
    with pytest.raises(ValueError, match="value="):
        smoothed_game(_base(), _x(), sigma=0.1, value="log_prob")
    assert NoisyLogProbabilities(_base(), sigma=0.1, num_draws=3).forward_multiplier == 3
    with torch.no_grad():
        assert not math.isnan(float(NoisyLogProbabilities(_base(), sigma=0.1)(_x()).sum()))
