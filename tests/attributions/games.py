"""Tiny models whose target-minus-true logit is a known polynomial of the players' perturbation fractions."""

from __future__ import annotations

import torch
from torch import nn

from lit_advgame.attributions import superpixel_game
from lit_advgame.interactions.players import grid_player_map

LEVEL = 0.5  # δ on every pixel of the zero image, so a player's fraction w_i = mean(cell) / LEVEL


class PolynomialModel(nn.Module):
    """Logits ``[Σ_T d_T Π_{i∈T} w_i, Σ_T c_T Π_{i∈T} w_i]`` (``true_terms`` d, ``terms`` c): class 0 is the true
    class, class 1 the target; ``w_i`` = the mean of player ``i``'s pixels / ``LEVEL`` (the fraction of its
    perturbation present on the zero image). A repeated player in ``T`` gives a power (not multilinear)."""

    def __init__(self, side: int, grid: int, terms: dict[tuple[int, ...], float], true_terms=None):
        super().__init__()
        pmap = grid_player_map(side, side, grid).flatten()
        onehot = torch.nn.functional.one_hot(pmap, grid * grid).double()
        self.register_buffer("pool", (onehot / onehot.sum(0)).T.contiguous())  # (n, H*W)
        self.terms = [[(list(t), c) for t, c in part.items()] for part in (true_terms or {}, terms)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = x.double().mean(dim=1).flatten(1) @ self.pool.T / LEVEL  # (B, n)
        logits = [sum((c * w[:, t].prod(dim=1) for t, c in part), torch.zeros_like(w[:, 0])) for part in self.terms]
        return torch.stack(logits, dim=1).to(x.dtype)


def polynomial_game(terms, grid: int = 2, superpixel: int = 2, *, true_terms=None, batch_size: int = 256):
    """The perturbation-pixel game of :class:`PolynomialModel` on a ``grid x grid`` player grid (float64):
    ``z = target − true logit``."""
    side = grid * superpixel
    model = PolynomialModel(side, grid, terms, true_terms).double()
    x = torch.zeros(1, 1, side, side, dtype=torch.float64)
    delta = torch.full_like(x, LEVEL)
    labels, targets = torch.tensor([0]), torch.tensor([1])
    return superpixel_game(model, x, delta, labels, targets, superpixel=superpixel, batch_size=batch_size)
