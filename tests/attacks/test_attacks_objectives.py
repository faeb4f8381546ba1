"""Losses, targeted/untargeted success, ensembles, model state, inference mode and recording."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lit_advgame.attacks import Attack, EnsembleLogits, Momentum, build_attack, classification_loss, margin


def test_margin_and_classification_losses():
    logits = torch.tensor([[2.0, 5.0, 1.0], [0.0, -1.0, 3.0]])
    labels = torch.tensor([1, 0])
    assert torch.equal(margin(logits, labels), torch.tensor([2.0 - 5.0, 3.0 - 0.0]))
    ce = F.cross_entropy(logits, labels, reduction="none")
    assert torch.equal(classification_loss(logits, labels, "ce", False), ce)
    assert torch.equal(classification_loss(logits, labels, "ce", True), -ce)
    assert torch.equal(classification_loss(logits, labels, "margin", True), -margin(logits, labels))
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        classification_loss(logits, labels, "hinge", False)


@pytest.mark.parametrize("loss", ["ce", "margin"])
def test_untargeted_attack_increases_the_loss(loss, digits_model):
    model, x, y = digits_model
    x, y = x[:32], y[:32]
    x_adv = Attack(model, eps=0.1, step_size=0.02, steps=10, loss=loss, seed=0)(x, y)
    with torch.no_grad():
        before = classification_loss(model(x), y, loss, False)
        after = classification_loss(model(x_adv), y, loss, False)
        assert (after > before).all()
        assert (model(x_adv).argmax(1) != y).float().mean() > (model(x).argmax(1) != y).float().mean() + 0.2


@pytest.mark.parametrize("loss", ["ce", "margin"])
def test_targeted_attack_reaches_its_target(loss, digits_model):
    model, x, y = digits_model
    x, y = x[:32], y[:32]
    target = (y + torch.randint(1, 10, (32,), generator=torch.Generator().manual_seed(0))) % 10
    assert (target != y).all()
    attack = Attack(model, eps=0.4, step_size=0.05, steps=30, loss=loss, targeted=True, seed=0)
    result = attack.run(x, y, target)
    with torch.no_grad():
        assert torch.equal(model(result.x_adv).argmax(1), target)
    # the (targeted) objective went up
    assert (result.losses["objective"][-1] > result.losses["objective"][0]).all()


def test_ensemble_attacks_the_mean_logits(cnn, skip_resnet, batch):
    x, y = batch
    ensemble = EnsembleLogits([cnn, skip_resnet]).eval()
    with torch.no_grad():
        assert torch.allclose(ensemble(x), (cnn(x) + skip_resnet(x)) / 2)
    a = Attack([cnn, skip_resnet], steps=3, seed=0)
    b = Attack(ensemble, steps=3, seed=0)
    assert torch.equal(a(x, y), b(x, y))
    with torch.no_grad():
        assert F.cross_entropy(ensemble(a(x, y)), y) > F.cross_entropy(ensemble(x), y)
    with pytest.raises(ValueError, match="at least one source model"):
        EnsembleLogits([])


def test_model_mode_is_eval_during_the_attack_and_restored_after(skip_resnet, batch):
    x, y = batch
    skip_resnet.train()
    skip_resnet.net[1].eval()  # a mixed state: one BatchNorm frozen
    seen = []
    handle = skip_resnet.net.register_forward_pre_hook(lambda m, i: seen.append(any(s.training for s in m.modules())))
    state = {k: v.clone() for k, v in skip_resnet.state_dict().items()}
    Attack(skip_resnet, steps=2, seed=0, transforms=[Momentum(1.0)])(x, y)
    handle.remove()
    assert seen and not any(seen)
    assert skip_resnet.training and not skip_resnet.net[1].training and skip_resnet.net[0].training
    for k, v in skip_resnet.state_dict().items():  # BatchNorm statistics untouched
        assert torch.equal(v, state[k]), k


def test_parameters_get_no_gradients(skip_resnet, batch):
    x, y = batch
    build_attack("mi", skip_resnet, steps=2, seed=0)(x, y)
    assert all(p.grad is None for p in skip_resnet.parameters())


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_attack_runs_under_no_grad_and_inference_mode(context, cnn, batch):
    x, y = batch
    expected = Attack(cnn, steps=3, seed=0)(x, y)
    with context():
        xi, yi = x.clone(), y.clone()  # inference tensors under inference_mode
        got = Attack(cnn, steps=3, seed=0)(xi, yi)
    assert torch.equal(got, expected)


def test_record_iterates_and_callback(cnn, batch):
    x, y = batch
    steps = 4
    calls = []
    attack = Attack(cnn, steps=steps, seed=0, random_start=False, record_iterates=True)
    result = attack.run(x, y, callback=lambda t, xt: calls.append((t, xt)))
    iterates = result.iterates
    assert iterates.shape == (steps, *x.shape) and iterates.device.type == "cpu"
    assert torch.equal(iterates[0], torch.zeros_like(x))  # δ before the first update (zero start)
    one_step = Attack(cnn, steps=1, seed=0, random_start=False)(x, y)
    torch.testing.assert_close(iterates[1], one_step - x, atol=1e-7, rtol=0)
    assert [t for t, _ in calls] == list(range(steps))
    for t, xt in calls:
        torch.testing.assert_close(xt, (x + iterates[t]).clamp(0, 1), atol=1e-7, rtol=0)
    assert set(result.losses) == {"classification", "objective"}
    assert result.losses["objective"].shape == (steps, len(x))
    uint8 = Attack(cnn, steps=steps, seed=0, random_start=False, record_iterates=True, record_format="uint8").run(x, y)
    assert uint8.iterates.dtype == torch.uint8
    assert torch.equal(uint8.iterates, torch.round((x + iterates).clamp(0, 1) * 255).to(torch.uint8))
    assert attack.run(x, y, record_iterates=False).iterates is None


def test_random_start_auto_follows_the_reference(cnn):
    from lit_advgame.attacks import InteractionLoss

    assert Attack(cnn).uses_random_start
    assert not Attack(cnn, loss_terms=[InteractionLoss(1.0)]).uses_random_start
    assert Attack(cnn, loss_terms=[InteractionLoss(0.0)]).uses_random_start
    assert Attack(cnn, loss_terms=[InteractionLoss("inf")]).uses_random_start  # I alone is flat at δ = 0
    assert Attack(cnn, loss_terms=[InteractionLoss(1.0)], random_start=True).uses_random_start


def test_float64_images_and_model(batch):
    from tests.attacks.tiny_models import make_cnn

    model = make_cnn().double()
    x, y = batch
    x_adv = Attack(model, steps=2, seed=0)(x.double(), y)
    assert x_adv.dtype == torch.float64 and (x_adv - x.double()).abs().max() <= 16 / 255 + 1e-12


def test_attack_inside_lightning_predict_with_inference_mode(cnn, batch):
    """Lightning runs predict under torch.inference_mode(); the attack still gets input gradients."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    x, y = batch
    attack = Attack(cnn, steps=2, seed=0)

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = cnn

        def predict_step(self, data, batch_idx):
            assert torch.is_inference_mode_enabled()
            return attack(*data)

    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    out = trainer.predict(Module(), DataLoader(TensorDataset(x, y), batch_size=len(x)))
    assert torch.equal(out[0], attack(x, y))
