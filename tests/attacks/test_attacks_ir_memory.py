"""The IR term at scale: gradients equal the all-graph path, memory bounded by the chunk size, one shared forward."""

from __future__ import annotations

import pytest
import torch

import lit_advgame.interactions as interactions
from lit_advgame.attacks import build_attack
from lit_advgame.interactions.perturbation import _game_and_approximator
from lit_advgame.utils.memory import SavedTensorMeter

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


def peak_saved_bytes(model, x, y, num_samples, engine, monkeypatch):
    meter = SavedTensorMeter()  # bytes saved for backward alive at once
    with monkeypatch.context() as patch:
        if engine is not None:
            patch.setattr(interactions, "perturbation_interaction", engine)
        attack = build_attack(
            "pgd+ir", model, steps=2, seed=0, ir_grid=4, ir_num_samples=num_samples, ir_group_size=3, ir_batch_size=6
        )
        with meter:
            attack.run(x, y)
    assert meter.live == 0  # every graph was freed
    return meter.peak


def test_ir_memory_is_bounded_by_the_chunk_size_not_the_groups(skip_resnet, batch, monkeypatch):
    """8× the groups (8× the masked forwards) leaves the peak of saved activations unchanged."""
    x, y = batch
    few = peak_saved_bytes(skip_resnet, x, y, 2, None, monkeypatch)
    many = peak_saved_bytes(skip_resnet, x, y, 16, None, monkeypatch)
    assert many == few
    # the measurement sees the former all-graph path grow with the groups
    old_few = peak_saved_bytes(skip_resnet, x, y, 2, all_graph_engine, monkeypatch)
    old_many = peak_saved_bytes(skip_resnet, x, y, 16, all_graph_engine, monkeypatch)
    assert old_many > 4 * old_few and old_few > few


class ImageCounter:
    """Images through the model's forward (a forward hook)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.images = 0
        self.handle = model.register_forward_hook(self)

    def __call__(self, module, inputs, output) -> None:
        self.images += inputs[0].shape[0]


@pytest.mark.parametrize(
    ("preset", "options", "shared"),
    [
        ("pgd+ir", {}, True),
        ("mi+ir", {}, True),
        ("vr+ir", {"vr_copies": 2}, False),
        ("pgd+ir", {"ir_lambda": "inf"}, False),
    ],
)
def test_the_forward_at_x_plus_delta_is_shared_with_the_ir_term(preset, options, shared, cnn, batch, monkeypatch):
    """Per step: B·(1 + 2k) masked forwards (v(∅), Ω∖S, S) plus one forward at x + δ shared by CE and v(Ω)."""
    x, y = batch
    b, k, steps = x.shape[0], 3, 2

    def images_forwarded(engine):
        counter = ImageCounter(cnn)
        with monkeypatch.context() as patch:
            if engine is not None:
                patch.setattr(interactions, "perturbation_interaction", engine)
            attack = build_attack(
                preset, cnn, steps=steps, seed=0, ir_grid=4, ir_num_samples=k, ir_group_size=2, **options
            )
            attack.run(x, y)
        counter.handle.remove()
        return counter.images - b  # less the run's label check

    classification = 0 if options.get("ir_lambda") == "inf" else b * options.get("vr_copies", 1)
    ir = b * (1 + 1 + 2 * k)  # v(Ω), v(∅), 2k masked
    expected = steps * (classification + ir - (b if shared else 0))
    assert images_forwarded(None) == expected
    assert images_forwarded(all_graph_engine) == steps * (classification + ir)  # the former count
