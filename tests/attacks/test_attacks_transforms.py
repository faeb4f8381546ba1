"""The gradient transforms: MI, VR, DI, TI and SGM (hooks, in-place ReLU, exact gradients)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

import lit_advgame.models as models
from lit_advgame.attacks import Attack, DiverseInputs, Momentum, SkipGradient, TranslationInvariance, VarianceReduction
from lit_advgame.attacks.transforms import gaussian_kernel
from lit_advgame.models.normalize import NormalizedModel
from tests.attacks.tiny_models import NUM_CLASSES, TinySkipBlock, make_skip_resnet


# ---------------------------------------------------------------- MI
def test_momentum_accumulates_normalised_gradients():
    mi = Momentum(0.5)
    g1, g2 = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    mi.start(torch.zeros(2, 3, 4, 4), torch.Generator())
    assert torch.equal(mi.update_direction(g1), g1)
    assert torch.allclose(mi.update_direction(g2), 0.5 * g1 + g2)
    mi.start(torch.zeros(2, 3, 4, 4), torch.Generator())  # a new attack call resets the velocity
    assert torch.equal(mi.update_direction(g2), g2)


# ---------------------------------------------------------------- VR
def test_variance_reduction_makes_copy_major_noisy_copies():
    vr = VarianceReduction(copies=3, sigma=0.1, reduction="mean")
    z = torch.rand(2, 1, 4, 4)
    vr.start(z, torch.Generator().manual_seed(0))
    out = vr.transform_input(z)
    assert out.shape == (6, 1, 4, 4)
    expected_noise = 0.1 * torch.randn(6, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out, z.repeat(3, 1, 1, 1) + expected_noise)
    assert torch.allclose(vr.reduce_copies(torch.tensor([3.0, 6.0])), torch.tensor([1.0, 2.0]))
    assert torch.equal(VarianceReduction(2, 0.1, "sum").reduce_copies(torch.tensor([3.0])), torch.tensor([3.0]))


def test_variance_reduction_objective_is_sum_over_copies(cnn, batch):
    x, y = batch
    copies = 4
    result = Attack(cnn, steps=1, random_start=False, seed=0, transforms=[VarianceReduction(copies, 0.05)]).run(x, y)
    objective = result.losses["classification"][0]
    # recompute with the same noise stream
    from lit_advgame.attacks.seeding import make_generator

    noise = torch.randn((copies * len(x),) + x.shape[1:], generator=make_generator(0, "VarianceReduction#0", "cpu"))
    with torch.no_grad():
        ce = F.cross_entropy(cnn(x.repeat(copies, 1, 1, 1) + 0.05 * noise), y.repeat(copies), reduction="none")
    torch.testing.assert_close(objective, ce.view(copies, -1).sum(0))


# ---------------------------------------------------------------- DI
@pytest.mark.parametrize("rate", [1.1, 0.8, 1.5])
def test_diverse_inputs_keeps_shape_and_changes_selected_images(rate):
    di = DiverseInputs(prob=0.5, resize_rate=rate)
    z = torch.ones(64, 3, 10, 14)
    di.start(z, torch.Generator().manual_seed(0))
    out = di.transform_input(z)
    assert out.shape == z.shape
    changed = (out != z).flatten(1).any(1)
    assert 0.25 < changed.float().mean() < 0.75  # p = 0.5 per image
    # a transformed image is the white image shrunk by s in [min_scale, 1) onto a black canvas:
    # its mean is about the area fraction s²
    means = out[changed].flatten(1).mean(1)
    assert (means < 1).all() and (means > di.min_scale**2 - 0.05).all()
    assert out.max() <= 1 + 1e-6 and out.min() >= 0


def test_diverse_inputs_probability_one_always_and_gradient_flows():
    di = DiverseInputs(prob=1.0, resize_rate=1.3)
    z = torch.rand(8, 1, 12, 12, requires_grad=True)
    di.start(z, torch.Generator().manual_seed(1))
    out = di.transform_input(z)
    assert (out != z).flatten(1).any(1).all()
    out.sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


# ---------------------------------------------------------------- TI
@pytest.mark.parametrize("size", [1, 3, 7, 15])
def test_gaussian_kernel_sums_to_one_and_is_symmetric(size):
    k = gaussian_kernel(size, 3.0)
    assert k.shape == (size, size)
    assert k.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.allclose(k, k.T) and torch.allclose(k, k.flip(0))
    assert k.argmax().item() == (size * size) // 2  # peak at the centre


def test_translation_invariance_is_depthwise_gaussian_smoothing():
    ti = TranslationInvariance(kernel_size=5, nsig=3.0)
    grad = torch.zeros(1, 3, 9, 9)
    grad[0, 1, 4, 4] = 1.0  # an impulse in channel 1 returns the kernel in that channel only
    out = ti.transform_gradient(grad)
    assert out.shape == grad.shape
    assert torch.allclose(out[0, 1, 2:7, 2:7], gaussian_kernel(5, 3.0))
    assert out[0, 0].abs().sum() == 0 and out[0, 2].abs().sum() == 0


# ---------------------------------------------------------------- SGM
class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, gamma):
        ctx.gamma = gamma
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.gamma, None


def _reference_sgm_forward(model: NormalizedModel, x: torch.Tensor, gamma: float) -> torch.Tensor:
    """The SGM definition written out: identity-skip branches get gradient ×γ, nothing else changes."""
    z = model.normalize(x)
    for child in model.net:
        if isinstance(child, TinySkipBlock):
            out = child.bn2(child.conv2(F.relu(child.bn1(child.conv1(z)))))
            z = F.relu(_ScaleGrad.apply(out, gamma) + z)
        elif isinstance(child, BasicBlock):
            out = child.bn2(child.conv2(F.relu(child.bn1(child.conv1(z)))))
            if child.downsample is None:
                z = F.relu(_ScaleGrad.apply(out, gamma) + z)
            else:  # projection skip: SGM leaves the block alone
                z = F.relu(out + child.downsample(z))
        elif hasattr(child, "layers"):  # the dense block of make_tv_densenet
            for layer in child.layers:
                new = layer.conv2(F.relu(layer.norm2(layer.conv1(F.relu(layer.norm1(z))))))
                z = torch.cat([z, _ScaleGrad.apply(new, gamma)], dim=1)
        else:
            z = child(z)
    return z


def _input_gradient(forward, x, y):
    x = x.clone().requires_grad_(True)
    loss = F.cross_entropy(forward(x), y, reduction="sum")
    return torch.autograd.grad(loss, x)[0]


@pytest.mark.parametrize("model_name", ["skip_resnet", "tv_resnet", "tv_densenet"])
@pytest.mark.parametrize("gamma", [0.0, 0.2, 0.5])
def test_skip_gradient_matches_the_sgm_definition(model_name, gamma, request, batch):
    model = request.getfixturevalue(model_name).eval()
    x, y = batch
    expected = _input_gradient(lambda v: _reference_sgm_forward(model, v, gamma), x, y)
    with SkipGradient(gamma).model_context([model]):
        got = _input_gradient(model, x, y)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-7)
    plain = _input_gradient(model, x, y)  # hooks are gone: the plain gradient again
    with SkipGradient(1.0).model_context([model]):
        assert torch.equal(_input_gradient(model, x, y), plain)
    if gamma < 1:
        assert not torch.allclose(got, plain)


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def test_skip_gradient_hooks_are_removed_after_attack_and_after_errors(skip_resnet, batch):
    x, y = batch
    before = _hook_count(skip_resnet)
    Attack(skip_resnet, steps=2, seed=0, transforms=[SkipGradient(0.2)])(x, y)
    assert _hook_count(skip_resnet) == before
    with pytest.raises(RuntimeError, match="boom"):
        with SkipGradient(0.2).model_context([skip_resnet]):
            assert _hook_count(skip_resnet) > before
            raise RuntimeError("boom")
    assert _hook_count(skip_resnet) == before


def test_skip_gradient_works_with_inplace_relu_inside_the_attack(skip_resnet, batch):
    x, y = batch
    assert any(isinstance(m, nn.ReLU) and m.inplace for m in skip_resnet.modules())
    x_adv = Attack(skip_resnet, steps=3, seed=0, transforms=[SkipGradient(0.2)])(x, y)
    assert torch.isfinite(x_adv).all() and not torch.equal(x_adv, x)


def _one_block_model(block: nn.Module, channels_in: int, channels_out: int) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, channels_in, 3, padding=1),
        block,
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(channels_out, NUM_CLASSES),
    )
    return NormalizedModel(net, [0.5] * 3, [0.25] * 3).eval()


SINGLE_BLOCKS = {  # name: (factory, input channels, output channels)
    "torchvision.BasicBlock": (lambda: BasicBlock(6, 6), 6, 6),
    "torchvision.Bottleneck": (lambda: Bottleneck(24, 6), 24, 24),
    "lit_advgame.CifarBasicBlock": (lambda: models.CifarBasicBlock(6, 6), 6, 6),
    "lit_advgame.PreActBlock": (lambda: models.PreActBlock(6, 6), 6, 6),
    "lit_advgame.DenseLayer": (lambda: models.DenseLayer(6, 4, bn_size=2), 6, 10),
    "lit_advgame.RobustnessBottleneck": (lambda: models.RobustnessBottleneck(24, 6), 24, 24),
}


@pytest.mark.parametrize("name", list(SINGLE_BLOCKS))
def test_skip_gradient_scales_each_blocks_branch_exactly_once(name, batch):
    """With one identity-skip block the input gradient is affine in γ: g(γ) = a + γ·b (branch × γ exactly once)."""
    make_block, channels_in, channels_out = SINGLE_BLOCKS[name]
    model = _one_block_model(make_block(), channels_in, channels_out)
    x, y = batch

    def grad_at(gamma):
        with SkipGradient(gamma).model_context([model]):
            return _input_gradient(model, x, y)

    g0, g1, g3 = grad_at(0.0), grad_at(1.0), grad_at(0.3)
    assert not torch.allclose(g0, g1)
    torch.testing.assert_close(g3, 0.7 * g0 + 0.3 * g1, rtol=1e-4, atol=1e-7)


def test_skip_gradient_errors_without_identity_skip_blocks(cnn, batch):
    with pytest.raises(ValueError, match="SGM needs a model with identity skip connections"):
        Attack(cnn, transforms=[SkipGradient(0.2)])
    down = nn.Sequential(nn.Conv2d(3, 4, 1, stride=2, bias=False), nn.BatchNorm2d(4))
    only_projection = nn.Sequential(BasicBlock(3, 4, stride=2, downsample=down), nn.Flatten(), nn.Linear(144, 2))
    # whether a skip is an identity is decided by behaviour, when the blocks run: at the first step
    attack = Attack(only_projection, steps=1, transforms=[SkipGradient(0.2)])
    x, y = batch
    with pytest.raises(ValueError, match=r"found none \(1 block\(s\) with projection skips are excluded: 0\)"):
        attack(x, y % 2)


def test_skip_gradient_errors_on_functional_relu_and_bad_branch_relus():
    class FunctionalBlock(nn.Module):
        is_skip_block = True

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 1)

        def forward(self, x):
            return F.relu(self.conv(x) + x)

    with pytest.raises(ValueError, match="contains no nn.ReLU module"):
        SkipGradient(0.2).check_model([nn.Sequential(FunctionalBlock())])

    class Declared(TinySkipBlock):
        branch_relus = ("relu9",)

    with pytest.raises(ValueError, match="branch_relus names 'relu9'"):
        SkipGradient(0.2).check_model([nn.Sequential(Declared(2))])


def test_skip_gradient_on_an_ensemble_and_hybrid_of_transforms(skip_resnet, cnn, batch):
    x, y = batch
    attack = Attack(
        [skip_resnet, cnn], steps=2, seed=0, transforms=[SkipGradient(0.2), VarianceReduction(2, 0.05), Momentum(1.0)]
    )
    assert torch.isfinite(attack(x, y)).all()
    assert _hook_count(make_skip_resnet()) == _hook_count(skip_resnet)
