"""An ensemble of pixel-space classifiers whose output averages the members' probabilities.

The TRS and DVERGE repositories (``models/ensemble.py`` of both) define the
ensemble output as ``log(mean_i softmax(f_i(x)))``: argmax of it is the ensemble's prediction, and
cross-entropy on it is the negative log-likelihood of the averaged probabilities, so every
white-box attack on the ensemble targets this output. We compute it exactly and stably as
``logsumexp_i log_softmax(f_i(x)) − log N`` (the reference clamps the mean at 1e-40 before the
log; the two agree wherever the reference does not clamp).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from typing_extensions import override

from lit_advgame.models import build_model
from lit_advgame.utils.checks import check_int


def combine_member_logits(member_logits: torch.Tensor) -> torch.Tensor:
    """Log of the mean of the members' softmax probabilities.

    Args:
        member_logits: (N, B, K) logits of N members.

    Returns:
        (B, K) log-probabilities ``log((1/N) Σ_i softmax(z_i))`` (rows sum to 1 after ``exp``).
    """
    if member_logits.dim() != 3 or member_logits.shape[0] == 0:
        raise ValueError(f"member_logits must have shape (N >= 1, B, K); got {tuple(member_logits.shape)}")
    log_probs = torch.log_softmax(member_logits, dim=-1)
    return torch.logsumexp(log_probs, dim=0) - math.log(member_logits.shape[0])


def module_list(modules: nn.ModuleList | Sequence[nn.Module], name: str, empty: str) -> list[nn.Module]:
    """``modules`` as a list of ``nn.Module`` objects; errors name ``name[i]`` (``empty``: the error for none)."""
    if isinstance(modules, nn.Module) and not isinstance(modules, nn.ModuleList):
        raise TypeError(f"{name} must be an nn.ModuleList or a list of modules, not a single module")
    modules = list(modules)
    if not modules:
        raise ValueError(empty)
    for i, module in enumerate(modules):
        if not isinstance(module, nn.Module):
            raise TypeError(f"{name}[{i}] must be a torch.nn.Module; got {type(module).__name__}")
    return modules


class EnsembleModel(nn.Module):
    """N classifiers taking the same pixel-space input, combined by averaging probabilities.

    ``forward(x)`` returns the (B, K) log of the mean member probability
    (:func:`combine_member_logits`), so ``argmax`` and ``F.cross_entropy`` on it are the
    ensemble's prediction and negative log-likelihood. :meth:`member_logits` gives the members'
    raw logits stacked as (N, B, K).

    Args:
        members: the member classifiers (e.g. :class:`~lit_advgame.models.NormalizedModel`), at least one.
    """

    def __init__(self, members: nn.ModuleList | Sequence[nn.Module]) -> None:
        super().__init__()
        members = module_list(members, "members", "an ensemble needs at least one member; got an empty list")
        self.members = nn.ModuleList(members)

    @property
    def num_members(self) -> int:
        return len(self.members)

    def member_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, B, K) logits of every member on ``x``."""
        logits = [member(x) for member in self.members]
        shapes = {tuple(z.shape) for z in logits}
        if len(shapes) != 1:
            raise ValueError(f"ensemble members return logits of different shapes: {sorted(shapes)}")
        return torch.stack(logits, dim=0)

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return combine_member_logits(self.member_logits(x))


def build_ensemble_model(
    num_members: int,
    archs: str | Sequence[str],
    num_classes: int,
    input_shape: Sequence[int],
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    arch_kwargs: dict[str, Any] | None = None,
) -> EnsembleModel:
    """Build ``num_members`` registry models (each a ``NormalizedModel``) as an :class:`EnsembleModel`.

    Args:
        num_members: number of members N >= 1.
        archs: one registry name (repeated N times) or a list of N names.
        num_classes, input_shape, mean, std: as for :func:`lit_advgame.models.build_model`.
        arch_kwargs: architecture options shared by every member.

    Members are built one after the other from torch's global RNG, so they start from different
    random initialisations (seed it for reproducibility).
    """
    check_int(num_members, "num_members", minimum=1)
    names = [archs] * num_members if isinstance(archs, str) else list(archs)
    if len(names) != num_members:
        raise ValueError(f"archs lists {len(names)} architectures but num_members={num_members}")
    c, h, w = (int(s) for s in input_shape)
    members = [
        build_model(
            name, num_classes=num_classes, in_channels=c, input_size=(h, w), mean=mean, std=std, **(arch_kwargs or {})
        )
        for name in names
    ]
    return EnsembleModel(members)
