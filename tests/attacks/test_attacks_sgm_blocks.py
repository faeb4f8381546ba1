"""SGM picks identity-skip blocks by behaviour, not by attribute names (issue 8)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18

from lit_advgame import models
from lit_advgame.attacks import Attack, SkipGradient
from lit_advgame.attacks.transforms import is_skip_block as sgm_is_skip_block
from lit_advgame.attacks.transforms import skip_kinds
from lit_advgame.models import is_skip_block as models_is_skip_block
from lit_advgame.models.normalize import NormalizedModel
from tests.attacks.tiny_models import NUM_CLASSES


class CustomBlock(nn.Module):
    """relu(bn2(conv2(relu1(bn1(conv1(x))))) + sc(x)): the shortcut is stored as ``sc`` (not ``downsample``)."""

    is_skip_block = True

    def __init__(self, c_in: int, c_out: int, stride: int = 1, projection: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.sc = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False) if projection else nn.Identity()
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x))))) + self.sc(x))


def _custom_resnet(**last) -> nn.Module:
    """Stem, an identity block ``net.1`` and ``net.2 = CustomBlock(4, 8, **last)``, seeded."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        CustomBlock(4, 4),
        CustomBlock(4, 8, **last),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, NUM_CLASSES),
    )
    return NormalizedModel(net, [0.5] * 3, [0.25] * 3).eval()


def _input_gradient(model, x, y, gamma):
    x = x.clone().requires_grad_(True)
    with SkipGradient(gamma).model_context([model]):
        loss = F.cross_entropy(model(x), y, reduction="sum")
        return torch.autograd.grad(loss, x)[0]


@pytest.mark.parametrize("stride", [2, 1])
def test_a_projection_shortcut_named_sc_gets_no_gamma(stride, batch):
    """The repro: two tagged blocks, the second with a 1×1-conv shortcut ``sc``; only the first is SGM's."""
    x, y = batch
    model = _custom_resnet(stride=stride, projection=True)
    assert skip_kinds(model, x) == {"net.1": "identity", "net.2": "projection"}
    # the reference: the same model with the projection block opted out (instance attribute)
    reference = _custom_resnet(stride=stride, projection=True)
    reference.net[2].is_skip_block = False
    assert skip_kinds(reference, x) == {"net.1": "identity"}
    for gamma in (0.0, 0.3):
        torch.testing.assert_close(
            _input_gradient(model, x, y, gamma), _input_gradient(reference, x, y, gamma), rtol=0, atol=0
        )
    # and γ does reach the identity block
    assert not torch.allclose(_input_gradient(model, x, y, 0.3), _input_gradient(model, x, y, 1.0))


def test_an_identity_named_sc_is_an_identity_skip(batch):
    x, _ = batch
    model = _custom_resnet()
    model.net[2] = CustomBlock(4, 4)
    model.net[-1] = nn.Linear(4, NUM_CLASSES)
    assert isinstance(model.net[2].sc, nn.Identity)
    assert skip_kinds(model, x) == {"net.1": "identity", "net.2": "identity"}


@pytest.mark.parametrize(
    "make, size, expected",
    [
        (
            lambda: models.CifarResNet(8),
            16,
            {"layer1.0": "identity", "layer2.0": "projection", "layer3.0": "projection"},
        ),
        (
            lambda: models.CifarResNet(8, shortcut="A"),
            16,  # parameter-free zero-pad shortcut: still not an identity
            {"layer1.0": "identity", "layer2.0": "projection", "layer3.0": "projection"},
        ),
        (
            lambda: models.PreActResNet18(width=4),
            16,
            {f"layer{i}.{j}": "projection" if i > 1 and j == 0 else "identity" for i in range(1, 5) for j in range(2)},
        ),
        (
            lambda: resnet18(num_classes=3),
            32,  # torchvision: the official rule (first block of stages 2-4)
            {f"layer{i}.{j}": "projection" if i > 1 and j == 0 else "identity" for i in range(1, 5) for j in range(2)},
        ),
        (
            lambda: models.RobustnessCifarResNet(models.RobustnessBottleneck, (1, 1, 1, 1), wm=0.125),
            16,
            {f"layer{i}.0": "projection" for i in range(1, 5)},
        ),
        (lambda: models.DenseNetSmall(in_channels=3), 16, None),  # every dense layer: its concatenation is the skip
    ],
)
def test_the_official_rule_on_the_package_and_torchvision_resnets(make, size, expected):
    torch.manual_seed(0)
    net = make()
    kinds = skip_kinds(net, torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0)))
    if expected is None:
        assert kinds and set(kinds.values()) == {"concat"}
        assert len(kinds) == sum(isinstance(m, models.DenseLayer) for m in net.modules())
    else:
        assert kinds == expected


def test_is_skip_block_agrees_between_models_and_sgm_on_instance_and_class_attributes():
    class Untagged(nn.Module):
        def forward(self, x):
            return x

    instance = Untagged()  # an untagged class, tagged on one instance
    instance.is_skip_block = True
    opted_out = CustomBlock(4, 4)
    opted_out.is_skip_block = False
    for module, expected in (
        (instance, True),
        (opted_out, False),
        (CustomBlock(4, 4), True),
        (Untagged(), False),
        (models.CifarBasicBlock(4, 4), True),
        (resnet18().layer1[0], True),
    ):
        assert models_is_skip_block(module) is expected
        assert sgm_is_skip_block(module) is expected


def test_sgm_attack_ignores_the_projection_block(batch):
    """End to end: an SGM attack on the repro model equals the attack with the projection block opted out."""
    x, y = batch
    model = _custom_resnet(stride=2, projection=True)
    reference = _custom_resnet(stride=2, projection=True)
    reference.net[2].is_skip_block = False
    run = [Attack(m, steps=3, seed=0, transforms=[SkipGradient(0.2)])(x, y) for m in (model, reference)]
    assert torch.equal(run[0], run[1])
    # and SGM does act (on the identity block): the same attack with gamma = 1 differs
    plain = Attack(model, steps=3, seed=0, transforms=[SkipGradient(1.0)])(x, y)
    assert not torch.equal(run[0], plain)
