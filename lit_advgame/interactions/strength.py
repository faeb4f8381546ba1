"""Interaction strength ``E_{i≠j} |I(i, j)|`` and low-order Shapley magnitudes, sampled and differentiable.

The quantities of the interaction-penalty and L_Shapley slides (``game_theoretic_interactions_slides``;
Zhang et al., "Interpreting and Boosting Dropout from a Game-Theoretic View", ICLR 2021, Eq. 4 and §4) on an
input game of the engine (:class:`~lit_advgame.interactions.game.InputGame`: grid players, baseline,
value function), estimated from a fixed budget of masked forward passes with the autograd graph kept, so
that the estimate can be added to a training loss (gradients flow into the model's parameters; the game's
images are detached, so none flows into the input).

Targets (``target``):

* ``"interaction"``: ``E_{(i, j)} |I(i, j)|`` over pairs of players. Without an order band ``I(i, j)`` is the
  Shapley interaction index ``Σ_{S ⊆ N\\{i,j}} P_Shapley(S) Δv_ij(S)``, its contexts drawn as the dropout
  reference code does: ``p ~ U(0, 1)`` per sample, then each other cell kept with probability ``p`` (exactly
  the Shapley weighting). With ``order_band = [lo, hi]`` each (image, pair) draws one order
  ``m ~ U{lo, ..., hi}`` and the target is ``E_{(i, j)} E_m |I^(m)(i, j)|`` (Ren et al., NeurIPS 2021, Eq. 2:
  contexts uniform among the ``m``-subsets).
* ``"shapley"``: ``E_i |φ(i)|`` over players, the L_Shapley penalty of the slides,
  ``L_Shapley = Σ_{m ~ U(0; λ)} Σ_x Σ_i |φ^(m)(i)|`` with ``φ^(m)(i) = E_{S ⊆ N\\{i}, |S| = m} [v(S ∪ {i}) - v(S)]``:
  with ``order_band`` each (image, player) draws ``m ~ U{lo, ..., hi}``; without a band ``φ(i)`` is the
  Shapley value (the same ``p ~ U(0, 1)`` sampler). The estimate is a **mean** over images and players, i.e.
  L_Shapley divided by ``B · n`` (the constant goes into the weight λ).

Order band (``order_band``): two ints are explicit orders ``lo <= m <= hi``; two floats are ratios of ``n``
(``m = int((n - 2) · r)`` for interactions, ``int((n - 1) · r)`` for Shapley values, the rule of
:func:`~lit_advgame.interactions.orders.resolve_orders`). So "``m ~ U(0; λ)``" of the slides is
``order_band: [0, λ]`` with an int λ, or ``[0.0, λ]`` with λ a fraction of ``n``.

The ``|mean|`` bias (``estimator``): ``"plug_in"`` (default; the reference code's ``|mean_s Δ_s|``) is biased
upward: with ``S`` samples of standard deviation ``σ`` it is about ``√(2/π) · σ / √S`` when the true value is 0
(reported as :attr:`StrengthEstimate.noise_floor`). ``"split"`` removes it: the ``S`` samples are split into two
independent halves with signed means ``a`` and ``b``; ``t = a · b`` is an unbiased estimate of the squared
value (:attr:`StrengthEstimate.squares`), and the magnitude reported is the sign-preserving root
``sign(t) · (√(|t| + ε²) - ε)`` with ``ε`` = ``sqrt_eps`` (``sign(t)·√|t|`` at ``ε = 0``; ``ε > 0`` bounds its
gradient by ``|∇t| / (2ε)``). Its mean over units is unbiased for ``E|I|`` only as ``S`` grows; it is centred at
0 when every value is 0 (no upward bias), and may be negative per unit.

Cost: ``units × num_samples × 2^e`` masked forward passes per image (``e = 2`` for pairs, 4 evaluations per
context; ``e = 1`` for players), checked against ``max_forward_passes`` per call before any work; the graph of all
of them is kept (memory grows with images × units × samples; keep them small in a training step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lit_advgame.interactions.budget import DEFAULT_MAX_FORWARD_PASSES, check_budget
from lit_advgame.interactions.game import MaskedGame
from lit_advgame.interactions.multi_order import signed_sum, unit_context_coalitions, unit_signs
from lit_advgame.interactions.orders import resolve_orders
from lit_advgame.interactions.sampling import sample_pairs, sample_players
from lit_advgame.interactions.stats import sem
from lit_advgame.utils.checks import check_choice, check_int, check_positive
from lit_advgame.utils.seeding import make_generator
from lit_advgame.vocabulary import (
    PAIR_KINDS,
    STRENGTH_ESTIMATORS,
    STRENGTH_TARGETS,
    PairKind,
    StrengthEstimator,
    StrengthTarget,
)

#: default masked-context samples per unit (pair or player) and image
DEFAULT_NUM_SAMPLES = 16


@dataclass
class StrengthEstimate:
    """One estimate of interaction strength (see the module docstring).

    Attributes:
        value: scalar, the mean over images and units, **with** the autograd graph (when asked for).
        per_image: ``(B,)`` mean over the units of each image (detached).
        per_unit: ``(B, U)`` per (image, pair/player) magnitude (detached).
        stderr: standard error of ``value`` over the ``B · U`` units (sampling of units and contexts; NaN for one).
        noise_floor: mean over units of ``√(2/π) · σ̂ / √S``, the plug-in's expected ``|mean|`` when the true value
            is 0 (its upward bias at 0); reported for both estimators.
        squares: ``(B, U)`` split-sample products ``a · b`` (unbiased squares; ``None`` for the plug-in).
        units: ``(B, U, e)`` the pairs (``e = 2``) or players (``e = 1``) drawn.
        orders: ``(B, U)`` the order drawn per unit (``None`` without an order band).
        forward_passes: masked forward passes of the estimate.
    """

    value: torch.Tensor
    per_image: torch.Tensor
    per_unit: torch.Tensor
    stderr: float
    noise_floor: float
    squares: torch.Tensor | None
    units: torch.Tensor
    orders: torch.Tensor | None
    forward_passes: int


def signed_root(squares: torch.Tensor, eps: float) -> torch.Tensor:
    """``sign(t) · (√(|t| + ε²) - ε)``: the sign-preserving square root of the split-sample products ``t``."""
    return torch.sign(squares) * (torch.sqrt(squares.abs() + eps * eps) - eps)


def sample_band_contexts(
    units: torch.Tensor,
    num_samples: int,
    num_players: int,
    band: tuple[int, int] | None,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Contexts ``(B, U, S, n)`` bool for the ``units`` ``(B, U, e)`` and the order per unit (``(B, U)`` or ``None``).

    Without a band: ``p ~ U(0, 1)`` per sample and each player outside the unit kept with probability ``p``
    (the Shapley weighting; the dropout reference's sampler). With ``band = (lo, hi)``: one order
    ``m ~ U{lo..hi}`` per unit and contexts uniform among the ``m``-subsets of the other players.
    """
    device = generator.device if generator is not None else torch.device("cpu")
    batch, count, _ = units.shape
    keys = torch.rand((batch, count, num_samples, num_players), generator=generator, dtype=torch.float64, device=device)
    outside = torch.ones(batch, count, num_players, dtype=torch.bool, device=device)
    outside.scatter_(2, units.to(device), False)
    keys = keys.masked_fill(~outside.unsqueeze(2), 2.0)  # unit members: never in a context
    if band is None:
        keep = torch.rand((batch, count, num_samples, 1), generator=generator, dtype=torch.float64, device=device)
        return keys < keep, None
    lo, hi = band
    orders = lo + torch.randint(0, hi - lo + 1, (batch, count), generator=generator, device=device)
    rank = keys.argsort(dim=-1).argsort(dim=-1)  # rank 0 = smallest key; unit members rank last
    return rank < orders[:, :, None, None], orders


@dataclass(frozen=True)
class InteractionStrength:
    """Settings of the interaction-strength estimate (see the module docstring); :meth:`estimate` runs it.

    Args:
        target: ``"interaction"`` (``E|I(i, j)|`` of pairs) or ``"shapley"`` (``E|φ(i)|`` of players, L_Shapley).
        num_pairs: pairs per image for ``target="interaction"`` (``None``: every pair of the kind).
        num_players: players per image for ``target="shapley"`` (``None``: every player).
        num_samples: contexts per unit (pair or player); the accuracy/speed trade-off (>= 1; even and >= 2 for
            ``estimator="split"``).
        order_band: ``None`` (the Shapley weighting over all orders) or ``[lo, hi]``: two ints (explicit
            orders) or two floats (ratios of n), ``lo <= hi``.
        pairs: ``"uniform"`` (default: every pair ``i ≠ j`` alike, as ``E_{i≠j}``) or ``"neighbour"``.
        estimator: ``"plug_in"`` (default, the reference's ``|mean|``) or ``"split"`` (unbiased squares).
        sqrt_eps: ``ε`` of the split estimator's signed root (>= 0).
        max_forward_passes: refuse an estimate planned to need more masked forward passes (``None``: no cap).
    """

    target: StrengthTarget = "interaction"
    num_pairs: int | None = 4
    num_players: int | None = 4
    num_samples: int = DEFAULT_NUM_SAMPLES
    order_band: list[int] | list[float] | None = None
    pairs: PairKind = "uniform"
    estimator: StrengthEstimator = "plug_in"
    sqrt_eps: float = 1e-4
    max_forward_passes: int | None = DEFAULT_MAX_FORWARD_PASSES

    def __post_init__(self) -> None:
        check_choice(self.target, "target", STRENGTH_TARGETS)
        check_choice(self.pairs, "pairs", PAIR_KINDS)
        check_choice(self.estimator, "estimator", STRENGTH_ESTIMATORS)
        for name in ("num_pairs", "num_players"):
            if getattr(self, name) is not None:
                check_int(getattr(self, name), name, minimum=1)
        check_int(self.num_samples, "num_samples", minimum=1)
        if self.estimator == "split" and (self.num_samples < 2 or self.num_samples % 2):
            raise ValueError(
                f"num_samples must be even and >= 2 for estimator='split' (two halves); got {self.num_samples}"
            )
        check_positive(self.sqrt_eps, "sqrt_eps", allow_zero=True)
        if self.max_forward_passes is not None:
            check_int(self.max_forward_passes, "max_forward_passes", minimum=1)
        band = self.order_band
        if band is not None:
            if isinstance(band, (str, bytes)) or not hasattr(band, "__len__") or len(band) != 2:
                raise ValueError(
                    f"order_band must be None or [lo, hi] (two ints: orders; two floats: ratios of n); got {band!r}"
                )
            lo, hi = band
            if type(lo) is not type(hi) or isinstance(lo, bool) or not isinstance(lo, (int, float)):
                raise TypeError(f"order_band must be two ints (orders) or two floats (ratios of n); got {band!r}")
            if lo > hi:
                raise ValueError(f"order_band [lo, hi] is empty: lo={lo} > hi={hi}")
            object.__setattr__(self, "order_band", [lo, hi])

    @property
    def unit_size(self) -> int:
        """Players per unit: 2 (pairs) or 1 (players)."""
        return 2 if self.target == "interaction" else 1

    def band(self, num_players: int) -> tuple[int, int] | None:
        """The order band ``(lo, hi)`` resolved for ``num_players`` players (``None``: no band)."""
        if self.order_band is None:
            return None
        resolved = resolve_orders(list(self.order_band), num_players, shapley=self.target == "shapley")
        return resolved.orders[0], resolved.orders[1]

    def num_units(self, num_players: int) -> int:
        """Pairs or players per image for a game of ``num_players`` players."""
        if self.target == "shapley":
            return num_players if self.num_players is None else self.num_players
        return num_players * (num_players - 1) // 2 if self.num_pairs is None else self.num_pairs

    def forward_passes_per_image(self, num_players: int) -> int:
        """Masked forward passes per image: ``units × num_samples × 2^e`` (the stated cost of one estimate)."""
        return self.num_units(num_players) * self.num_samples * (1 << self.unit_size)

    def check_game(self, num_players: int, num_images: int = 1) -> None:
        """Check the settings against a game of ``num_players`` players (order band, units, budget)."""
        self.band(num_players)
        units = self.num_units(num_players)
        if self.target == "shapley" and units > num_players:
            raise ValueError(f"num_players={units} exceeds the {num_players} players of the game")
        planned = num_images * self.forward_passes_per_image(num_players)
        check_budget(
            planned,
            self.max_forward_passes,
            f"interaction strength ({num_images} images x {units} units x {self.num_samples} samples "
            f"x {1 << self.unit_size} coalitions)",
        )

    def draw_units(self, game: MaskedGame, generator: torch.Generator | None) -> torch.Tensor:
        """The pairs ``(B, U, 2)`` or players ``(B, U, 1)`` of each image (on the generator's device)."""
        n, batch = game.num_players, game.num_images
        if self.target == "interaction":
            return sample_pairs(
                batch, n, self.num_pairs, kind=self.pairs, player_map=game.player_map, generator=generator
            )
        if self.num_players is None:
            return torch.arange(n).expand(batch, n).unsqueeze(-1)
        return sample_players(batch, self.num_players, n, generator).unsqueeze(-1)

    def estimate(
        self, game: MaskedGame, generator: torch.Generator | int | None = None, *, grad: bool = True
    ) -> StrengthEstimate:
        """Estimate the strength on ``game`` drawing from ``generator`` (an int seeds a fresh one; ``None``: the
        global RNG); ``grad=True`` keeps the graph of :attr:`StrengthEstimate.value` (into the model's parameters)."""
        generator = make_generator(generator)
        n, batch = game.num_players, game.num_images
        self.check_game(n, batch)
        units = self.draw_units(game, generator).cpu()
        contexts, orders = sample_band_contexts(units, self.num_samples, n, self.band(n), generator)
        count, samples, size = units.shape[1], self.num_samples, self.unit_size
        flat_units = units.unsqueeze(2).expand(batch, count, samples, size).reshape(-1, size)
        coalitions = unit_context_coalitions(flat_units, contexts.reshape(-1, n).cpu())  # (R, 2^e, n)
        rows = coalitions.reshape(-1, n).to(game.device)
        images = torch.arange(batch, device=game.device).repeat_interleave(count * samples * (1 << size))
        before = game.forward_passes
        values = game.evaluate_rows(rows, images, grad=grad)
        signs = unit_signs(size).to(device=values.device, dtype=values.dtype)
        deltas = signed_sum(values.view(batch, count, samples, 1 << size), signs)  # (B, U, S)
        squares = None
        if self.estimator == "plug_in":
            per_unit = deltas.mean(dim=-1).abs()
        else:
            half = samples // 2
            squares = deltas[..., :half].mean(dim=-1) * deltas[..., half:].mean(dim=-1)
            per_unit = signed_root(squares, self.sqrt_eps)
        spread = deltas.detach().std(dim=-1) if samples > 1 else torch.full_like(deltas[..., 0], math.nan)
        return StrengthEstimate(
            value=per_unit.mean(),
            per_image=per_unit.detach().mean(dim=1),
            per_unit=per_unit.detach(),
            stderr=float(sem(per_unit.detach().flatten(), 0)),
            noise_floor=float((math.sqrt(2 / math.pi) * spread / math.sqrt(samples)).mean()),
            squares=None if squares is None else squares.detach(),
            units=units,
            orders=orders,
            forward_passes=game.forward_passes - before,
        )


def interaction_strength(
    game: MaskedGame, *, generator: torch.Generator | int | None = None, grad: bool = False, **settings: object
) -> StrengthEstimate:
    """Functional form of :meth:`InteractionStrength.estimate` (``settings`` are its fields).

    Zhang et al., ICLR 2021, Eq. 4 (``E_{i≠j}|I(i, j)|``) and the slides' L_Shapley (see the module docstring).
    """
    return InteractionStrength(**settings).estimate(game, generator, grad=grad)
