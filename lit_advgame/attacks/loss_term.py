"""The interface of extra loss terms added to an attack's per-image objective (e.g. the IR term)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class LossTerm:
    """A term added to each image's objective ℓ_i (maximised).

    ``__call__`` returns ``(contribution, logs)``: ``contribution`` is a (B,) tensor,
    differentiable w.r.t. ``delta``, added to the objective; ``logs`` maps names to detached (B,)
    tensors recorded per step in :class:`~lit_advgame.attacks.base.AttackResult`.
    A term with ``replaces_classification_loss = True`` makes the attack drop the classification
    loss (the IR paper's λ = ∞, "interaction only"). A term with ``uses_logits = True`` is called
    with the keyword ``logits``: the source's logits ``(B, classes)`` at the untransformed ``x + δ``
    from the classification loss's forward pass (differentiable, shared so that the term need not
    repeat that forward), or ``None`` when there is none (no classification loss, or input
    transforms such as VR/DI changed the classification loss's input).
    """

    name: str = "term"
    replaces_classification_loss: bool = False
    #: whether an attack with this term starts from δ = 0 when ``random_start`` is left on auto
    prefers_zero_start: bool = False
    #: whether ``__call__`` takes ``logits=`` (the shared forward at x + δ, or ``None``)
    uses_logits: bool = False

    def check_model(self, models: Sequence[nn.Module]) -> None:
        """Validate the source models once, when the attack is built."""

    def start(self, x: torch.Tensor, generator: torch.Generator) -> None:
        """Validate the clean batch and reset per-attack state; ``generator`` is this term's own stream."""

    def __call__(
        self, model: nn.Module, x: torch.Tensor, delta: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError
