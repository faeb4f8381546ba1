"""Tiny models, images and synthetic games for the interaction-engine tests, plus brute-force references."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from math import comb, factorial

import numpy as np
import torch
from torch import nn

from lit_advgame.interactions import InputGame, grid_player_map
from lit_advgame.models.normalize import NormalizedModel


def make_tiny_cnn(in_channels: int = 1, num_classes: int = 5, seed: int = 0, smooth: bool = False) -> NormalizedModel:
    """A float64 conv net with BatchNorm and Dropout (so train/eval mode matters), normalization first."""
    torch.manual_seed(seed)
    act = nn.Softplus() if smooth else nn.ReLU()
    net = nn.Sequential(
        nn.Conv2d(in_channels, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        act,
        nn.Conv2d(6, 6, 3, padding=1),
        nn.Tanh(),
        nn.Dropout(0.5),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(24, num_classes),
    )
    bn = net[1]
    bn.running_mean.uniform_(-0.2, 0.2)
    bn.running_var.uniform_(0.5, 1.5)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(2.0)
    mean = [0.4] * in_channels
    std = [0.3] * in_channels
    return NormalizedModel(net, mean, std).double().eval()


def make_images(batch: int = 2, channels: int = 1, height: int = 9, width: int = 9, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, channels, height, width, generator=generator, dtype=torch.float64)


class CoalitionGameModel(nn.Module):
    """A 'classifier' whose logit 0 is ``fn(S)``: it reads the coalition back from the masked image.

    Use it with an all-ones image and ``baseline="zeros"``: present cells are 1, absent cells 0,
    so the value ``"logit"`` of class 0 is exactly ``fn(S)``. Lets the engine-based estimators run
    on synthetic games with known interactions.
    """

    def __init__(self, player_map: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        n = int(player_map.max()) + 1
        onehot = torch.nn.functional.one_hot(player_map.flatten(), n).double()
        self.register_buffer("onehot", onehot / onehot.sum(dim=0, keepdim=True))
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cells = x.flatten(1).double() @ self.onehot
        coalitions = cells > 0.5
        values = self.fn(coalitions).to(torch.float64)
        return torch.stack([values, torch.zeros_like(values)], dim=1)


def synthetic_input_game(
    fn: Callable[[torch.Tensor], torch.Tensor], grid: int = 3, size: int = 9, **kwargs
) -> InputGame:
    """An :class:`InputGame` whose value is exactly ``fn(S)`` (one image)."""
    player_map = grid_player_map(size, size, grid)
    model = CoalitionGameModel(player_map, fn)
    x = torch.ones(1, 1, size, size, dtype=torch.float64)
    return InputGame(model, x, torch.tensor([0]), grid=grid, baseline="zeros", value="logit", **kwargs)


# ----------------------------------------------------------------------------- brute force (numpy/itertools)
def table_lookup(values: np.ndarray, subset: tuple[int, ...] | set[int]) -> float:
    return float(values[sum(1 << i for i in subset)])


def brute_force_indices(values: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """Shapley, SII, BII, I^(m), phi^(m) from their definitions by looping over subsets."""
    players = range(n)
    shapley = np.zeros(n)
    phi_m = np.zeros((n, n))
    for i in players:
        others = [p for p in players if p != i]
        for size in range(n):
            subsets = list(itertools.combinations(others, size))
            total = sum(table_lookup(values, set(s) | {i}) - table_lookup(values, s) for s in subsets)
            phi_m[size, i] = total / len(subsets)
            shapley[i] += total * factorial(size) * factorial(n - size - 1) / factorial(n)
    sii = np.zeros((n, n))
    bii = np.zeros((n, n))
    order = np.zeros((n - 1, n, n))
    for i, j in itertools.combinations(players, 2):
        others = [p for p in players if p not in (i, j)]
        for size in range(n - 1):
            subsets = list(itertools.combinations(others, size))
            deltas = [
                table_lookup(values, set(s) | {i, j})
                - table_lookup(values, set(s) | {i})
                - table_lookup(values, set(s) | {j})
                + table_lookup(values, s)
                for s in subsets
            ]
            order[size, i, j] = order[size, j, i] = np.mean(deltas)
            weight = factorial(size) * factorial(n - size - 2) / factorial(n - 1)
            sii[i, j] += weight * sum(deltas)
            bii[i, j] += sum(deltas) / 2 ** (n - 2)
        sii[j, i] = sii[i, j]
        bii[j, i] = bii[i, j]
    assert all(comb(n - 2, m) > 0 for m in range(n - 1))
    return {"shapley": shapley, "phi_m": phi_m, "sii": sii, "bii": bii, "order": order}
