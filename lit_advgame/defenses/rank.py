"""SVD rank reduction of images and its effect on multi-order interactions (Ren et al., NeurIPS 2021, §4.3,
Figure 6 right; the rank-based view of Jere et al., "A singular value perspective on model robustness", 2020).

Each channel of an image is an ``H × W`` matrix of full rank ``k = min(H, W)`` (a natural image's channel is
generically of full rank); its rank-``r`` reduction keeps the ``r`` largest singular values,
``Σ_{t ≤ r} σ_t u_t v_tᵀ`` (the Eckart–Young best rank-``r`` approximation), with ``r = fraction · k`` rounded
(``"round"``, ``"floor"`` or ``"ceil"``, at least 1; the paper's ``k/4`` and ``k/16`` are fractions 1/4 and
1/16). The reduced image can leave [0, 1] slightly; by default it is **clamped** to [0, 1] (the classifier
contract: models take pixel-space images), which may raise the rank of the clamped pixels again -- pass
``clamp=False`` for the exact rank-``r`` matrix.

The paper compares the multi-order interactions ``I^(m)`` of normal samples and adversarial examples before and
after reduction: reduction changes the high-order interactions of adversarial examples much more than those of
normal samples. :class:`RankReductionApproximator` estimates ``I^(m)`` of ``x``, ``x_adv`` and their reductions
as **paired** estimates: one draw of pairs and contexts evaluated on every game (as
:class:`~lit_advgame.interactions.InteractionChangeApproximator`), so the changes
``I^(m)(r(x)) − I^(m)(x)``, ``I^(m)(r(x_adv)) − I^(m)(x_adv)`` and the difference of the two come with the
standard errors of paired per-context differences.

>>> import torch
>>> x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
>>> reduced = svd_rank_reduce(x, 1 / 4, clamp=False)
>>> torch.linalg.matrix_rank(reduced).tolist()  # per image and channel: 16 / 4 = 4
[[4, 4, 4], [4, 4, 4]]
>>> kept_rank(1 / 16, 28), kept_rank(1 / 16, 28, "floor"), kept_rank(1 / 16, 28, "ceil")
(2, 1, 2)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lit_advgame.interactions.attacking_utility import check_paired_games
from lit_advgame.interactions.game import InputGame, MaskedGame
from lit_advgame.interactions.multi_order import PairSampling, multi_order_from_samples
from lit_advgame.interactions.options import build_approximator
from lit_advgame.interactions.orders import Orders, OrderSpec
from lit_advgame.interactions.results import MultiOrderResult, ResultMixin, _per_order
from lit_advgame.interactions.stats import TwoStageSummary, summarize_two_stage
from lit_advgame.utils.checks import check_choice, check_images, check_int
from lit_advgame.vocabulary import RANK_ROUNDINGS, RankRounding

#: the paper's reductions: ``k/4`` and ``k/16`` (Figure 6 right)
PAPER_FRACTIONS = (1 / 4, 1 / 16)


def check_fraction(fraction: float, name: str = "fraction") -> float:
    """A rank fraction must be a real number in (0, 1]."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not math.isfinite(fraction):
        raise TypeError(f"{name} must be a number in (0, 1]; got {fraction!r}")
    if not 0 < fraction <= 1:
        raise ValueError(f"{name} must lie in (0, 1] (the kept share of the full rank k); got {fraction!r}")
    return float(fraction)


def kept_rank(fraction: float, full_rank: int, rounding: RankRounding = "round") -> int:
    """The rank ``r`` kept of ``full_rank`` ``k``: ``fraction · k`` rounded by ``rounding``, at least 1.

    A product within 1e-9 of a whole number is that number, so float noise does not move a floor or a ceil
    (``0.28 · 25`` is 7.000000000000001 in floating point but keeps rank 7 with ``"ceil"``).
    """
    check_fraction(fraction)
    check_int(full_rank, "full_rank", minimum=1)
    check_choice(rounding, "rounding", RANK_ROUNDINGS)
    value = fraction * full_rank
    nearest = round(value)
    if abs(value - nearest) <= 1e-9 or rounding == "round":
        rank = nearest
    else:
        rank = math.floor(value) if rounding == "floor" else math.ceil(value)
    return max(1, min(full_rank, int(rank)))


def svd_rank_reduce(
    images: torch.Tensor, fraction: float, *, rounding: RankRounding = "round", clamp: bool = True
) -> torch.Tensor:
    """Rank-``r`` reduction of every channel of ``images`` ``(B, C, H, W)`` (Jere et al. 2020; Ren et al.,
    NeurIPS 2021, §4.3): ``Σ_{t ≤ r} σ_t u_t v_tᵀ`` with ``r = kept_rank(fraction, min(H, W), rounding)``.

    Computed in float64 and returned in the images' dtype; ``clamp`` (default) clamps the result to [0, 1]
    (see the module docstring). ``fraction = 1`` returns the images (up to float rounding).
    """
    check_images(images, "images", allow_empty=False)
    if not isinstance(clamp, bool):
        raise TypeError(f"clamp must be a bool; got {clamp!r}")
    rank = kept_rank(fraction, min(images.shape[-2:]), rounding)
    u, s, vh = torch.linalg.svd(images.double(), full_matrices=False)
    reduced = (u[..., :rank] * s[..., None, :rank]) @ vh[..., :rank, :]
    if clamp:
        reduced = reduced.clamp(0.0, 1.0)
    return reduced.to(images.dtype)


def rank_reduced_game(
    game: MaskedGame, fraction: float, *, rounding: RankRounding = "round", clamp: bool = True
) -> MaskedGame:
    """The game of ``game`` on its rank-reduced images: same model, players, value function, labels, baseline
    (the absent players' values, kept from ``game``) and precision; only the present image changes.

    ``game`` must be an :class:`~lit_advgame.interactions.InputGame` (a perturbation game has no image of its
    own to reduce). Its labels are resolved first, so both games value the same class; a runner-up class
    (``value="margin_fixed"``) is the reduced image's own.
    """
    if not isinstance(game, InputGame):
        raise TypeError(f"rank reduction applies to an InputGame (masked images); got {type(game).__name__}")
    game.resolve_classes()
    return MaskedGame(
        game.model,
        svd_rank_reduce(game.present, fraction, rounding=rounding, clamp=clamp),
        game.absent,
        game.labels,
        game.player_map,
        game.num_players,
        game.value,
        target=game.targets if game.value.second_class == "given" else None,
        batch_size=game.batch_size,
        autocast=game.autocast,
        channels_last=game.channels_last,
    )


@dataclass
class RankReductionResult(ResultMixin):
    """Multi-order interactions of normal and adversarial images before and after SVD rank reduction
    (Ren et al., NeurIPS 2021, Figure 6 right), all from one draw of pairs and contexts.

    Attributes:
        fractions, ranks: the rank fractions and the ranks ``r`` they kept; full_rank: ``k = min(H, W)``.
        normal, adversarial: :class:`~lit_advgame.interactions.MultiOrderResult` of ``x`` and ``x_adv``.
        reduced_normal, reduced_adversarial: one :class:`MultiOrderResult` per fraction, of ``r(x)``, ``r(x_adv)``.
        normal_change, adversarial_change: per fraction, the paired change ``I^(m)(r(·)) − I^(m)(·)``
            (:class:`~lit_advgame.interactions.stats.TwoStageSummary`: ``values``/``stderr`` ``(O,)`` over images,
            ``per_image`` ``(B, O)``).
        difference: per fraction, ``adversarial_change − normal_change`` (paired over images, pairs and contexts):
            how much more reduction changes the adversarial examples' interactions.
    """

    fractions: tuple[float, ...]
    ranks: tuple[int, ...]
    full_rank: int
    normal: MultiOrderResult
    adversarial: MultiOrderResult
    reduced_normal: tuple[MultiOrderResult, ...]
    reduced_adversarial: tuple[MultiOrderResult, ...]
    normal_change: tuple[TwoStageSummary, ...]
    adversarial_change: tuple[TwoStageSummary, ...]
    difference: tuple[TwoStageSummary, ...]

    @property
    def orders(self) -> tuple[int, ...]:
        return self.normal.orders

    @property
    def labels(self) -> tuple[str, ...]:
        """The order labels of :meth:`to_dict` (``r0.10`` or ``m3``)."""
        return Orders(self.normal.orders, self.normal.ratios).labels

    @property
    def num_forward_passes(self) -> int:
        games = [self.normal, self.adversarial, *self.reduced_normal, *self.reduced_adversarial]
        return sum(result.num_forward_passes for result in games)

    def to_dict(self, prefix: str = "rank_reduction") -> dict[str, float]:
        """``{prefix}/normal/{order}``, ``{prefix}/adversarial/{order}`` and, per fraction (``k0.25``):
        ``reduced_normal``, ``reduced_adversarial``, ``normal_change``, ``adversarial_change``, ``difference``,
        each with ``_stderr``; plus ``{prefix}/num_forward_passes``."""
        labels = self.labels
        out = _per_order(f"{prefix}/normal", labels, self.normal.values, self.normal.stderr)
        out.update(_per_order(f"{prefix}/adversarial", labels, self.adversarial.values, self.adversarial.stderr))
        for f, fraction in enumerate(self.fractions):
            at = f"{prefix}/k{fraction:g}"
            parts = {
                "reduced_normal": self.reduced_normal[f],
                "reduced_adversarial": self.reduced_adversarial[f],
                "normal_change": self.normal_change[f],
                "adversarial_change": self.adversarial_change[f],
                "difference": self.difference[f],
            }
            for name, part in parts.items():
                out.update(_per_order(f"{at}/{name}", labels, part.values, part.stderr))
        out[f"{prefix}/num_forward_passes"] = float(self.num_forward_passes)
        return out


@dataclass
class RankReductionApproximator(PairSampling):
    """Paired estimator of ``I^(m)`` before and after SVD rank reduction (Ren et al., NeurIPS 2021, §4.3).

    Settings, budget and random state as :class:`~lit_advgame.interactions.multi_order.PairSampling` (the budget
    counts every game: ``2 · (1 + len(fractions))`` of them), plus:

    Args:
        fractions: rank fractions in (0, 1] (default the paper's ``k/4`` and ``k/16``).
        rounding, clamp: as :func:`svd_rank_reduce`.
    """

    fractions: Sequence[float] = PAPER_FRACTIONS
    rounding: RankRounding = "round"
    clamp: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.fractions, (int, float)):
            self.fractions = (self.fractions,)
        if len(self.fractions) == 0:
            raise ValueError("fractions must hold at least one rank fraction in (0, 1]")
        self.fractions = tuple(check_fraction(f, "fractions") for f in self.fractions)
        check_choice(self.rounding, "rounding", RANK_ROUNDINGS)
        if not isinstance(self.clamp, bool):
            raise TypeError(f"clamp must be a bool; got {self.clamp!r}")

    def approximate(self, normal_game: MaskedGame, adversarial_game: MaskedGame) -> RankReductionResult:
        """``I^(m)`` of ``x``, ``x_adv``, ``r(x)``, ``r(x_adv)`` on the same pairs and contexts, and the changes
        ``I^(m)(r(·)) − I^(m)(·)`` (``I^(m)_ij = E_{|S| = m} Δv_ij(S)``, Ren et al., NeurIPS 2021, Eq. 2).

        Both games must be :class:`~lit_advgame.interactions.InputGame` objects sharing labels (e.g. the ground
        truth), players and value function (:func:`~lit_advgame.interactions.check_paired_games`).
        """
        check_paired_games(normal_game, adversarial_game)
        options = {"rounding": self.rounding, "clamp": self.clamp}
        reduced = [
            (rank_reduced_game(normal_game, f, **options), rank_reduced_game(adversarial_game, f, **options))
            for f in self.fractions
        ]
        samples = self.sample([normal_game, adversarial_game, *(game for pair in reduced for game in pair)])
        deltas = samples.deltas
        summary = [multi_order_from_samples(samples, g) for g in range(deltas.shape[0])]

        def paired(a: torch.Tensor) -> TwoStageSummary:
            return summarize_two_stage(a, samples.exhaustive_pairs, samples.enumerated)

        normal_change, adversarial_change, difference = [], [], []
        for f in range(len(self.fractions)):
            change_normal = deltas[2 + 2 * f] - deltas[0]
            change_adversarial = deltas[3 + 2 * f] - deltas[1]
            normal_change.append(paired(change_normal))
            adversarial_change.append(paired(change_adversarial))
            difference.append(paired(change_adversarial - change_normal))
        full_rank = min(normal_game.image_shape[-2:])
        return RankReductionResult(
            fractions=tuple(self.fractions),
            ranks=tuple(kept_rank(f, full_rank, self.rounding) for f in self.fractions),
            full_rank=full_rank,
            normal=summary[0],
            adversarial=summary[1],
            reduced_normal=tuple(summary[2::2]),
            reduced_adversarial=tuple(summary[3::2]),
            normal_change=tuple(normal_change),
            adversarial_change=tuple(adversarial_change),
            difference=tuple(difference),
        )


def rank_reduction_interactions(
    normal_game: MaskedGame,
    adversarial_game: MaskedGame,
    orders: OrderSpec = "reference",
    *,
    fractions: Sequence[float] = PAPER_FRACTIONS,
    generator: torch.Generator | None = None,
    **options,
) -> RankReductionResult:
    """Paired ``I^(m)`` of normal and adversarial images before and after SVD rank reduction (Ren et al.,
    NeurIPS 2021, §4.3, Figure 6 right): thin wrapper of :class:`RankReductionApproximator`; ``options`` are
    its fields (``num_pairs``, ``num_contexts``, ``rounding``, ``clamp``, ``max_forward_passes``, ...)."""
    return build_approximator(
        RankReductionApproximator,
        "rank_reduction_interactions",
        orders=orders,
        fractions=fractions,
        random_state=generator,
        **options,
    ).approximate(normal_game, adversarial_game)
