"""The input-game settings shared by the multi-order and disentanglement callbacks (Ren et al., NeurIPS 2021).

Players are the cells of an ``L x L`` grid over the image (``n = L²``); ``v(S) = log p(y | x_S)``
with absent cells set to the dataset mean colour (the reference); ``I^(m)`` is estimated from
``num_pairs`` neighbouring pairs per image and ``num_contexts`` random contexts per pair and order
(:func:`lit_advgame.interactions.sample_pair_deltas`). Everything is checked when the callback is
built (orders, pairs, value, baseline name) or at ``setup`` (grid against the image size,
baseline against the model, the forward-pass budget), never in the middle of training.

Digits defaults (16x16 images): ``grid=8`` (2x2-pixel cells, n = 64), the paper's 11 orders
(``"reference"``: 0.1n ... 0.95n), 4 neighbour pairs and 8 contexts per pair and order, so one
game costs ``11 * 4 * 8 * 4 + 1 = 1,409`` forward passes per image (the reference: 200 pairs x
100 contexts = 80,000 per order and image). Every estimate is logged with its standard error, so
the noise of a budget is visible; raise ``num_pairs``/``num_contexts``/``probe_size`` for
tighter curves.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lit_advgame.interactions import (
    BASELINE_NAMES,
    VALUE_NAMES,
    InputGame,
    Orders,
    check_budget,
    grid_player_map,
    make_baseline,
    neighbour_pairs,
    resolve_orders,
)
from lit_advgame.utils.checks import check_choice, check_int

PAIR_KINDS = ("neighbour", "uniform")
#: value functions usable without extra per-image inputs
GAME_VALUES = tuple(v for v in VALUE_NAMES if v != "target_minus_true")
DEFAULT_GRID = 8
DEFAULT_ORDERS = "reference"
DEFAULT_NUM_PAIRS = 4
DEFAULT_NUM_CONTEXTS = 8
#: default cap on the masked forward passes of one callback run (refused at setup when exceeded)
DEFAULT_MAX_FORWARD_PASSES = 2_000_000


def grid_shape(grid: Any) -> tuple[int, int]:
    """``(L_h, L_w)`` of a grid given as ``L`` or ``[L_h, L_w]`` (clear error otherwise)."""
    if isinstance(grid, bool):
        raise TypeError(f"grid must be an int L (an L x L grid) or a pair [L_h, L_w]; got {grid!r}")
    if isinstance(grid, int):
        rows = cols = grid
    elif isinstance(grid, Sequence) and not isinstance(grid, str) and len(grid) == 2:
        rows, cols = grid
    else:
        raise TypeError(f"grid must be an int L (an L x L grid) or a pair [L_h, L_w]; got {grid!r}")
    check_int(rows, "grid", minimum=1)
    check_int(cols, "grid", minimum=1)
    if rows * cols < 2:
        raise ValueError(f"grid must have at least 2 cells (players); got {grid!r}")
    return int(rows), int(cols)


@dataclass
class GameSettings:
    """Players, orders, pair/context budget, value and baseline of the interaction estimates.

    Args:
        grid: ``L`` (an ``L x L`` grid of players) or ``[L_h, L_w]``.
        orders: a preset of :data:`lit_advgame.interactions.ORDER_PRESETS`, ratios of n (floats) or
            explicit orders (ints in ``[0, n - 2]``).
        num_pairs: pairs per image.
        num_contexts: contexts per pair and order.
        pairs: ``"neighbour"`` (the reference: adjacent cells) or ``"uniform"``.
        value: ``"log_prob"`` (the reference), ``"logit"``, ``"margin_max"`` or ``"margin_fixed"``.
        baseline: ``"mean"`` (the reference), ``"zeros"``, ``"blur"`` or a per-channel list.
        max_forward_passes: refuse (at setup) a run planned to need more masked forward passes.
    """

    grid: Any = DEFAULT_GRID
    orders: Any = DEFAULT_ORDERS
    num_pairs: int = DEFAULT_NUM_PAIRS
    num_contexts: int = DEFAULT_NUM_CONTEXTS
    pairs: str = "neighbour"
    value: str = "log_prob"
    baseline: Any = "mean"
    max_forward_passes: int = DEFAULT_MAX_FORWARD_PASSES

    def __post_init__(self) -> None:
        rows, cols = grid_shape(self.grid)
        self.grid = rows if rows == cols else (rows, cols)
        self.num_players = rows * cols
        if isinstance(self.orders, (list, tuple)):
            self.orders = list(self.orders)
        self.resolved: Orders = resolve_orders(self.orders, self.num_players)
        check_choice(self.pairs, "pairs", PAIR_KINDS)
        check_int(self.num_pairs, "num_pairs", minimum=1)
        available = self._available_pairs(rows, cols)
        if self.num_pairs > available:
            raise ValueError(
                f"num_pairs={self.num_pairs} exceeds the {available} {self.pairs} pairs of a {rows}x{cols} grid; "
                "lower num_pairs or use a finer grid"
            )
        check_int(self.num_contexts, "num_contexts", minimum=1)
        check_choice(self.value, "value", GAME_VALUES)
        if isinstance(self.baseline, str):
            check_choice(self.baseline, "baseline", BASELINE_NAMES)
        check_int(self.max_forward_passes, "max_forward_passes", minimum=1)

    def _available_pairs(self, rows: int, cols: int) -> int:
        n = rows * cols
        if self.pairs == "uniform":
            return n * (n - 1) // 2
        return int(neighbour_pairs(grid_player_map(rows, cols, (rows, cols)), n).shape[0])

    # ------------------------------------------------------------------------------------------
    def planned_forward_passes(self, num_images: int, num_games: int) -> int:
        """Masked forward passes of one estimate on ``num_images`` images and ``num_games`` paired games."""
        per_image = len(self.resolved) * self.num_pairs * self.num_contexts * 4 + 1
        return num_games * num_images * per_image

    def check_setup(self, owner: str, model: nn.Module, x: torch.Tensor, num_games: int) -> None:
        """Check the grid fits the probe images, the baseline suits the model and the budget holds."""
        _, _, height, width = x.shape
        try:
            grid_player_map(height, width, self.grid)
            make_baseline(self.baseline, x[:1], model)
            check_budget(
                self.planned_forward_passes(x.shape[0], num_games),
                self.max_forward_passes,
                f"{owner} ({x.shape[0]} probes x {len(self.resolved)} orders x {self.num_pairs} pairs x "
                f"{self.num_contexts} contexts x {num_games} game(s))",
            )
        except (TypeError, ValueError) as err:
            raise ValueError(f"{owner}: {err}") from err

    def game(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> InputGame:
        """The input game on images ``x`` with true classes ``y``."""
        return InputGame(model, x, y, grid=self.grid, value=self.value, baseline=self.baseline, batch_size=batch_size)

    def estimator_kwargs(self, seed: int) -> dict[str, Any]:
        """Keyword arguments of the pair estimators (a fresh generator seeded with ``seed``)."""
        return {
            "orders": self.orders,
            "num_pairs": self.num_pairs,
            "num_contexts": self.num_contexts,
            "pairs": self.pairs,
            "generator": torch.Generator().manual_seed(seed),
            "max_forward_passes": self.max_forward_passes,
        }
