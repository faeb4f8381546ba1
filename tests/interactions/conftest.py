"""Fixtures for the interaction-engine tests (helpers live in ``helpers.py``)."""

from __future__ import annotations

import pytest
import torch

from lit_advgame.models.normalize import NormalizedModel
from tests.interactions.helpers import make_images, make_tiny_cnn


@pytest.fixture
def tiny_cnn() -> NormalizedModel:
    return make_tiny_cnn()


@pytest.fixture
def images() -> torch.Tensor:
    return make_images()


@pytest.fixture
def labels() -> torch.Tensor:
    return torch.tensor([1, 3])
