"""Value functions on logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lit_advgame.interactions import InputGame, PerturbationGame, resolve_value
from tests.interactions.helpers import make_images, make_tiny_cnn


def test_named_values_on_logits():
    logits = torch.tensor([[1.0, 3.0, 2.0], [0.5, -1.0, 4.0]], dtype=torch.float64)
    labels = torch.tensor([0, 2])
    assert torch.allclose(resolve_value("log_prob")(logits, labels), F.log_softmax(logits, 1)[[0, 1], [0, 2]])
    assert torch.equal(resolve_value("logit")(logits, labels), torch.tensor([1.0, 4.0], dtype=torch.float64))
    assert torch.equal(resolve_value("margin_max")(logits, labels), torch.tensor([2.0, -3.5], dtype=torch.float64))
    targets = torch.tensor([2, 1])
    assert torch.equal(
        resolve_value("margin_fixed")(logits, labels, targets), torch.tensor([1.0, -5.0], dtype=torch.float64)
    )
    assert torch.equal(
        resolve_value("target_minus_true")(logits, labels, targets), torch.tensor([1.0, -5.0], dtype=torch.float64)
    )


def test_margin_fixed_uses_runner_up_of_full_perturbation():
    model = make_tiny_cnn()
    x = make_images()
    delta = 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=x.dtype)
    delta = (x + delta).clamp(0, 1) - x  # x + delta must stay in [0, 1]
    y = torch.tensor([1, 3])
    game = PerturbationGame(model, x, delta, y, grid=3)
    game.resolve_classes()
    logits = model(x + delta)
    logits[torch.arange(2), y] = float("-inf")
    assert torch.equal(game.targets, logits.argmax(1))
    full = torch.ones(1, 9, dtype=torch.bool)
    empty = torch.zeros(1, 9, dtype=torch.bool)
    values = game.evaluate(torch.cat([full, empty]))
    clean_logits = model(x)
    expected_empty = clean_logits[torch.arange(2), game.targets] - clean_logits[torch.arange(2), y]
    assert torch.allclose(values[:, 1], expected_empty, atol=1e-12)


def test_custom_callable_and_errors():
    model = make_tiny_cnn()
    x = make_images()
    game = InputGame(model, x, torch.tensor([0, 1]), grid=3, value=lambda logits, labels: logits[:, 0] * 2)
    v = game.evaluate(torch.ones(1, 9, dtype=torch.bool))
    assert torch.allclose(v[:, 0], model(x)[:, 0] * 2)
    bad = InputGame(model, x, torch.tensor([0, 1]), grid=3, value=lambda logits, labels: logits)
    with pytest.raises(ValueError, match="one value per masked input"):
        bad.evaluate(torch.ones(1, 9, dtype=torch.bool))
    with pytest.raises(ValueError, match="unknown value"):
        resolve_value("probability")
    with pytest.raises(ValueError, match="needs target"):
        InputGame(model, x, torch.tensor([0, 1]), grid=3, value="target_minus_true")
    with pytest.raises(ValueError, match="target"):
        InputGame(model, x, torch.tensor([0, 1]), grid=3, value="log_prob", target=torch.tensor([1, 2]))


def test_prediction_used_when_labels_are_omitted():
    model = make_tiny_cnn()
    x = make_images()
    game = InputGame(model, x, None, grid=3)
    v = game.evaluate(torch.ones(1, 9, dtype=torch.bool))
    log_probs = F.log_softmax(model(x), 1)
    assert torch.allclose(v[:, 0], log_probs.max(1).values)
