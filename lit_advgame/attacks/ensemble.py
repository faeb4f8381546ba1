"""Ensembles of source models: the mean of their logits (Liu et al. 2017; the IR paper's Table 2
ensemble RN-34 + RN-152 + DN-121, ``imagenet_ensemble.py`` of the official code)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lit_advgame.utils.checks import check_module


class EnsembleLogits(nn.Module):
    """Average the logits of several classifiers that take the same pixel-space input."""

    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(models) == 0:
            raise ValueError("an ensemble needs at least one source model; got an empty list")
        self.members = nn.ModuleList(models)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = [member(x) for member in self.members]
        shapes = {tuple(z.shape) for z in logits}
        if len(shapes) != 1:
            raise ValueError(f"ensemble members return logits of different shapes: {sorted(shapes)}")
        return torch.stack(logits, dim=0).mean(dim=0)


def as_model_list(model: nn.Module | Sequence[nn.Module]) -> list[nn.Module]:
    """Normalise ``model`` (one module or a list of modules) to a non-empty list, with clear errors.

    A plain function (or any other non-module) gets a ``TypeError`` saying an ``nn.Module`` is expected.
    """
    if callable(model) and not isinstance(model, nn.Module):
        check_module(model, "model")
    models = [model] if isinstance(model, nn.Module) else model
    if not isinstance(models, (list, tuple)) or len(models) == 0:
        raise TypeError(f"model must be a torch.nn.Module or a non-empty list of modules; got {type(model).__name__}")
    for i, m in enumerate(models):
        check_module(m, f"model[{i}]")
    return list(models)


def combine(models: Sequence[nn.Module]) -> nn.Module:
    """One module whose output is the logits to attack: the model itself, or the mean-logit ensemble."""
    return models[0] if len(models) == 1 else EnsembleLogits(models)
