"""The masked-evaluation engine: exact masking, chunking, dedupe, modes, gradients, validation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lit_advgame.interactions import (
    InputGame,
    PerturbationGame,
    eval_mode,
    grid_player_map,
    pack_coalitions,
)
from tests.interactions.helpers import make_images, make_tiny_cnn


def _random_coalitions(batch, k, n, seed=0):
    return torch.rand(batch, k, n, generator=torch.Generator().manual_seed(seed)) < 0.5


def _recorded_inputs(game, coalitions, **kwargs):
    seen = []
    hook = game.model.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    values = game.evaluate(coalitions, **kwargs)
    hook.remove()
    return values, torch.cat(seen)


def test_masked_inputs_are_exact_and_values_match_a_reference_loop():
    model = make_tiny_cnn(in_channels=3)
    x = make_images(channels=3, height=10, width=11)
    y = torch.tensor([2, 4])
    game = InputGame(model, x, y, grid=(3, 4), batch_size=7)
    coalitions = _random_coalitions(2, 10, 12)
    values, inputs = _recorded_inputs(game, coalitions)
    pm = grid_player_map(10, 11, (3, 4))
    mean = model.normalize.mean
    expected_inputs, expected_values = [], []
    for b in range(2):
        for k in range(10):
            mask = coalitions[b, k][pm]  # (H, W) bool
            masked = torch.where(mask, x[b], mean[0])
            expected_inputs.append(masked)
            expected_values.append(F.log_softmax(model(masked[None]), 1)[0, y[b]])
    assert torch.equal(inputs, torch.stack(expected_inputs))  # bit-exact masking
    assert torch.allclose(values, torch.stack(expected_values).view(2, 10), atol=1e-12)
    assert game.forward_passes == 20


def test_perturbation_game_masks_the_perturbation():
    model = make_tiny_cnn()
    x = make_images()
    delta = 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype)
    delta = (x + delta).clamp(0, 1) - x  # x + delta must stay in [0, 1]
    game = PerturbationGame(model, x, delta, torch.tensor([0, 1]), grid=3)
    coalitions = _random_coalitions(2, 5, 9)
    _, inputs = _recorded_inputs(game, coalitions)
    pm = grid_player_map(9, 9, 3)
    full_input = inputs[:2]  # the runner-up class is fixed from the full perturbation first
    assert torch.equal(full_input, x + delta)
    expected = torch.stack(
        [torch.where(coalitions[b, k][pm], (x + delta)[b], x[b]) for b in range(2) for k in range(5)]
    )
    assert torch.equal(inputs[2:], expected)


@pytest.mark.parametrize("batch_size", [1, 3, 1000])
def test_values_do_not_depend_on_chunking(batch_size):
    model = make_tiny_cnn()
    x = make_images()
    coalitions = _random_coalitions(2, 9, 9, seed=4)
    reference = InputGame(model, x, torch.tensor([0, 1]), grid=3, batch_size=16).evaluate(coalitions)
    values = InputGame(model, x, torch.tensor([0, 1]), grid=3, batch_size=batch_size).evaluate(coalitions)
    assert torch.allclose(values, reference, atol=1e-12, rtol=0)


def test_dedupe_evaluates_identical_coalitions_once():
    model = make_tiny_cnn()
    x = make_images()
    base = _random_coalitions(2, 4, 9, seed=2)
    coalitions = torch.cat([base, base, base[:, :1]], dim=1)  # 9 rows, 4 distinct per image
    game = InputGame(model, x, torch.tensor([0, 1]), grid=3)
    plain = game.evaluate(coalitions)
    assert game.forward_passes == 18
    deduped = game.evaluate(coalitions, dedupe=True)
    assert game.forward_passes == 18 + 8
    assert torch.allclose(plain, deduped, atol=1e-12, rtol=0)


def test_pack_coalitions_is_exact():
    rows = torch.rand(50, 130, generator=torch.Generator().manual_seed(0)) < 0.5
    packed = pack_coalitions(rows)
    assert packed.shape == (50, 3)
    rows2 = rows.clone()
    rows2[7, 129] = ~rows2[7, 129]
    assert not torch.equal(pack_coalitions(rows2)[7], packed[7]) and torch.equal(pack_coalitions(rows2)[8], packed[8])
    assert torch.unique(pack_coalitions(torch.cat([rows, rows])), dim=0).shape[0] == torch.unique(rows, dim=0).shape[0]


def test_shared_coalitions_and_image_subsets():
    model = make_tiny_cnn()
    x = make_images(batch=3)
    game = InputGame(model, x, torch.tensor([0, 1, 2]), grid=3)
    shared = _random_coalitions(1, 6, 9)[0]
    all_images = game.evaluate(shared)
    assert all_images.shape == (3, 6)
    subset = game.evaluate(shared.unsqueeze(0).expand(2, -1, -1), images=[0, 2])
    assert torch.allclose(subset, all_images[[0, 2]], atol=1e-12)
    with pytest.raises(ValueError, match="increasing"):
        game.evaluate(shared.unsqueeze(0).expand(2, -1, -1), images=[2, 0])


def test_eval_mode_is_used_and_modes_are_restored():
    model = make_tiny_cnn()
    model.train()
    model.net[1].eval()  # mixed modes must come back as they were
    modes = [m.training for m in model.modules()]
    x = make_images()
    game = InputGame(model, x, torch.tensor([0, 1]), grid=3)
    coalitions = _random_coalitions(2, 5, 9)
    first = game.evaluate(coalitions)
    second = game.evaluate(coalitions)
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(first, second)  # dropout and batch statistics are off
    with eval_mode(model):
        reference = InputGame(model, x, torch.tensor([0, 1]), grid=3).evaluate(coalitions)
    assert torch.allclose(first, reference, atol=1e-12)
    assert [m.training for m in model.modules()] == modes


def test_no_gradients_unless_asked():
    model = make_tiny_cnn()
    x = make_images()
    delta = torch.zeros_like(x).requires_grad_(True)
    game = PerturbationGame(model, x, delta, torch.tensor([0, 1]), grid=3)
    coalitions = _random_coalitions(2, 3, 9)
    assert not game.evaluate(coalitions).requires_grad
    with_grad = game.evaluate(coalitions, grad=True)
    assert with_grad.requires_grad
    (grad,) = torch.autograd.grad(with_grad.sum(), delta)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_bad_inputs_get_clear_errors():
    model = make_tiny_cnn()
    x = make_images()
    y = torch.tensor([0, 1])
    nan_x = x.clone()
    nan_x[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        InputGame(model, nan_x, y, grid=3)
    with pytest.raises(ValueError, match=r"shape \(B, C, H, W\)"):
        InputGame(model, x[0], y, grid=3)
    with pytest.raises(ValueError, match="larger than the image"):
        InputGame(model, x, y, grid=16)
    with pytest.raises(ValueError, match="pixel space"):
        InputGame(model, x * 3, y, grid=3)
    with pytest.raises(ValueError, match="y must be"):
        InputGame(model, x, torch.tensor([0, 1, 2]), grid=3)
    game = InputGame(model, x, torch.tensor([0, 9]), grid=3)
    with pytest.raises(ValueError, match=r"y must be in \[0, 4\]"):
        game.evaluate(torch.ones(1, 9, dtype=torch.bool))
    game = InputGame(model, x, y, grid=3)
    with pytest.raises(ValueError, match="coalitions must have shape"):
        game.evaluate(torch.ones(2, 3, 8, dtype=torch.bool))
    with pytest.raises(TypeError, match="boolean"):
        game.evaluate(torch.ones(2, 3, 9))
    with pytest.raises(ValueError, match="shape of x"):
        PerturbationGame(model, x, torch.zeros(1, 1, 9, 9, dtype=x.dtype), y, grid=3)
    with pytest.raises(ValueError, match="delta contains NaN"):
        PerturbationGame(model, x, torch.full_like(x, float("nan")), y, grid=3)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        InputGame(model, x, y, grid=3, batch_size=0)
