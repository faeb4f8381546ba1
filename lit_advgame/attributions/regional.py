"""Regional Shapley attributions to the attacking cost (Wang et al., ICCV 2021, Sec. 3.1, Eq. 3–4).

Players are the ``L × L`` regions ``Λ_uv`` of the image's inner part (:class:`RegionGrid`, default
``L = 8``); the outer border of relative width ``β`` (default 1/6: the reference's 112-px image with an
8-px border on each side around 96 px of regions) may always be perturbed, so ``cost(∅)`` -- the cost
when only the border may change -- is finite. ``beta=0`` is the "no border" variant: the regions cover
the whole image and ``cost(∅)`` does not exist (the attack cannot change anything), so a cap value
``cap_cost`` must be given for it.

The game (:class:`CostGame`) is ``v(S) = cost(S)``, the norm of a targeted attack restricted to the
regions of ``S`` plus the border (:mod:`~lit_advgame.attributions.cost`). Its Shapley values
``φ_uv`` (Eq. 4, with the ``1/C(L²−1, |S|)`` weight that Eq. 1 as printed lacks) add up to
``cost(Λ) − cost(∅)`` (Eq. 3), which is negative: more perturbable regions, lower cost. Results keep
``φ`` with that sign (``per_image``, ``values``) and report the **importance** ``−φ`` (``importance``):
a region is important when allowing it lowers the cost. This is the sign of the paper's figures
(dark red = important), which plot −φ.

Failed restricted attacks (no perturbation found) are never averaged in as a cost; ``on_failure``:

* ``"cap"`` (default): the coalition's value is ``cost(∅)`` (or ``cap_cost``), an upper bound of
  any cost(S) for an attack that worked: S may perturb everything ∅ may;
* ``"drop"``: the sample is left out (stratified: the coalition leaves its size group; permutation:
  the whole permutation). Failures are the coalitions that are hardest to attack, so dropping them
  biases the group means of cost **down** where failures concentrate (small ``S``); the reported
  ``failure_rate`` says how much was dropped;
* ``"resample"``: a failed sample is replaced by a fresh one (a new subset of the same size, or a
  new permutation), up to ``max_resamples`` rounds; what still fails is then dropped as above.
  This estimates the Shapley value of the game conditioned on success, with the same bias.

The exact estimator enumerates every coalition, so it only supports ``"cap"`` (it refuses to drop).

Estimators (engine style: settings, a budget ``max_attacks``, a ``random_state``, ``approximate(game)``):

* :class:`ExactRegionalShapley` -- all ``2^(L²)`` masks (L = 3: 512 attacks per image);
* :class:`StratifiedRegionalShapley` -- the reference (``mask.py``, ``cal_shap.py``): 64 subsets of
  every size, chains for small and large sizes, every sample reused for every player;
* :class:`PermutationRegionalShapley` -- permutation sampling (Castro et al. 2009), as the engine's
  :class:`~lit_advgame.interactions.ShapleyApproximator`.

Each returns a :class:`RegionalAttribution` with standard errors, the failure rate and the
efficiency residual ``Σφ − (cost(Λ) − cost(∅))`` (0 up to rounding for exact and permutation
sampling; not 0 in general for the stratified estimator).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from lit_advgame.attributions.cost import RestrictedAttack, build_cost_attack
from lit_advgame.interactions.exact import MAX_EXACT_PLAYERS, all_coalitions, exact_from_values
from lit_advgame.interactions.sampling import sample_permutations, sample_subsets
from lit_advgame.interactions.stats import combine_stderr, mean_and_stderr
from lit_advgame.utils.checks import check_choice, check_images, check_int, check_labels, check_module
from lit_advgame.utils.seeding import make_generator
from lit_advgame.vocabulary import FAILURE_POLICIES, REGIONAL_ESTIMATORS, FailurePolicy, Norm, RegionalEstimator

log = logging.getLogger(__name__)

#: the reference's border: β = 1/6 (a 112-px image, 8 px on each side around 96 px of regions)
REFERENCE_BETA = 1 / 6


def border_width(size: int, beta: float) -> int:
    """Border width on each side of a ``size``-px side that is ``(1 + β)`` times the inner part:
    ``round(β · size / (2 (1 + β)))`` (112 px, β = 1/6 -> 8 px)."""
    return round(beta * size / (2.0 * (1.0 + beta)))


@dataclass(frozen=True)
class RegionGrid:
    """``L × L`` regions of an ``H × W`` image inside a border of relative width ``β`` (Fig. 2a).

    The image given to the model is the extended one: its outer ``border_width(H, β)`` rows and
    ``border_width(W, β)`` columns form the always-perturbable border, the inner part is split into
    ``L × L`` equal regions (its sides must be multiples of ``L``). ``beta=0``: no border.

    >>> grid = RegionGrid(112, 112)
    >>> grid.border, grid.region_size, grid.num_players
    ((8, 8), (12, 12), 64)
    """

    height: int
    width: int
    num_regions: int = 8
    beta: float = REFERENCE_BETA
    border: tuple[int, int] = field(init=False)
    region_size: tuple[int, int] = field(init=False)

    def __post_init__(self) -> None:
        check_int(self.height, "height", minimum=1)
        check_int(self.width, "width", minimum=1)
        check_int(self.num_regions, "num_regions", minimum=2)
        if not isinstance(self.beta, (int, float)) or not math.isfinite(self.beta) or self.beta < 0:
            raise ValueError(f"beta (the relative border width) must be a finite number >= 0; got {self.beta!r}")
        border = (border_width(self.height, self.beta), border_width(self.width, self.beta))
        if self.beta > 0 and min(border) == 0:
            raise ValueError(
                f"beta={self.beta} gives a border of 0 px on a {self.height}x{self.width} image; "
                "use a larger beta, or beta=0 for the no-border variant"
            )
        inner = (self.height - 2 * border[0], self.width - 2 * border[1])
        if min(inner) < self.num_regions or inner[0] % self.num_regions or inner[1] % self.num_regions:
            divisors = [d for d in range(2, min(inner) + 1) if inner[0] % d == 0 and inner[1] % d == 0][:8]
            raise ValueError(
                f"num_regions={self.num_regions} does not divide the {inner[0]}x{inner[1]} inner part of the "
                f"{self.height}x{self.width} image (border {border[0]}x{border[1]} px from beta={self.beta}); "
                f"choose num_regions dividing both sides (e.g. one of "
                f"{divisors}) or another beta"
            )
        object.__setattr__(self, "border", border)
        object.__setattr__(self, "region_size", (inner[0] // self.num_regions, inner[1] // self.num_regions))

    @property
    def num_players(self) -> int:
        return self.num_regions**2

    @property
    def player_map(self) -> torch.Tensor:
        """``(H, W)`` long: the region id ``u·L + v`` of each pixel, ``-1`` on the border."""
        (bh, bw), (rh, rw), n = self.border, self.region_size, self.num_regions
        rows = torch.full((self.height,), -1, dtype=torch.long)
        cols = torch.full((self.width,), -1, dtype=torch.long)
        rows[bh : self.height - bh] = torch.arange(n).repeat_interleave(rh)
        cols[bw : self.width - bw] = torch.arange(n).repeat_interleave(rw)
        inside = (rows[:, None] >= 0) & (cols[None, :] >= 0)
        return torch.where(inside, rows[:, None] * n + cols[None, :], -1)

    def masks(self, coalitions: torch.Tensor) -> torch.Tensor:
        """Pixel masks ``M^(S)`` of boolean coalitions ``(..., n)``: ``(..., H, W)``, the border always True."""
        if coalitions.dtype != torch.bool or coalitions.shape[-1] != self.num_players:
            raise ValueError(
                f"coalitions must be boolean with a last dimension of {self.num_players} regions; "
                f"got {coalitions.dtype} {tuple(coalitions.shape)}"
            )
        pixel_map = self.player_map.to(coalitions.device)
        chosen = coalitions[..., pixel_map.clamp_min(0).flatten()].view(*coalitions.shape[:-1], *pixel_map.shape)
        return chosen | (pixel_map < 0)


class CostGame:
    """The cost game ``v_b(S) = cost_b(S)`` of ``B`` images (Wang et al., ICCV 2021, Eq. 3–4).

    Args:
        model: classifier on pixel-space images (the classifier contract).
        x: ``(B, C, H, W)`` images in [0, 1] (the extended images: the border is their outer ring).
        target: ``(B,)`` target classes of the targeted attacks.
        attack: ``"l2"``, ``"linf"`` or a :class:`~lit_advgame.attributions.cost.RestrictedAttack`;
            ``attack_options`` go to its constructor.
        num_regions, beta: the :class:`RegionGrid` (or pass ``grid``).
        on_failure: ``"cap"``, ``"drop"`` or ``"resample"`` (module docstring).
        cap_cost: the value of a failed coalition under ``"cap"`` (default: cost(∅); required without border).
        max_resamples: rounds of ``"resample"``.

    Every distinct (image, coalition) is attacked once (the attacks start from δ = 0 and are
    deterministic) and cached; ``num_attacks`` counts the attacks run, ``attempted``/``failed`` the
    distinct coalitions per image.
    """

    def __init__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        target: torch.Tensor,
        attack: Norm | RestrictedAttack = "l2",
        *,
        num_regions: int = 8,
        beta: float = REFERENCE_BETA,
        grid: RegionGrid | None = None,
        on_failure: FailurePolicy = "cap",
        cap_cost: float | None = None,
        max_resamples: int = 3,
        **attack_options: Any,
    ) -> None:
        check_module(model)
        check_images(x, "x", allow_empty=False)
        check_labels(target, x.shape[0], name="target")
        check_choice(on_failure, "on_failure", FAILURE_POLICIES)
        check_int(max_resamples, "max_resamples", minimum=0)
        if cap_cost is not None and (not math.isfinite(float(cap_cost)) or cap_cost < 0):
            raise ValueError(f"cap_cost must be a finite number >= 0; got {cap_cost!r}")
        self.model, self.x, self.target = model, x, target
        self.attack = build_cost_attack(attack, **attack_options)
        self.grid = grid if grid is not None else RegionGrid(x.shape[2], x.shape[3], num_regions, beta)
        if (self.grid.height, self.grid.width) != tuple(x.shape[2:]):
            raise ValueError(f"grid is for {self.grid.height}x{self.grid.width} images; x is {tuple(x.shape[2:])}")
        self.on_failure, self.cap_cost, self.max_resamples = on_failure, cap_cost, max_resamples
        self.num_attacks = 0
        self.num_steps = 0
        self._cache: list[dict[bytes, tuple[float, bool]]] = [{} for _ in range(x.shape[0])]

    @property
    def num_players(self) -> int:
        return self.grid.num_players

    @property
    def num_images(self) -> int:
        return self.x.shape[0]

    @property
    def attempted(self) -> torch.Tensor:
        """``(B,)`` distinct coalitions attacked per image."""
        return torch.tensor([len(cache) for cache in self._cache])

    @property
    def failed(self) -> torch.Tensor:
        """``(B,)`` distinct coalitions whose restricted attack failed, per image."""
        return torch.tensor([sum(not ok for _, ok in cache.values()) for cache in self._cache])

    @property
    def failure_rate(self) -> torch.Tensor:
        """``(B,)`` share of the attacked coalitions that failed."""
        return self.failed / self.attempted.clamp_min(1)

    def announce(self, num_coalitions: int, what: str) -> None:
        """Log the planned work (restricted attacks × gradient steps) before it starts."""
        steps = self.attack.planned_steps(num_coalitions)
        log.info(
            "%s: up to %s restricted %s attacks (%d image(s)) x up to %s steps each = %s gradient steps",
            what,
            f"{num_coalitions:,}",
            self.attack.norm,
            self.num_images,
            f"{self.attack.steps_per_row():,}",
            f"{steps:,}",
        )

    def costs(self, coalitions: torch.Tensor, images: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``cost_b(S)`` of boolean coalitions ``(B', K, n)`` (or ``(K, n)`` for every image): float64
        ``(B', K)`` with NaN where the attack failed, and the success flags ``(B', K)``."""
        ids = list(range(self.num_images)) if images is None else [int(i) for i in images]
        if coalitions.dim() == 2:
            coalitions = coalitions.unsqueeze(0).expand(len(ids), -1, -1)
        if coalitions.dim() != 3 or coalitions.shape[0] != len(ids):
            raise ValueError(f"coalitions must have shape ({len(ids)}, K, n) or (K, n); got {tuple(coalitions.shape)}")
        keys = [[row.numpy().tobytes() for row in image_rows] for image_rows in coalitions.cpu()]
        todo: dict[tuple[int, bytes], torch.Tensor] = {}
        for b, image_keys, image_rows in zip(ids, keys, coalitions.cpu()):
            for key, row in zip(image_keys, image_rows):
                if key not in self._cache[b]:
                    todo.setdefault((b, key), row)
        if todo:
            images_todo = torch.tensor([b for b, _ in todo])
            masks = self.grid.masks(torch.stack(list(todo.values())))
            cost, success, _, steps = self.attack.attack_rows(self.model, self.x, self.target, images_todo, masks)
            self.num_attacks += len(todo)
            self.num_steps += steps
            for (b, key), c, ok in zip(todo, cost.tolist(), success.tolist()):
                self._cache[b][key] = (c, ok)
        looked_up = [[self._cache[b][key] for key in image_keys] for b, image_keys in zip(ids, keys)]
        cost = torch.tensor([[c for c, _ in row] for row in looked_up], dtype=torch.float64)
        success = torch.tensor([[ok for _, ok in row] for row in looked_up], dtype=torch.bool)
        return cost.view(len(ids), -1), success.view(len(ids), -1)

    def cost_of(self, full: bool) -> torch.Tensor:
        """``(B,)`` cost(Λ) (``full``) or cost(∅), NaN where that attack failed."""
        return self.costs(torch.full((1, self.num_players), full))[0][:, 0]

    def cap_values(self, images: Sequence[int] | None = None) -> torch.Tensor:
        """``(B',)`` the value of a failed coalition under ``"cap"``: ``cap_cost``, else cost(∅)."""
        ids = list(range(self.num_images)) if images is None else list(images)
        if self.cap_cost is not None:
            return torch.full((len(ids),), float(self.cap_cost), dtype=torch.float64)
        empty = self.cost_of(False)[ids]
        if torch.isnan(empty).any():
            bad = [ids[i] for i in torch.isnan(empty).nonzero().flatten().tolist()]
            raise ValueError(
                f"cost(∅) is undefined for image(s) {bad} (the border-only attack failed"
                + (", and beta=0 has no border" if self.grid.beta == 0 else "")
                + "): pass cap_cost=, widen the border (beta) or strengthen the attack"
            )
        return empty

    def values(
        self, coalitions: torch.Tensor, images: Sequence[int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``v_b(S)`` and the success flags: the costs, failures at the cap value under ``"cap"`` (else NaN)."""
        cost, success = self.costs(coalitions, images)
        if self.on_failure == "cap" and not bool(success.all()):
            cost = torch.where(success, cost, self.cap_values(images).unsqueeze(1))
        return cost, success


@dataclass
class RegionalAttribution:
    """Regional Shapley attributions ``φ_uv`` to the attacking cost (Wang et al., ICCV 2021, Eq. 3–4).

    Attributes:
        per_image, per_image_stderr: ``(B, n)`` ``φ`` per image and region (``n = L²``, region
            ``u·L + v``), with the sign of Eq. 3 (``Σφ = cost(Λ) − cost(∅) ≤ 0``), and standard errors.
        values, stderr: ``(n,)`` the mean over images and its standard error.
        cost_empty, cost_full: ``(B,)`` ``v(∅)``, ``v(Λ)`` as used (after ``on_failure``).
        efficiency_residual: ``(B,)`` ``Σ_uv φ_uv − (v(Λ) − v(∅))``.
        failure_rate: ``(B,)`` share of the attacked coalitions whose attack failed.
        num_dropped: ``(B,)`` samples left out (``drop``/``resample``).
        num_attacks, num_steps: restricted attacks and gradient steps run.
        estimator, norm, num_regions, on_failure: how it was computed.
    """

    per_image: torch.Tensor
    per_image_stderr: torch.Tensor
    values: torch.Tensor
    stderr: torch.Tensor
    cost_empty: torch.Tensor
    cost_full: torch.Tensor
    efficiency_residual: torch.Tensor
    failure_rate: torch.Tensor
    num_dropped: torch.Tensor
    num_attacks: int
    num_steps: int
    estimator: str
    norm: str
    num_regions: int
    on_failure: str

    @property
    def importance(self) -> torch.Tensor:
        """``(B, L, L)`` the importance ``−φ_uv`` per image (positive: allowing the region lowers the cost)."""
        return -self.per_image.view(-1, self.num_regions, self.num_regions)

    def to_dict(self, prefix: str = "regional") -> dict[str, float]:
        """Flat scalars for logging."""
        return {
            f"{prefix}/cost_empty": float(self.cost_empty.mean()),
            f"{prefix}/cost_full": float(self.cost_full.mean()),
            f"{prefix}/efficiency_residual": float(self.efficiency_residual.abs().max()),
            f"{prefix}/failure_rate": float(self.failure_rate.mean()),
            f"{prefix}/num_attacks": float(self.num_attacks),
        }


def _check_game(game: object) -> CostGame:
    if not isinstance(game, CostGame):
        raise TypeError(f"game must be a CostGame; got {type(game).__name__}")
    return game


def check_attack_budget(planned: int, max_attacks: int | None, what: str) -> None:
    """Refuse ``planned`` restricted attacks beyond the budget ``max_attacks`` (``None``: no cap) before any work."""
    if max_attacks is not None and planned > max_attacks:
        raise ValueError(
            f"{what} needs up to {planned:,} restricted attacks, more than max_attacks={max_attacks:,}; "
            "use fewer regions/samples/images or raise max_attacks"
        )


def _result(
    game: CostGame, estimator: str, per_image: torch.Tensor, stderr: torch.Tensor, dropped: torch.Tensor, before
) -> RegionalAttribution:
    empty = game.values(torch.zeros(1, game.num_players, dtype=torch.bool))[0][:, 0]
    full = game.values(torch.ones(1, game.num_players, dtype=torch.bool))[0][:, 0]
    residual = per_image.sum(dim=1) - (full - empty)
    return RegionalAttribution(
        per_image=per_image,
        per_image_stderr=stderr,
        values=per_image.mean(dim=0),
        stderr=combine_stderr(stderr, dim=0),
        cost_empty=empty,
        cost_full=full,
        efficiency_residual=residual,
        failure_rate=game.failure_rate,
        num_dropped=dropped,
        num_attacks=game.num_attacks - before[0],
        num_steps=game.num_steps - before[1],
        estimator=estimator,
        norm=game.attack.norm,
        num_regions=game.grid.num_regions,
        on_failure=game.on_failure,
    )


@dataclass
class ExactRegionalShapley:
    """Exact ``φ_uv`` from all ``2^n`` coalitions (``n = L² ≤ 16``; L = 3: 512 attacks per image).

    ``φ_uv = (1/n) Σ_{S ⊆ Λ∖{Λ_uv}} C(n−1, |S|)^{-1} [cost(S ∪ {Λ_uv}) − cost(S)]`` (Wang et al.,
    ICCV 2021, Eq. 4), from the engine's exact oracle. Only ``on_failure="cap"``.
    """

    max_attacks: int | None = 100_000

    @staticmethod
    def planned_attacks(num_players: int, resample_rounds: int = 0) -> int:
        """Restricted attacks per image: every coalition (``resample_rounds`` does not apply)."""
        return 1 << num_players

    def approximate(self, game: CostGame) -> RegionalAttribution:
        game = _check_game(game)
        n = game.num_players
        if n > MAX_EXACT_PLAYERS:
            raise ValueError(f"exact enumeration supports at most {MAX_EXACT_PLAYERS} regions; got L² = {n}")
        planned = game.num_images * self.planned_attacks(n)
        check_attack_budget(planned, self.max_attacks, f"exact attributions of {n} regions")
        game.announce(planned, "exact regional attributions")
        before = (game.num_attacks, game.num_steps)
        values, success = game.values(all_coalitions(n))
        if game.on_failure != "cap" and not bool(success.all()):
            raise ValueError(
                f"{int((~success).sum())} restricted attack(s) failed; the exact estimator uses every coalition and "
                f"cannot {game.on_failure} them: use on_failure='cap'"
            )
        per_image = exact_from_values(values).shapley
        zeros = torch.zeros(game.num_images, dtype=torch.long)
        return _result(game, "exact", per_image, torch.zeros_like(per_image), zeros, before)


def stratified_coalitions(
    num_players: int, samples_per_size: int, chain_sizes: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The reference's coalitions (``mask.py: generate_inds``), ``(R, n)`` boolean: ∅, Λ and
    ``samples_per_size`` subsets of every size ``1 … n−1``.

    Sizes ``k < chain_sizes`` come from chains grown by adding one random player at a time, sizes
    ``k > n − chain_sizes`` from chains shrunk from Λ by removing one at a time, the others are fresh
    uniform subsets. Every size-``k`` subset is uniform, so each size group estimates the mean cost of
    its size. When ``samples_per_size ≥ n``, chain ``c`` starts with player ``c mod n`` (the reference:
    "at k = n−1 sample i removes region i"; here also "at k = 1 sample i adds region i"), so every
    singleton and every ``(n−1)``-subset is present and every term of the estimator is defined.
    """
    n, count = num_players, samples_per_size

    def chains() -> torch.Tensor:
        order = sample_permutations(1, count, n, generator)[0].cpu()
        if count >= n:
            first = torch.arange(count) % n
            position = (order == first[:, None]).float().argmax(dim=1)
            order[torch.arange(count), position] = order[:, 0]
            order[:, 0] = first
        return order.argsort(dim=1)  # rank of each player in its chain

    grow, shrink = chains(), chains()
    rows = [torch.zeros(1, n, dtype=torch.bool)]
    for k in range(1, n):
        if k < chain_sizes:
            rows.append(grow < k)
        elif k > n - chain_sizes:
            rows.append(shrink >= n - k)
        else:
            rows.append(sample_subsets(torch.empty(count, 0, dtype=torch.long), k, n, generator).cpu())
    rows.append(torch.ones(1, n, dtype=torch.bool))
    return torch.cat(rows)


def _group_terms(values: torch.Tensor, member: torch.Tensor, population: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per player ``i``: the mean of ``values`` over the rows with ``member[:, i]`` and the squared
    standard error of that mean (0 when the group is its whole population of one coalition, NaN
    when one sample of a larger population)."""
    weights = member.to(torch.float64)
    count = weights.sum(dim=0)
    mean = (values @ weights) / count
    spread = ((values[:, None] - mean[None, :]) ** 2 * weights).sum(dim=0)
    variance = spread / (count - 1)
    square_se = torch.where(count >= 2, variance / count, torch.nan)
    if population == 1:
        square_se = torch.where(count >= 1, 0.0, square_se)
    return mean, square_se


class _SampledRegionalShapley:
    """The loop of the sampled estimators: budget, announcement, one estimate per image, the result.

    Subclasses are dataclasses with ``max_attacks`` and ``random_state`` and define ``name``,
    ``attacks_per_image(n)`` and ``estimate_image(game, image, generator, resample_rounds)``.
    """

    name: ClassVar[str] = ""
    max_attacks: int | None
    random_state: int | torch.Generator | None

    def attacks_per_image(self, num_players: int) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    def estimate_image(
        self, game: CostGame, image: int, generator: torch.Generator | None, resample_rounds: int
    ) -> tuple[torch.Tensor, torch.Tensor, int]:  # pragma: no cover - overridden
        """``φ`` (n,), its standard errors (n,) and the number of dropped samples of one image."""
        raise NotImplementedError

    def planned_attacks(self, num_players: int, resample_rounds: int = 0) -> int:
        """Restricted attacks per image, at most: the samples (each redrawn up to ``resample_rounds`` times), ∅, Λ."""
        return self.attacks_per_image(num_players) * (1 + resample_rounds) + 2

    def approximate(self, game: CostGame) -> RegionalAttribution:
        game = _check_game(game)
        generator = make_generator(self.random_state)
        n, batch = game.num_players, game.num_images
        resample_rounds = game.max_resamples if game.on_failure == "resample" else 0
        planned = batch * self.planned_attacks(n, resample_rounds)
        check_attack_budget(planned, self.max_attacks, f"{self.name} attributions of {n} regions")
        game.announce(planned, f"{self.name} regional attributions")
        before = (game.num_attacks, game.num_steps)
        per_image = torch.empty(batch, n, dtype=torch.float64)
        stderr = torch.empty_like(per_image)
        dropped = torch.zeros(batch, dtype=torch.long)
        for b in range(batch):
            per_image[b], stderr[b], dropped[b] = self.estimate_image(game, b, generator, resample_rounds)
        return _result(game, self.name, per_image, stderr, dropped, before)


@dataclass
class StratifiedRegionalShapley(_SampledRegionalShapley):
    """The reference's size-stratified estimator (``cal_shap.py``), every sample reused for every player.

    ``φ_i = (1/n) Σ_{k=0}^{n−1} [mean_{|T|=k+1, i∈T} cost(T) − mean_{|S|=k, i∉S} cost(S)]``: Eq. 4
    grouped by ``|S| = k`` (``(1/n) Σ_k E_{|S|=k, i∉S}[v(S ∪ {i}) − v(S)]``, and a uniform
    ``(k+1)``-subset containing ``i`` is ``S ∪ {i}`` for a uniform ``k``-subset ``S ∌ i``).
    Standard error: ``(1/n) √(Σ_k se²(group means))``, treating the size groups as independent (the
    chains make neighbouring sizes dependent, so it is approximate there). A term with an empty group
    is NaN (raise ``samples_per_size``).

    Args:
        samples_per_size: subsets of every size (the reference: 64, i.e. ``65 × 64`` attacks per image
            for 64 regions with ``∅`` and ``Λ`` once each).
        chain_sizes: sizes ``k < chain_sizes`` and ``k > n − chain_sizes`` come from chains (the reference: 10).
        max_attacks, random_state: budget and random state (an ``int`` seeds every call alike).
    """

    samples_per_size: int = 64
    chain_sizes: int = 10
    max_attacks: int | None = 100_000
    random_state: int | torch.Generator | None = None

    def __post_init__(self) -> None:
        check_int(self.samples_per_size, "samples_per_size", minimum=1)
        check_int(self.chain_sizes, "chain_sizes", minimum=0)

    name: ClassVar[str] = "stratified"

    def attacks_per_image(self, num_players: int) -> int:
        return (num_players - 1) * self.samples_per_size

    def estimate_image(
        self, game: CostGame, image: int, generator: torch.Generator | None, resample_rounds: int
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        n = game.num_players
        rows = stratified_coalitions(n, self.samples_per_size, self.chain_sizes, generator)
        values, ok = (t[0] for t in game.values(rows.unsqueeze(0), images=[image]))
        sizes = rows.sum(dim=1)
        for _ in range(resample_rounds):
            redo = (~ok & (sizes > 0) & (sizes < n)).nonzero().flatten()
            if redo.numel() == 0:
                break
            for k in sizes[redo].unique().tolist():
                at_k = redo[sizes[redo] == k]
                rows[at_k] = sample_subsets(torch.empty(at_k.numel(), 0, dtype=torch.long), k, n, generator).cpu()
            new_values, new_ok = game.values(rows[redo].unsqueeze(0), images=[image])
            values[redo], ok[redo] = new_values[0], new_ok[0]
        valid = ok if game.on_failure != "cap" else torch.ones_like(ok)
        terms, square_se = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
        for k in range(n):
            population = math.comb(n - 1, k)
            upper = valid & (sizes == k + 1)
            lower = valid & (sizes == k)
            mean_with, se_with = _group_terms(values[upper], rows[upper], population)
            mean_without, se_without = _group_terms(values[lower], ~rows[lower], population)
            terms += mean_with - mean_without
            square_se += se_with + se_without
        if torch.isnan(terms).any():
            log.warning(
                "stratified regional attributions: some φ are NaN (a size group without samples for a region); "
                "raise samples_per_size (now %d) to at least the %d regions with chain_sizes >= 2, so every "
                "singleton and every (n-1)-subset is sampled",
                self.samples_per_size,
                n,
            )
        return terms / n, square_se.sqrt() / n, int((~valid).sum())


@dataclass
class PermutationRegionalShapley(_SampledRegionalShapley):
    """Permutation sampling (Castro et al. 2009), as :class:`~lit_advgame.interactions.ShapleyApproximator`.

    Each uniform random order of the regions gives ``n + 1`` prefix coalitions and one unbiased sample
    ``cost(Pre ∪ {Λ_uv}) − cost(Pre)`` of Eq. 4 for every region; each permutation's samples add up to
    ``cost(Λ) − cost(∅)`` exactly (Eq. 3). ``drop`` leaves out a permutation with a failed prefix,
    ``resample`` replaces it by a fresh one (up to the game's ``max_resamples`` rounds).

    Args:
        num_permutations: permutations per image (``≈ num_permutations · (n − 1) + 2`` attacks).
        max_attacks, random_state: budget and random state.
    """

    num_permutations: int = 64
    max_attacks: int | None = 100_000
    random_state: int | torch.Generator | None = None

    def __post_init__(self) -> None:
        check_int(self.num_permutations, "num_permutations", minimum=2)

    name: ClassVar[str] = "permutation"

    def attacks_per_image(self, num_players: int) -> int:
        return self.num_permutations * (num_players - 1)

    def estimate_image(
        self, game: CostGame, image: int, generator: torch.Generator | None, resample_rounds: int
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        n = game.num_players
        permutations = sample_permutations(1, self.num_permutations, n, generator)[0].cpu()
        values, ok = self._prefix_values(game, image, permutations)
        for _ in range(resample_rounds):
            redo = (~ok).nonzero().flatten()
            if redo.numel() == 0:
                break
            permutations[redo] = sample_permutations(1, redo.numel(), n, generator)[0].cpu()
            values[redo], ok[redo] = self._prefix_values(game, image, permutations[redo])
        valid = ok if game.on_failure != "cap" else torch.ones_like(ok)
        steps = values[valid, 1:] - values[valid, :-1]
        contributions = torch.zeros_like(steps).scatter_(1, permutations[valid], steps)
        mean, stderr = mean_and_stderr(contributions, dim=0)
        return mean, stderr, int((~valid).sum())

    @staticmethod
    def _prefix_values(game: CostGame, image: int, permutations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Values ``(T, n+1)`` of the prefixes of the permutations and whether all their attacks succeeded ``(T,)``."""
        count, n = permutations.shape
        sizes = torch.arange(n + 1).view(1, n + 1, 1)
        prefixes = permutations.argsort(dim=1).unsqueeze(1) < sizes  # (T, n+1, n)
        values, success = game.values(prefixes.view(1, -1, n), images=[image])
        return values.view(count, n + 1), success.view(count, n + 1).all(dim=1)


ESTIMATORS: dict[str, type] = {
    "exact": ExactRegionalShapley,
    "stratified": StratifiedRegionalShapley,
    "permutation": PermutationRegionalShapley,
}
assert set(ESTIMATORS) == set(REGIONAL_ESTIMATORS)


def regional_attributions(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    norm: Norm = "l2",
    estimator: RegionalEstimator = "stratified",
    num_regions: int = 8,
    beta: float = REFERENCE_BETA,
    on_failure: FailurePolicy = "cap",
    cap_cost: float | None = None,
    max_resamples: int = 3,
    attack_options: dict[str, Any] | None = None,
    **estimator_options: Any,
) -> RegionalAttribution:
    """Regional attributions ``φ_uv`` to the cost of a targeted ``norm`` attack (Wang et al., ICCV 2021, Eq. 3–4).

    Builds a :class:`CostGame` (``attack_options`` go to the restricted attack) and runs the
    ``estimator`` (``"exact"``, ``"stratified"``, ``"permutation"``) with ``estimator_options``
    (``random_state``, ``max_attacks``, ``samples_per_size``, ``chain_sizes``, ``num_permutations``).
    """
    check_choice(estimator, "estimator", REGIONAL_ESTIMATORS)
    game = CostGame(
        model,
        x,
        target,
        norm,
        num_regions=num_regions,
        beta=beta,
        on_failure=on_failure,
        cap_cost=cap_cost,
        max_resamples=max_resamples,
        **(attack_options or {}),
    )
    return ESTIMATORS[estimator](**estimator_options).approximate(game)


def regional_magnitudes(delta: torch.Tensor, grid: RegionGrid) -> torch.Tensor:
    """``(B, L, L)`` the magnitude ``(Σ_{i∈Λ_uv} |δ_i|²)^{1/2}`` of a perturbation ``(B, C, H, W)`` in
    each region (all channels; the border left out) (Wang et al., ICCV 2021, Sec. 4.1)."""
    if delta.dim() != 4 or tuple(delta.shape[2:]) != (grid.height, grid.width):
        raise ValueError(f"delta must have shape (B, C, {grid.height}, {grid.width}); got {tuple(delta.shape)}")
    player = grid.player_map.to(delta.device).flatten()
    inside = player >= 0
    energy = delta.detach().pow(2).sum(dim=1).flatten(1)[:, inside].to(torch.float64)
    sums = torch.zeros(delta.shape[0], grid.num_players, dtype=torch.float64, device=delta.device)
    sums.index_add_(1, player[inside], energy)
    return sums.sqrt().view(-1, grid.num_regions, grid.num_regions)


def attribution_iou(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """``(B,)`` ``IoU = Σ_uv min(φ'_uv, ψ'_uv) / Σ_uv max(φ'_uv, ψ'_uv)`` of two ``(B, L, L)`` maps after
    min-max normalisation ``φ' = (φ − min φ) / (max φ − min φ)`` per image (Wang et al., ICCV 2021,
    Sec. 4.1, Table 1). Pass importances (``RegionalAttribution.importance``, high = important) or
    magnitudes (:func:`regional_magnitudes`); the orientation matters, as ``(1 − φ')`` changes the IoU.
    A constant map normalises to zeros (two of them: IoU 1); a NaN in a map gives NaN."""
    if first.shape != second.shape or first.dim() < 2:
        raise ValueError(
            f"the two maps must have the same shape (B, L, L); got {tuple(first.shape)} and {tuple(second.shape)}"
        )

    def normalise(maps: torch.Tensor) -> torch.Tensor:
        flat = maps.detach().flatten(1).to(torch.float64)
        low, high = flat.min(dim=1, keepdim=True).values, flat.max(dim=1, keepdim=True).values
        return (flat - low) / torch.where(high > low, high - low, 1.0)

    a, b = normalise(first), normalise(second)
    union = torch.maximum(a, b).sum(dim=1)
    return torch.where(union > 0, torch.minimum(a, b).sum(dim=1) / torch.where(union > 0, union, 1.0), 1.0)
