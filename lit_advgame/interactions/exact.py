"""Exact oracle: every index from the full value table of a small game (n <= 16 players).

All ``2^n`` coalitions are evaluated (through the masked-evaluation engine for a
:class:`~lit_advgame.interactions.game.MaskedGame`), and every index is then computed from the
value table with vectorised float64 tensor algebra. Coalition ``S`` has table index
``sum_{i in S} 2^i`` (bit ``i`` = player ``i``).

Definitions (Ren et al., NeurIPS 2021, Eq. 1-4 and supplement B; Wang et al., ICLR 2021, Eq. 4):

* ``Δv_ij(S) = v(S ∪ {i,j}) - v(S ∪ {i}) - v(S ∪ {j}) + v(S)``, ``S ⊆ N \\ {i,j}``.
* ``I^(m)_ij = E_{|S| = m} Δv_ij(S)`` for ``m = 0 .. n-2`` (multi-order interaction).
* Shapley interaction index ``SII_ij = Σ_S |S|!(n-|S|-2)!/(n-1)! Δv_ij(S)`` (computed directly
  with these weights; it equals the plain mean over orders ``(1/(n-1)) Σ_m I^(m)_ij``).
* Banzhaf interaction ``BII_ij = 2^{-(n-2)} Σ_S Δv_ij(S)``.
* ``φ^(m)_i = E_{S ⊆ N\\{i}, |S| = m} [v(S ∪ {i}) - v(S)]`` for ``m = 0 .. n-1`` and the Shapley value
  ``φ_i = Σ_S |S|!(n-|S|-1)!/n! [v(S ∪ {i}) - v(S)]`` (computed directly; equals ``(1/n) Σ_m φ^(m)_i``).
* ``J^(m) = Σ_{i != j} (n-1-m)/(n(n-1)) I^(m)_ij``: the **sum over ordered pairs** (each unordered
  pair counts twice), so that ``v(N) - v(∅) = Σ_i [v({i}) - v(∅)] + Σ_m J^(m)`` (efficiency,
  Eq. 3 / supplement B.1 (5)): :attr:`ExactInteractions.utility_sum`. The reference plot
  (``plot.py --type 2``) and the sampled :attr:`InteractionChangeResult.utility` report the
  per-pair mean times the weight, ``w(m) · mean_{i<j} I^(m)_ij = J^(m) / (n(n-1))``:
  :attr:`ExactInteractions.utility_per_pair`.
* ``D^(m)`` (Eq. 4): ratio of means ``mean_{i<j} |I^(m)_ij| / mean_{i<j} E_S |Δv_ij(S)|`` as the
  reference code (per image, and pooled over images), and the per-pair form
  ``mean_{i<j} |I^(m)_ij| / E_S |Δv_ij(S)|``. Pairs whose ``E_S |Δv_ij(S)|`` is rounding noise
  (:func:`~lit_advgame.interactions.stats.rounding_floor` of the image's largest ``|v|``) are
  skipped in both (counted in :attr:`ExactInteractions.num_skipped_pairs`); NaN when all are.

Means over pairs here run over **all** pairs (``all_pairs_interaction``); the sampled estimators
default to neighbour pairs, so compare a sampled result with ``exact.mean_over_pairs(result.pairs)``.
* IR paper Eq. 4 / Appendix F: ``mean_{i<j} SII_ij = 1/(n-1) · mean_i [v(N) - v(N\\{i}) - v({i}) + v(∅)]``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from math import comb, factorial

import torch

from lit_advgame.interactions.budget import DEFAULT_MAX_FORWARD_PASSES, check_budget
from lit_advgame.interactions.game import MaskedGame
from lit_advgame.interactions.options import deprecated_alias
from lit_advgame.interactions.results import ResultMixin
from lit_advgame.interactions.stats import ROUNDING_ULPS, rounding_floor

MAX_EXACT_PLAYERS = 16


def all_coalitions(num_players: int, device: torch.device | str | None = None) -> torch.Tensor:
    """All ``2^n`` coalitions as a ``(2^n, n)`` boolean matrix.

    Row ``k`` has player ``i`` iff bit ``i`` of ``k`` is set."""
    index = torch.arange(1 << num_players, device=device)
    return ((index.unsqueeze(1) >> torch.arange(num_players, device=device)) & 1).bool()


def _popcount(values: torch.Tensor, bits: int) -> torch.Tensor:
    count = torch.zeros_like(values)
    for bit in range(bits):
        count += (values >> bit) & 1
    return count


def _insert_zero_bit(values: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """Insert a 0 bit at ``position`` (broadcast) into ``values``: bits at and above it move up one."""
    low = values & ((1 << position) - 1)
    return low | ((values >> position) << (position + 1))


def _size_onehot(sizes: torch.Tensor, num_sizes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(sizes, num_sizes).to(torch.float64)


@dataclass
class ExactInteractions(ResultMixin):
    """Exact indices of ``B`` games with ``n`` players (all float64 tensors with a leading ``B``).

    Every field is per image (leading ``B``): the oracle has no sampling, hence no ``stderr``.

    Attributes:
        num_players: n.
        value_table: ``(B, 2^n)`` value table (``values`` is its deprecated old name).
        shapley: ``(B, n)`` Shapley values.
        multi_order_shapley: ``(B, n, n)``; ``[:, m, i]`` = ``φ^(m)_i`` for ``m = 0 .. n-1``.
        shapley_interaction: ``(B, n, n)`` symmetric SII, zero diagonal.
        banzhaf_interaction: ``(B, n, n)`` symmetric BII, zero diagonal.
        multi_order: ``(B, n-1, n, n)``; ``[:, m, i, j]`` = ``I^(m)_ij`` (symmetric, zero diagonal).
        multi_order_abs: ``(B, n-1, n, n)``; ``E_{|S|=m} |Δv_ij(S)|``.
        all_pairs_interaction: ``(B, n-1)`` mean over **all** unordered pairs of ``I^(m)_ij`` (what
            the sampled estimator with ``pairs="uniform"`` targets; the default neighbour pairs
            target ``mean_over_pairs(neighbour_pairs(...))``). Old name: ``mean_interaction``.
        utility_sum: ``(B, n-1)`` ``J^(m)`` (sum over ordered pairs, Eq. 3). Old name: ``utility``.
        utility_per_pair: ``(B, n-1)`` ``w(m) · mean_{i<j} I^(m)_ij`` (reference-plot convention,
            the same quantity as the sampled ``InteractionChangeResult.utility``).
        disentanglement: ``(B, n-1)`` ratio-of-means ``D^(m)`` per image.
        disentanglement_per_pair: ``(B, n-1)`` mean over pairs of per-pair ratios.
        average_interaction: ``(B,)`` ``mean_{i<j} SII_ij`` from the IR paper's Eq. 4 formula.
        num_skipped_pairs: ``(B, n-1)`` pairs left out of ``D^(m)`` as rounding noise.
    """

    num_players: int
    value_table: torch.Tensor
    shapley: torch.Tensor
    multi_order_shapley: torch.Tensor
    shapley_interaction: torch.Tensor
    banzhaf_interaction: torch.Tensor
    multi_order: torch.Tensor
    multi_order_abs: torch.Tensor
    all_pairs_interaction: torch.Tensor
    utility_sum: torch.Tensor
    utility_per_pair: torch.Tensor
    disentanglement: torch.Tensor
    disentanglement_per_pair: torch.Tensor
    average_interaction: torch.Tensor
    num_forward_passes: int = 0
    orders: tuple[int, ...] = field(default=())
    num_skipped_pairs: torch.Tensor | None = None

    values = deprecated_alias("value_table", "values")
    mean_interaction = deprecated_alias("all_pairs_interaction", "mean_interaction")
    utility = deprecated_alias(
        "utility_sum",
        "utility",
        " (the sum over ordered pairs; utility_per_pair is the per-pair convention of InteractionChangeResult.utility)",
    )

    @property
    def empty_value(self) -> torch.Tensor:
        """``v(∅)``, shape ``(B,)``."""
        return self.value_table[:, 0]

    @property
    def full_value(self) -> torch.Tensor:
        """``v(N)``, shape ``(B,)``."""
        return self.value_table[:, -1]

    @property
    def singleton_values(self) -> torch.Tensor:
        """``v({i})``, shape ``(B, n)``."""
        return self.value_table[:, [1 << i for i in range(self.num_players)]]

    def mean_over_pairs(self, pairs: torch.Tensor) -> torch.Tensor:
        """``(B, n-1)`` mean of ``I^(m)_ij`` over the given pairs: ``(P, 2)`` for every image or ``(B, P, 2)``.

        The like-for-like target of a sampled estimate: ``exact.mean_over_pairs(result.pairs)``
        (e.g. the reference's neighbour pairs, which :attr:`all_pairs_interaction` is not).
        """
        pairs = torch.as_tensor(pairs, dtype=torch.long, device=self.multi_order.device)
        if pairs.dim() == 2:
            pairs = pairs.unsqueeze(0).expand(self.multi_order.shape[0], -1, -1)
        if pairs.dim() != 3 or pairs.shape[-1] != 2 or pairs.shape[0] != self.multi_order.shape[0]:
            raise ValueError(
                f"pairs must have shape (P, 2) or (B, P, 2) with B = {self.multi_order.shape[0]}; got "
                f"{tuple(pairs.shape)}"
            )
        images = torch.arange(pairs.shape[0], device=pairs.device).view(-1, 1)
        per_pair = self.multi_order[images, :, pairs[..., 0], pairs[..., 1]]  # (B, P, n-1)
        return per_pair.mean(dim=1)

    def disentanglement_pooled(self) -> torch.Tensor:
        """``D^(m)`` (Ren et al., NeurIPS 2021, Eq. 4) as a ratio of means over all images and pairs, ``(n-1,)``.

        This pooling is the one of the reference code's ``plot.py``.

        Pairs whose ``E_S |Δv_ij(S)|`` is rounding noise are left out (NaN when all are).
        """
        iu = torch.triu_indices(self.num_players, self.num_players, offset=1)
        numerator = self.multi_order[:, :, iu[0], iu[1]].abs()
        denominator = self.multi_order_abs[:, :, iu[0], iu[1]]
        keep = denominator > _noise_floor(self.value_table).view(-1, 1, 1)
        numerator = torch.where(keep, numerator, 0.0).mean(dim=(0, 2))
        denominator = torch.where(keep, denominator, 0.0).mean(dim=(0, 2))
        return _nan_ratio(numerator, denominator)

    def efficiency_residual(self) -> torch.Tensor:
        """``v(N) - v(∅) - Σ_i [v({i}) - v(∅)] - Σ_m J^(m)`` per image: zero up to rounding by the
        efficiency property (Ren et al., NeurIPS 2021, Eq. 3 / supplement B.1 (5))."""
        singles = (self.singleton_values - self.empty_value.unsqueeze(1)).sum(dim=1)
        return self.full_value - self.empty_value - singles - self.utility_sum.sum(dim=1)

    def to_dict(self, prefix: str = "exact") -> dict[str, float]:
        """Image-averaged scalars: ``{prefix}/all_pairs_interaction/m{m}``, ``{prefix}/utility/m{m}`` (per
        pair, as the sampled results), ``{prefix}/utility_sum/m{m}``, ``{prefix}/disentanglement/m{m}``, ... ."""
        out: dict[str, float] = {}
        for name, table in (
            ("all_pairs_interaction", self.all_pairs_interaction),
            ("utility", self.utility_per_pair),
            ("utility_sum", self.utility_sum),
            ("disentanglement", self.disentanglement),
        ):
            for m, value in enumerate(table.mean(dim=0).tolist()):
                out[f"{prefix}/{name}/m{m}"] = float(value)
        out[f"{prefix}/average_interaction"] = float(self.average_interaction.mean())
        out[f"{prefix}/num_forward_passes"] = float(self.num_forward_passes)
        return out


def _noise_floor(table: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Per image: the rounding floor of ``Δv`` for values of size ``max |v|`` (see :func:`rounding_floor`)."""
    return rounding_floor(table.abs().amax(dim=1), dtype or table.dtype, ROUNDING_ULPS)


def _nan_ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    return torch.where(denominator > 0, numerator / torch.where(denominator > 0, denominator, 1.0), torch.nan)


def exact_from_values(
    values: torch.Tensor, num_forward_passes: int = 0, *, value_dtype: torch.dtype | None = None
) -> ExactInteractions:
    """All exact indices from a value table ``(2^n,)`` or ``(B, 2^n)`` (index = bitmask of the coalition).

    Shapley value (Ren et al., NeurIPS 2021, Eq. 1), ``I^(m)_ij`` and the Shapley interaction index
    (Eq. 2), ``J^(m)`` (Eq. 3), ``D^(m)`` (Eq. 4), ``φ^(m)(i)`` (supplement Eq. 10) and
    ``E_ij[I_ij]`` (Wang et al., ICLR 2021, Eq. 4); see the module docstring. ``value_dtype``: the
    dtype the values were computed in (default: the table's), which sets the rounding floor of
    ``D^(m)``.
    """
    if not isinstance(values, torch.Tensor):
        values = torch.as_tensor(values)
    table = values.detach().to(torch.float64)
    if table.dim() == 1:
        table = table.unsqueeze(0)
    if table.dim() != 2:
        raise ValueError(f"the value table must have shape (2^n,) or (B, 2^n); got {tuple(values.shape)}")
    size = table.shape[1]
    n = size.bit_length() - 1
    if size != 1 << n or n < 2:
        raise ValueError(f"the value table needs 2^n entries with n >= 2 players; got {size}")
    if n > MAX_EXACT_PLAYERS:
        raise ValueError(f"exact enumeration supports at most {MAX_EXACT_PLAYERS} players; got n = {n}")
    if not bool(torch.isfinite(table).all()):
        raise ValueError("the value table contains NaN or infinite values")
    batch, device = table.shape[0], table.device
    players = torch.arange(n, device=device)

    # ---- marginal contributions v(S ∪ {i}) - v(S), S ⊆ N \ {i}: (B, n, 2^(n-1))
    rest = torch.arange(1 << (n - 1), device=device)
    s_without_i = _insert_zero_bit(rest.unsqueeze(0), players.unsqueeze(1))  # (n, 2^(n-1))
    with_i = s_without_i | (1 << players).unsqueeze(1)
    marginal = table[:, with_i] - table[:, s_without_i]
    sizes_i = _popcount(rest, n - 1)
    onehot_i = _size_onehot(sizes_i, n)  # (2^(n-1), n)
    counts_i = torch.tensor([comb(n - 1, m) for m in range(n)], dtype=torch.float64, device=device)
    multi_order_shapley = (marginal @ onehot_i / counts_i).transpose(1, 2)  # (B, m, i)
    sv_weights = torch.tensor(
        [factorial(s) * factorial(n - s - 1) / factorial(n) for s in range(n)], dtype=torch.float64, device=device
    )
    shapley = marginal @ sv_weights[sizes_i]

    # ---- pair terms Δv_ij(S), S ⊆ N \ {i, j}: aggregated by |S| in chunks of pairs
    iu = torch.triu_indices(n, n, offset=1, device=device)
    num_pairs = iu.shape[1]
    rest2 = torch.arange(1 << (n - 2), device=device)
    sizes_ij = _popcount(rest2, n - 2)
    onehot_ij = _size_onehot(sizes_ij, n - 1)  # (2^(n-2), n-1)
    counts_ij = torch.tensor([comb(n - 2, m) for m in range(n - 1)], dtype=torch.float64, device=device)
    sii_weights = torch.tensor(
        [factorial(s) * factorial(n - s - 2) / factorial(n - 1) for s in range(n - 1)],
        dtype=torch.float64,
        device=device,
    )[sizes_ij]
    order_sum = torch.empty(batch, num_pairs, n - 1, dtype=torch.float64, device=device)
    order_abs = torch.empty_like(order_sum)
    sii_pairs = torch.empty(batch, num_pairs, dtype=torch.float64, device=device)
    bii_pairs = torch.empty_like(sii_pairs)
    chunk = max(1, (1 << 22) // max(1, batch * (1 << (n - 2))))
    for start in range(0, num_pairs, chunk):
        i = iu[0, start : start + chunk].unsqueeze(1)
        j = iu[1, start : start + chunk].unsqueeze(1)
        s = _insert_zero_bit(_insert_zero_bit(rest2.unsqueeze(0), i), j)  # i < j: insert at i, then at j
        bi, bj = 1 << i, 1 << j
        delta = table[:, s | bi | bj] - table[:, s | bi] - table[:, s | bj] + table[:, s]
        order_sum[:, start : start + chunk] = delta @ onehot_ij
        order_abs[:, start : start + chunk] = delta.abs() @ onehot_ij
        sii_pairs[:, start : start + chunk] = delta @ sii_weights
        bii_pairs[:, start : start + chunk] = delta.sum(dim=2) / float(1 << (n - 2))
    pair_orders = order_sum / counts_ij  # (B, P, n-1)
    pair_orders_abs = order_abs / counts_ij

    def symmetric(pair_values: torch.Tensor) -> torch.Tensor:
        # pair_values (..., P) -> (..., n, n)
        out = torch.zeros(*pair_values.shape[:-1], n, n, dtype=torch.float64, device=device)
        out[..., iu[0], iu[1]] = pair_values
        out[..., iu[1], iu[0]] = pair_values
        return out

    multi_order = symmetric(pair_orders.transpose(1, 2))
    multi_order_abs = symmetric(pair_orders_abs.transpose(1, 2))
    mean_interaction = pair_orders.mean(dim=1)  # (B, n-1)
    orders = torch.arange(n - 1, dtype=torch.float64, device=device)
    weights = (n - 1 - orders) / (n * (n - 1))
    utility = 2.0 * pair_orders.sum(dim=1) * weights
    utility_per_pair = mean_interaction * weights
    valid = pair_orders_abs > _noise_floor(table, value_dtype or values.dtype).view(-1, 1, 1)  # not rounding noise
    kept_abs = torch.where(valid, pair_orders.abs(), 0.0)
    kept_denominator = torch.where(valid, pair_orders_abs, 0.0)
    disentanglement = _nan_ratio(kept_abs.mean(dim=1), kept_denominator.mean(dim=1))
    ratios = _nan_ratio(kept_abs, kept_denominator).nan_to_num(0.0)
    disentanglement_per_pair = _nan_ratio(ratios.sum(dim=1), valid.sum(dim=1).to(ratios.dtype))

    full = table[:, -1:]
    empty = table[:, :1]
    leave_one_out = table[:, (1 << n) - 1 - (1 << players)]
    singles = table[:, 1 << players]
    average_interaction = (full - leave_one_out - singles + empty).mean(dim=1) / (n - 1)

    return ExactInteractions(
        num_players=n,
        value_table=table,
        shapley=shapley,
        multi_order_shapley=multi_order_shapley,
        shapley_interaction=symmetric(sii_pairs),
        banzhaf_interaction=symmetric(bii_pairs),
        multi_order=multi_order,
        multi_order_abs=multi_order_abs,
        all_pairs_interaction=mean_interaction,
        utility_sum=utility,
        utility_per_pair=utility_per_pair,
        disentanglement=disentanglement,
        disentanglement_per_pair=disentanglement_per_pair,
        average_interaction=average_interaction,
        num_forward_passes=num_forward_passes,
        orders=tuple(range(n - 1)),
        num_skipped_pairs=(~valid).sum(dim=1),
    )


def exact_interactions(
    game: MaskedGame | torch.Tensor | Callable[[torch.Tensor], torch.Tensor],
    *,
    num_players: int | None = None,
    max_forward_passes: int = DEFAULT_MAX_FORWARD_PASSES,
) -> ExactInteractions:
    """Exact oracle for a game with ``n <= 16`` players: every index of :func:`exact_from_values`
    (Ren et al., NeurIPS 2021, Eq. 1-4 and supplement Eq. 10; Wang et al., ICLR 2021, Eq. 4).

    Args:
        game: a :class:`~lit_advgame.interactions.game.MaskedGame` (all ``2^n`` coalitions are
            evaluated through the engine, ``B · 2^n`` forward passes), a value table ``(2^n,)`` /
            ``(B, 2^n)``, or a callable taking the ``(2^n, n)`` boolean coalition matrix and
            returning ``(2^n,)`` or ``(B, 2^n)`` values (synthetic games).
        num_players: required for a callable.
        max_forward_passes: refuse (before any work) when ``B · 2^n`` exceeds it.

    Example: the game ``v(S) = |S| + 2·[0 ∈ S and 1 ∈ S]`` on 3 players, given as a callable on the
    ``(2^n, n)`` coalition matrix. Players 0 and 1 share the bonus of 2 (Shapley values 2, 2, 1) and
    their Shapley interaction index is 2:

    >>> game = lambda s: s.double().sum(-1) + 2 * s[:, 0] * s[:, 1]
    >>> exact = exact_interactions(game, num_players=3)
    >>> exact.shapley
    tensor([[2., 2., 1.]], dtype=torch.float64)
    >>> exact.shapley_interaction[0, 0, 1].item(), exact.num_forward_passes
    (2.0, 8)
    """
    if isinstance(game, MaskedGame):
        n = game.num_players
        if n > MAX_EXACT_PLAYERS:
            raise ValueError(
                f"exact enumeration needs 2^n forward passes per image and supports at most {MAX_EXACT_PLAYERS} "
                f"players; this game has n = {n}: use a coarser grid or the sampling estimators"
            )
        check_budget(game.num_images * (1 << n), max_forward_passes, f"exact enumeration of 2^{n} coalitions")
        before = game.forward_passes
        values = game.evaluate(all_coalitions(n, device=game.device))
        return exact_from_values(values, num_forward_passes=game.forward_passes - before, value_dtype=game.value_dtype)
    if isinstance(game, torch.Tensor):
        return exact_from_values(game)
    if callable(game):
        if num_players is None:
            raise ValueError("num_players is required when the game is a callable on coalition matrices")
        if num_players > MAX_EXACT_PLAYERS or num_players < 2:
            raise ValueError(f"exact enumeration supports 2 <= n <= {MAX_EXACT_PLAYERS} players; got n = {num_players}")
        check_budget(1 << num_players, max_forward_passes, f"exact enumeration of 2^{num_players} coalitions")
        values = game(all_coalitions(num_players))
        if not isinstance(values, torch.Tensor):
            values = torch.as_tensor(values)
        if values.shape[-1] != 1 << num_players or values.dim() > 2:
            raise ValueError(
                "the game callable must return (2^n,) or (B, 2^n) values for the (2^n, n) coalitions; got "
                f"{tuple(values.shape)}"
            )
        return exact_from_values(values, num_forward_passes=1 << num_players)
    raise TypeError(f"game must be a MaskedGame, a value table or a callable on coalitions; got {type(game).__name__}")
