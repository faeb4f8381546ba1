"""The input-game settings of the multi-order and disentanglement callbacks, defined once (Ren et al., NeurIPS 2021).

Players are the cells of an ``L x L`` grid over the image (``n = L²``); ``v(S) = log p(y | x_S)``
with absent cells set to the dataset mean colour (the reference); ``I^(m)`` is estimated from
``num_pairs`` neighbouring pairs per image and ``num_contexts`` random contexts per pair and order
(:func:`lit_advgame.interactions.sample_pair_deltas`). Everything is checked when the settings are
built (grid, orders, pairs, value, baseline name) or at ``setup`` (grid against the image size,
baseline against the model, the forward-pass budget), never in the middle of training.

A callback takes one :class:`GameSettings` as ``game`` (in YAML a nested mapping)::

    - class_path: lit_advgame.callbacks.DisentanglementCallback
      init_args:
        game: {grid: 8, orders: reference, num_pairs: 4, num_contexts: 8}

Defaults, one value per concept: the package's grid :data:`~lit_advgame.interactions.game.DEFAULT_GRID`
(16; the digits configs use ``grid: 8``, 2x2-pixel cells, n = 64), the paper's 11 orders
(``"reference"``: 0.1n ... 0.95n), 4 neighbour pairs and 8 contexts per pair and order, so one game
costs ``11 * 4 * 8 * 4 + 1 = 1,409`` forward passes per image (the reference: 200 pairs x 100
contexts = 80,000 per order and image), and the package's forward-pass cap
:data:`~lit_advgame.interactions.DEFAULT_MAX_FORWARD_PASSES`. Every estimate is logged with its
standard error, so the noise of a budget is visible; raise ``num_pairs``/``num_contexts``/``probe_size``
for tighter curves.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn
from typing_extensions import override

from lit_advgame.callbacks.base import Metrics, ProbeCallback
from lit_advgame.interactions import (
    BASELINE_NAMES,
    DEFAULT_MAX_FORWARD_PASSES,
    InputGame,
    Orders,
    check_budget,
    grid_player_map,
    make_baseline,
    neighbour_pairs,
    resolve_orders,
)
from lit_advgame.interactions.game import DEFAULT_GRID
from lit_advgame.interactions.players import grid_shape
from lit_advgame.utils.checks import check_choice, check_int
from lit_advgame.utils.tensorboard import Chart, order_bands
from lit_advgame.vocabulary import IMAGE_VALUES, PAIR_KINDS, ImageValue, PairKind

#: value functions usable without extra per-image inputs
GAME_VALUES = IMAGE_VALUES
DEFAULT_ORDERS = "reference"
DEFAULT_NUM_PAIRS = 4
DEFAULT_NUM_CONTEXTS = 8


@dataclass(frozen=True)
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

    grid: int | tuple[int, int] = DEFAULT_GRID
    orders: str | list[int] | list[float] = DEFAULT_ORDERS
    num_pairs: int = DEFAULT_NUM_PAIRS
    num_contexts: int = DEFAULT_NUM_CONTEXTS
    pairs: PairKind = "neighbour"
    value: ImageValue = "log_prob"
    baseline: str | list[float] = "mean"
    max_forward_passes: int = DEFAULT_MAX_FORWARD_PASSES

    def __post_init__(self) -> None:
        rows, cols = grid_shape(self.grid, min_players=2)
        if rows * cols < 2:
            raise ValueError(f"grid must have at least 2 cells (players); got {self.grid!r}")
        object.__setattr__(self, "grid", rows if rows == cols else (rows, cols))
        if isinstance(self.orders, (list, tuple)):
            object.__setattr__(self, "orders", list(self.orders))
        if isinstance(self.baseline, (list, tuple)):
            object.__setattr__(self, "baseline", list(self.baseline))
        # derived (not fields): n, the number of players, and the orders resolved for n players
        object.__setattr__(self, "num_players", rows * cols)
        resolved: Orders = resolve_orders(self.orders, rows * cols)
        object.__setattr__(self, "resolved", resolved)
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

    def describe_plan(self, num_images: int, num_games: int) -> str:
        """What :meth:`planned_forward_passes` counts, e.g. ``"16 probes x 11 orders x 4 pairs x 8 contexts x 2
        game(s)"``."""
        return (
            f"{num_images} probes x {len(self.resolved)} orders x {self.num_pairs} pairs x {self.num_contexts} "
            f"contexts x {num_games} game(s)"
        )

    def check_setup(self, owner: str, model: nn.Module, x: torch.Tensor, num_games: int) -> None:
        """Check the grid fits the probe images, the baseline suits the model and the budget holds."""
        _, _, height, width = x.shape
        try:
            grid_player_map(height, width, self.grid)
            make_baseline(self.baseline, x[:1], model)
            check_budget(
                self.planned_forward_passes(x.shape[0], num_games),
                self.max_forward_passes,
                f"{owner} ({self.describe_plan(x.shape[0], num_games)})",
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


#: the default game settings (frozen, so callbacks can share it)
DEFAULT_GAME = GameSettings()

Settings = TypeVar("Settings")


def settings_argument(
    cls: type[Settings], given: Settings | Mapping[str, Any], kwargs: dict[str, Any], owner: str, keyword: str
) -> Settings:
    """A callback's settings object (``GameSettings``, ``PerturbationInteraction``): ``given`` itself or a
    mapping of its fields, changed by the deprecated flat keyword arguments of those fields (popped from ``kwargs``)."""
    names = [field.name for field in dataclasses.fields(cls)]
    legacy = {name: kwargs.pop(name) for name in names if name in kwargs}
    if isinstance(given, Mapping):
        unknown = sorted(set(given) - set(names))
        if unknown:
            raise ValueError(f"{owner}: unknown {keyword} option(s) {unknown}; allowed: {', '.join(names)}")
        given = cls(**given)
    elif not isinstance(given, cls):
        raise TypeError(f"{owner}: {keyword} must be a {cls.__name__} or a mapping of its fields; got {given!r}")
    if legacy:
        warnings.warn(
            f"{owner}({', '.join(f'{name}=...' for name in legacy)}) is deprecated; give them inside "
            f"{keyword}={{...}} ({cls.__name__}; in YAML a nested mapping under {keyword}:)",
            DeprecationWarning,
            stacklevel=3,
        )
        given = dataclasses.replace(given, **legacy)
    return given


class GameCallback(ProbeCallback):
    """A probe callback that estimates interactions of input games: the :class:`GameSettings` part, defined once.

    Args:
        game: the game and estimator settings, a :class:`GameSettings` (in YAML a mapping such as
            ``{grid: 8, orders: reference, num_pairs: 4, num_contexts: 8}``); the flat keywords of its
            fields (``grid=``, ``orders=``, ...) are deprecated aliases.
        **kwargs: the probe settings of :class:`~lit_advgame.callbacks.base.ProbeCallback` (``log_figure``: also
            log the figures of the curves, ...).

    Subclasses set :attr:`num_games`, the games each estimate evaluates (for the forward-pass budget).
    """

    #: input games per estimate (clean and adversarial: 2)
    num_games: int = 1

    def __init__(self, *, game: GameSettings = DEFAULT_GAME, **kwargs: Any) -> None:
        game = settings_argument(GameSettings, game, kwargs, self.name, "game")
        super().__init__(**kwargs)
        #: the :class:`GameSettings` given as ``game``
        self.settings = game

    def result_metrics(self, result: Any) -> Metrics:
        """The metrics of an estimator's result (``result.to_dict(prefix)``: per order value and ``_stderr``), its
        masked forward passes as the cost counter ``zz_cost/<prefix>/masked_forward_passes``."""
        metrics = result.to_dict(self.prefix)
        metrics[self.cost_tag("masked_forward_passes")] = metrics.pop(self.tag("num_forward_passes"))
        return metrics

    def margin_charts(self, *parts: str) -> list[Chart]:
        """Margin charts (value ± 1 SE) of the per-order estimates ``<prefix>/<parts>/<order>``, one per band of
        orders (:func:`~lit_advgame.utils.tensorboard.order_bands`)."""
        orders = self.settings.resolved
        bands = order_bands(orders.labels, orders.orders, self.settings.num_players)
        return [Chart(name, tuple(self.tag(*parts, label) for label in labels), margin=True) for name, labels in bands]

    @override
    def check_setup(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        self.settings.check_setup(self.name, model, x, num_games=self.num_games)

    @override
    def planned_forward_passes(self, model: nn.Module, x: torch.Tensor) -> tuple[int, str]:
        """The masked forward passes of the estimate (:meth:`GameSettings.planned_forward_passes`; fewer when some
        probes are left out), per network of an ensemble, plus the probe attack's, if any (described)."""
        networks = self.networks(model)
        passes = self.settings.planned_forward_passes(x.shape[0], self.num_games) * networks
        detail = "at most; masked: " + self.settings.describe_plan(x.shape[0], self.num_games)
        if networks > 1:
            detail += f" x {networks} networks"
        attack = getattr(self, "attack", None)
        return passes, detail + (f"; plus {attack.describe()}" if attack is not None else "")
