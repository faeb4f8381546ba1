"""Tiny models and fixtures for the attack tests (CPU, 12×12 images, a few steps)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lit_advgame.models.normalize import NormalizedModel
from tests.attacks.tiny_models import NUM_CLASSES, SIZE, make_cnn, make_skip_resnet, make_tv_densenet, make_tv_resnet
from tests.conftest import torch_threads


@pytest.fixture(autouse=True)
def single_thread(one_thread):
    """Tiny tensors: one intra-op thread avoids thread-pool overhead (and stalls on a busy machine)."""
    yield


@pytest.fixture
def cnn() -> nn.Module:
    return make_cnn()


@pytest.fixture
def skip_resnet() -> nn.Module:
    return make_skip_resnet()


@pytest.fixture
def tv_resnet() -> nn.Module:
    return make_tv_resnet()


@pytest.fixture
def tv_densenet() -> nn.Module:
    return make_tv_densenet()


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    x = torch.rand(4, 3, SIZE, SIZE, generator=g)
    x[0, :, :3, :3] = 0.0  # some pixels on the box boundary
    x[1, :, -3:, -3:] = 1.0
    y = torch.randint(0, NUM_CLASSES, (4,), generator=g)
    return x, y


@pytest.fixture
def engine():
    """The interaction engine the IR term calls (agreed contract of lit_advgame.interactions)."""
    from lit_advgame.interactions import perturbation_interaction

    return perturbation_interaction


# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def digits_model() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A small MLP trained for a few seconds on sklearn's 8×8 digits; returns (model, x_test, y_test)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.as_tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.as_tensor(data.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, test = perm[:1500], perm[1500:]
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    model = NormalizedModel(net, [0.3], [0.4])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with torch_threads(1):  # a session fixture: it runs before the autouse single_thread
        for _ in range(100):
            opt.zero_grad()
            F.cross_entropy(model(x[train]), y[train]).backward()
            opt.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        accuracy = (model(x[test]).argmax(1) == y[test]).float().mean().item()
    assert accuracy > 0.9, f"digits model trained badly: {accuracy:.3f}"
    return model, x[test], y[test]
