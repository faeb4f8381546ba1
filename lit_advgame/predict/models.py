"""Source and target classifiers of transfer attacks: the loader of :mod:`lit_advgame.classifiers`, re-exported.

A model spec is a classifier file written by :func:`export_classifier`, a Lightning ``.ckpt`` of any lit_advgame
training module (ensembles included), a dict ``{"arch": ..., "weights": ...}`` for a registry/torchvision
architecture and a plain, ``NormalizedModel``, Lightning or ``robustness`` weights file, or ``{"path": ..., "name":
..., "member": i}`` (see :mod:`lit_advgame.classifiers`). Every model returned is a pixel-space classifier
(normalization is its first layer), on CPU, in eval mode, with frozen parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from lit_advgame.classifiers import (
    CLASSIFIER_FORMAT,
    CLASSIFIER_FORMAT_VERSION,
    ENSEMBLE_ARCH,
    SPEC_KEYS,
    LoadedModel,
    ModelSpec,
    export_classifier,
    is_classifier_file,
    load_classifier,
    load_classifiers,
    with_members,
)

__all__ = [
    "CLASSIFIER_FORMAT",
    "CLASSIFIER_FORMAT_VERSION",
    "ENSEMBLE_ARCH",
    "SPEC_KEYS",
    "LoadedModel",
    "ModelSpec",
    "describe",
    "export_classifier",
    "is_classifier_file",
    "load_classifier",
    "load_classifiers",
    "margins",
    "with_members",
]


def describe(models: Sequence[LoadedModel]) -> list[dict[str, Any]]:
    """JSON-able descriptions of loaded models (for run metadata)."""
    return [dict(m.spec) for m in models]


def margins(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``max_{k≠y} z_k − z_y`` per row (> 0 ⇔ misclassified); the IR paper's v(Ω) and its Section 3.2 utility."""
    label_logit = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return others.max(dim=1).values - label_logit
