"""Shared test fixtures."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = REPO_ROOT / "configs"
#: command-line options of the DDP tests: 2 CPU processes (gloo); deterministic algorithms off for DDP on CPU
DDP_CPU_ARGS = [
    "--trainer.accelerator",
    "cpu",
    "--trainer.devices",
    "2",
    "--trainer.strategy",
    "ddp",
    "--trainer.deterministic",
    "false",
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``cuda`` need a CUDA device: skipped without one (``pytest -m cuda`` selects them)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _deterministic_torch():
    """Every test starts from the same global RNG state (tests are seeded and deterministic)."""
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True, scope="session")
def _no_downloads():
    """Tests never download (pretrained torchvision weights): LIT_ADVGAME_ALLOW_DOWNLOAD=0 for in-process and
    subprocess runs alike, over the command line's default (allowed)."""
    saved = os.environ.get("LIT_ADVGAME_ALLOW_DOWNLOAD")
    os.environ["LIT_ADVGAME_ALLOW_DOWNLOAD"] = "0"
    yield
    if saved is None:
        os.environ.pop("LIT_ADVGAME_ALLOW_DOWNLOAD", None)
    else:
        os.environ["LIT_ADVGAME_ALLOW_DOWNLOAD"] = saved


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's intra-op CPU threads set to ``count`` inside the block, restored after it."""
    saved = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread for a test: small models run faster, and do not stall on a busy 2-core machine."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def one_thread_module() -> Iterator[None]:
    """:func:`one_thread` for a whole module (its module-scoped fixtures included)."""
    with torch_threads(1):
        yield


def predict_into(module, data, writer, *, callbacks=(), progress_bar: bool = False):
    """One ``trainer.predict`` of ``module`` on ``data`` on the CPU, gradients on (attacks), no logger, with the
    prediction ``writer`` (an ``AdversarialWriter``); returns the writer."""
    import pytorch_lightning as pl  # not at import time: importing Lightning early changes how caplog sees its logs

    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        inference_mode=False,
        logger=False,
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
        callbacks=[writer, *callbacks],
    )
    trainer.predict(module, datamodule=data, return_predictions=False)
    return writer
