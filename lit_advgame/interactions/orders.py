"""Interaction orders ``m`` (context sizes), given as ratios of ``n`` or as explicit integers.

A ratio ``r`` maps to ``m = int((n - 2) * r)`` exactly as the official code of Ren et al.
(NeurIPS 2021, ``gene_pairs.py``), so ``r = 1`` is the full context ``m = n - 2``. For multi-order
Shapley values (orders ``0 .. n - 1``) the same rule uses ``n - 1``: ``m = int((n - 1) * r)``.

Presets (the lists of the official code and of the paper's supplement, Table 2):

* ``"reference"`` (default): ``0.1, 0.2, ..., 0.8, 0.85, 0.9, 0.95`` -- the 11 orders of the
  paper's supplementary Table 2, i.e. the official code's argparse default without ``r = 1.0``.
* ``"reference_code"``: the official argparse default ``0.1, ..., 0.8, 0.85, 0.9, 0.95, 1.0`` (12 orders).
* ``"readme"``: ``0.1, 0.2, ..., 0.9`` (the official README command, 9 orders).
* ``"with_zero"``: ``0`` followed by ``"reference"`` (m = 0 is not in the official defaults).
* ``"fine"``: ``0, 0.05, 0.10, ..., 0.95`` (20 orders).

A sequence of Python ``int`` is taken as explicit orders; a sequence containing a ``float`` as
ratios in ``[0, 1]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

REFERENCE_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)
ORDER_PRESETS: dict[str, tuple[float, ...]] = {
    "reference": REFERENCE_RATIOS,
    "reference_code": REFERENCE_RATIOS + (1.0,),
    "readme": (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    "with_zero": (0.0,) + REFERENCE_RATIOS,
    "fine": tuple(round(0.05 * k, 2) for k in range(20)),
}

OrderSpec = str | Sequence[float] | Sequence[int]


@dataclass(frozen=True)
class Orders:
    """Resolved orders: ``orders[k]`` is the context size; ``ratios[k]`` the ratio it came from (or None)."""

    orders: tuple[int, ...]
    ratios: tuple[float, ...] | None

    def __len__(self) -> int:
        return len(self.orders)

    @property
    def labels(self) -> tuple[str, ...]:
        """Short unique names for logging: ``r0.10`` for ratios, ``m3`` for explicit orders."""
        raw = [f"r{r:.2f}" for r in self.ratios] if self.ratios is not None else [f"m{m}" for m in self.orders]
        seen: dict[str, int] = {}
        labels = []
        for label in raw:
            count = seen.get(label, 0)
            seen[label] = count + 1
            labels.append(label if count == 0 else f"{label}_{count}")
        return tuple(labels)


def resolve_orders(orders: OrderSpec, num_players: int, *, shapley: bool = False) -> Orders:
    """Resolve a preset name, ratios or explicit orders for a game with ``num_players`` players.

    Interaction orders must lie in ``[0, n - 2]`` (``shapley=False``); multi-order Shapley orders
    in ``[0, n - 1]`` (``shapley=True``).
    """
    max_order = num_players - 1 if shapley else num_players - 2
    kind = "multi-order Shapley" if shapley else "interaction"
    if max_order < 0:
        raise ValueError(f"{kind} orders need at least {2 - shapley} players; the game has {num_players}")
    if isinstance(orders, str):
        if orders not in ORDER_PRESETS:
            raise ValueError(
                f"unknown order preset {orders!r}; choose one of {', '.join(ORDER_PRESETS)} or pass a list"
            )
        orders = ORDER_PRESETS[orders]
    if not isinstance(orders, Sequence) or len(orders) == 0:
        raise ValueError(f"orders must be a preset name or a non-empty list of ratios/ints; got {orders!r}")
    for value in orders:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"orders must contain ints (orders) or floats (ratios of n); got {value!r}")
    if all(isinstance(value, int) for value in orders):
        for m in orders:
            if not 0 <= m <= max_order:
                raise ValueError(
                    f"{kind} order {m} is outside [0, n-{2 - shapley}] = [0, {max_order}] for n = {num_players} players"
                )
        return Orders(tuple(int(m) for m in orders), None)
    ratios = tuple(float(r) for r in orders)
    for r in ratios:
        if not 0.0 <= r <= 1.0:
            raise ValueError(
                f"order ratio {r} is outside [0, 1]: ratios r give m = int({max_order} * r), which must lie in [0, "
                f"{max_order}]"
            )
    return Orders(tuple(int(max_order * r) for r in ratios), ratios)


def utility_weights(orders: Sequence[int], num_players: int) -> list[float]:
    """``w(m) = (n - 1 - m) / (n (n - 1))``: the weight of ``I^(m)_ij`` in ``J^(m)_ij``.

    Ren et al., NeurIPS 2021, Eq. 3."""
    n = num_players
    return [(n - 1 - m) / (n * (n - 1)) for m in orders]
