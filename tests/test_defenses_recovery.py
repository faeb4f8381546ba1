"""Recoverability of adversarial examples (Ren et al., NeurIPS 2021, supplement I.10): lit_advgame.defenses.recovery."""

from __future__ import annotations

import math

import pytest
import scipy.stats
import torch
from torch import nn

from lit_advgame.attacks.base import Attack
from lit_advgame.defenses import (
    Recoverability,
    RecoveryResult,
    compare_recoverability,
    recoverability,
    recoverability_table,
)

EPS = 16 / 255


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 6, 16), nn.Tanh(), nn.Linear(16, 4))


def _data(batch: int = 6):
    generator = torch.Generator().manual_seed(1)
    return torch.rand(batch, 3, 6, 6, generator=generator), torch.arange(batch) % 4


def test_recovery_is_a_targeted_attack_to_the_true_label_started_from_x_adv(monkeypatch):
    calls = []
    original = Attack.run

    def spy(self, x, y, target=None, **kwargs):
        calls.append({"targeted": self.targeted, "x": x.clone(), "y": y.clone(), "target": target, "steps": self.steps})
        return original(self, x, y, target, **kwargs)

    monkeypatch.setattr(Attack, "run", spy)
    x, y = _data()
    result = recoverability(_model(), x, y, steps=4)
    attack, recovery = calls
    assert not attack["targeted"] and attack["target"] is None and torch.equal(attack["x"], x)
    assert recovery["targeted"] and torch.equal(recovery["target"], y) and torch.equal(recovery["y"], y)
    assert torch.equal(recovery["x"], result.x_adv)  # the recovery starts from (and is centred at) x_adv
    assert attack["steps"] == recovery["steps"] == 4  # the same parameters


def test_both_attacks_stay_in_their_balls_and_in_the_image_range():
    x, y = _data()
    result = recoverability(_model(), x, y, steps=5)
    assert float((result.x_adv - x).abs().amax()) <= EPS + 1e-6
    assert float((result.x_recovered - result.x_adv).abs().amax()) <= EPS + 1e-6
    for images in (result.x_adv, result.x_recovered):
        assert float(images.min()) >= 0 and float(images.max()) <= 1
    torch.testing.assert_close(result.adversarial_distance, (result.x_adv - x).double().flatten(1).norm(dim=1))
    torch.testing.assert_close(result.recovered_distance, (result.x_recovered - x).double().flatten(1).norm(dim=1))


def test_l2_recovery_stays_in_the_l2_ball_around_x_adv():
    x, y = _data()
    result = recoverability(_model(), x, y, norm="l2", eps=0.5, step_size=0.1, steps=5)
    assert float((result.x_recovered - result.x_adv).flatten(1).norm(dim=1).max()) <= 0.5 + 1e-5


def test_recovery_restores_the_true_label_of_a_fooled_linear_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 6, 2))
    x, _ = _data(8)
    y = model(x).argmax(dim=1).detach()  # correctly classified
    result = recoverability(model, x, y, eps=0.2, step_size=0.05, steps=10)
    assert result.fooled.all()
    assert result.restored.all()  # the targeted recovery brings every image back to y


def test_results_are_reproducible_and_the_recovery_stream_differs_from_the_attack():
    x, y = _data()
    first = recoverability(_model(), x, y, steps=3, seed=5)
    again = recoverability(_model(), x, y, steps=3, seed=5)
    other = recoverability(_model(), x, y, steps=3, seed=6)
    assert torch.equal(first.x_recovered, again.x_recovered)
    assert not torch.equal(first.x_adv, other.x_adv)
    attack, recovery = Recoverability(seed=5).attacks(_model())
    assert attack.seed == 5 and recovery.seed not in (None, 5)  # its own stream, derived from the seed


def _result() -> RecoveryResult:
    images = torch.zeros(4, 1, 2, 2)
    return RecoveryResult(
        x_adv=images,
        x_recovered=images,
        adversarial_distance=torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64),
        recovered_distance=torch.tensor([0.5, 2.5, 2.0, 4.0], dtype=torch.float64),
        fooled=torch.tensor([True, True, False, True]),
        restored=torch.tensor([True, False, True, True]),
        num_forward_passes=88,
    )


def test_summary_means_fractions_and_standard_errors():
    result = _result()
    assert result.closer.tolist() == [True, False, True, True]  # ‖x̂ − x‖ <= ‖x_adv − x‖ (ties count)
    summary = result.summary()
    assert summary["adversarial_distance"] == pytest.approx(2.5)
    assert summary["adversarial_distance_stderr"] == pytest.approx(scipy.stats.sem([1, 2, 3, 4]))
    assert summary["recovered_distance"] == pytest.approx(2.25)
    assert summary["gain"] == pytest.approx(0.25)
    assert summary["gain_stderr"] == pytest.approx(scipy.stats.sem([0.5, -0.5, 1.0, 0.0]))
    assert summary["closer"] == pytest.approx(0.75)
    assert summary["closer_stderr"] == pytest.approx(scipy.stats.sem([1, 0, 1, 1]))
    assert summary["restored"] == pytest.approx(0.75)
    assert summary["fooled"] == pytest.approx(0.75) and summary["num_images"] == 4
    fooled = result.summary("fooled")
    assert fooled["num_images"] == 3 and fooled["adversarial_distance"] == pytest.approx(7 / 3)
    assert fooled["closer"] == pytest.approx(2 / 3)
    logged = result.to_dict("rec")
    assert logged["rec/closer"] == pytest.approx(0.75) and logged["rec/num_forward_passes"] == 88


def test_empty_subset_is_nan_and_a_bad_subset_is_an_error():
    result = _result()
    result.fooled = torch.zeros(4, dtype=torch.bool)
    assert math.isnan(result.summary("fooled")["closer"])
    row = recoverability_table({"m": result}, "fooled").splitlines()[2]
    assert row == "| m | 0 | 0.000 | – | – | – | – |"  # not "nan ± nan"
    result.fooled = torch.tensor([True, False, False, False])
    row = recoverability_table({"m": result}, "fooled").splitlines()[2]
    assert "nan" not in row and row.count("±") == 0 and row.startswith("| m | 1 | 0.250 | ")
    with pytest.raises(ValueError, match="subset"):
        result.summary("some")


def test_difference_is_paired_over_the_same_images():
    a, b = _result(), _result()
    b.recovered_distance = b.recovered_distance + torch.tensor([1.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    diff = a.difference(b)
    assert diff["recovered_distance"] == pytest.approx(-1.0)
    assert diff["recovered_distance_stderr"] == pytest.approx(0.0)  # a constant shift: no paired variation
    assert diff["closer"] == pytest.approx(0.5)  # images 0 and 2 are closer only in a
    smaller = RecoveryResult(**{**vars(_result()), "adversarial_distance": torch.ones(3, dtype=torch.float64)})
    with pytest.raises(ValueError, match="same images"):
        a.difference(smaller)


def test_compare_models_on_the_same_images_and_the_table():
    x, y = _data()
    results = compare_recoverability({"standard": _model(0), "other": _model(1)}, x, y, steps=2)
    assert list(results) == ["standard", "other"]
    assert results["standard"].num_forward_passes == 6 * 2 * 3
    table = recoverability_table(results)
    lines = table.splitlines()
    assert len(lines) == 4 and lines[2].startswith("| standard | 6 |") and "±" in lines[3]


def test_bad_settings_get_clear_errors():
    with pytest.raises(ValueError, match="steps"):
        Recoverability(steps=0)
    with pytest.raises(ValueError, match="targeted"):
        Recoverability(attack_kwargs={"targeted": True})
    with pytest.raises(ValueError, match="non-empty mapping"):
        Recoverability().compare({}, *_data())
    with pytest.raises(ValueError, match="eps"):
        recoverability(_model(), *_data(), eps=16)  # intensity levels, not pixel units
    with pytest.raises(TypeError, match="model"):
        recoverability(lambda t: t, *_data())
