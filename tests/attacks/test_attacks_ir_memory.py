"""The IR term at scale: gradients equal the all-graph path, memory bounded by the chunk size, one shared forward."""

from __future__ import annotations

import pytest
import torch

import lit_advgame.interactions as interactions
from lit_advgame.attacks import build_attack
from lit_advgame.interactions.perturbation import _game_and_approximator

IR_OPTIONS = dict(ir_grid=4, ir_num_samples=4, ir_group_size=3, ir_batch_size=5)


def all_graph_engine(model, x, delta, y, *, full_logits=None, **options):
    """The former engine: its own forward at x + δ and every chunk's graph alive until the attack's backward."""
    game, approximator = _game_and_approximator(model, x, delta, y, options, "perturbation_interaction")
    terms, _ = approximator.terms(game)
    return terms.mean(dim=1)


def record_gradients(monkeypatch):
    """Record ∇_δ of every step (the gradient the attack's transforms receive)."""
    from lit_advgame.attacks.base import Attack

    grads = []
    original = Attack._gradient

    def wrapped(self, *args):
        grad, logs = original(self, *args)
        grads.append(grad.clone())
        return grad, logs

    monkeypatch.setattr(Attack, "_gradient", wrapped)
    return grads


def run_preset(name, model, x, y, seed, engine, monkeypatch):
    with monkeypatch.context() as patch:
        if engine is not None:
            patch.setattr(interactions, "perturbation_interaction", engine)
        grads = record_gradients(patch)
        extra = {"vr_copies": 2} if name == "hybridir" else {}
        result = build_attack(name, model, steps=4, seed=seed, **IR_OPTIONS, **extra).run(x, y)
    return result, grads


@pytest.mark.parametrize("name", ["pgd+ir", "mi+ir", "hybridir"])
@pytest.mark.parametrize("seed", [0, 7])
def test_chunked_backward_matches_the_all_graph_gradient(name, seed, skip_resnet, batch, monkeypatch):
    x, y = batch
    new, new_grads = run_preset(name, skip_resnet, x, y, seed, None, monkeypatch)
    old, old_grads = run_preset(name, skip_resnet, x, y, seed, all_graph_engine, monkeypatch)
    assert len(new_grads) == len(old_grads) == 4
    for g_new, g_old in zip(new_grads, old_grads):
        torch.testing.assert_close(g_new, g_old, rtol=1e-5, atol=1e-7)
    assert torch.equal(new.x_adv, old.x_adv)
    assert new.losses.keys() == old.losses.keys()
    for key in old.losses:
        assert torch.equal(new.losses[key], old.losses[key]), key
