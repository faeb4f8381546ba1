"""TRADES' inner attack pieces (Zhang et al., ICML 2019; ``yaodongyu/TRADES`` ``trades.py``).

* :class:`TradesKL`: the inner objective KL(f(x) ‖ f(x + δ)), a :class:`~lit_advgame.attacks.LossTerm` that
  replaces the attack's classification loss (the inner maximisation of TRADES Eq. 5).
* :class:`GaussianStart`: a norm whose random start is the reference's x + 0.001·N(0, I).
* :func:`kl_per_example`: KL(p ‖ q) per row, the outer regularizer of TRADES Eq. 5.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from typing_extensions import override

from lit_advgame.attacks.loss_term import LossTerm
from lit_advgame.attacks.norms import Norm

#: standard deviation of TRADES' random start x + 0.001·N(0, I) (``trades.py``)
TRADES_START_STD = 1e-3


def kl_per_example(clean_logits: torch.Tensor, adv_logits: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) per row, p = softmax(clean_logits), q = softmax(adv_logits), in nats (TRADES Eq. 5's regularizer)."""
    return F.kl_div(
        F.log_softmax(adv_logits, dim=1), F.log_softmax(clean_logits, dim=1), reduction="none", log_target=True
    ).sum(dim=1)


class TradesKL(LossTerm):
    """TRADES' inner objective KL(f(x) ‖ f(x + δ)) per image (Zhang et al. 2019, Eq. 5); replaces the attack's CE.

    f(x) is computed once per attack (no gradient), in the mode the attack runs in; the reference
    recomputes it every step, which gives the same values because the model is in eval mode.
    """

    name = "kl"
    replaces_classification_loss = True
    prefers_zero_start = False

    def __init__(self) -> None:
        self._clean_logits: torch.Tensor | None = None

    @override
    def start(self, x: torch.Tensor, generator: torch.Generator) -> None:
        self._clean_logits = None

    @override
    def __call__(self, model: nn.Module, x: torch.Tensor, delta: torch.Tensor, y: torch.Tensor):
        if self._clean_logits is None:
            with torch.no_grad():
                self._clean_logits = model(x)
        kl = kl_per_example(self._clean_logits, model(x + delta))
        return kl, {"kl": kl.detach()}


class GaussianStart(Norm):
    """A norm whose random start is σ·N(0, I) (TRADES' ``trades.py``), projected into the ε-ball and image box."""

    def __init__(self, base: Norm, std: float = TRADES_START_STD) -> None:
        self.base = base
        self.std = float(std)
        self.name = base.name

    @override
    def random_init(self, x: torch.Tensor, eps: float, generator: torch.Generator) -> torch.Tensor:
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return self.base.project(self.std * noise, x, eps)

    @override
    def step(self, delta: torch.Tensor, direction: torch.Tensor, step_size: float) -> torch.Tensor:
        return self.base.step(delta, direction, step_size)

    @override
    def project(self, delta: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
        return self.base.project(delta, x, eps)

    @override
    def norms(self, delta: torch.Tensor) -> torch.Tensor:
        return self.base.norms(delta)
