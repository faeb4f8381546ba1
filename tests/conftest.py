"""Shared test fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = REPO_ROOT / "configs"


@pytest.fixture(autouse=True)
def _deterministic_torch():
    """Every test starts from the same global RNG state (tests are seeded and deterministic)."""
    torch.manual_seed(0)
    yield


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT
