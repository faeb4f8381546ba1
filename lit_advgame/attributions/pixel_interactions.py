"""Interactions among perturbation pixels (Wang et al., ICCV 2021, Sec. 3.2, Eq. 5–9).

The game (Sec. 3.2): players are perturbation pixels or super-pixels (default ``4 x 4`` pixels, as the reference on
224 x 224), ``z(S) = g_t(x + δ∘M_S) − g_ℓ(x + δ∘M_S)``: the engine's ``"target_minus_true"`` value on a
:class:`~lit_advgame.interactions.game.PerturbationGame` (:func:`superpixel_game`).

Rewards of *groups* of players: ``groups`` maps every player to a group id ``0..m-1`` (a merged coalition is one
group), or to ``-1`` for a player outside the game, held at a fixed weight ``outside`` (1: its perturbation stays,
as the reference's patch games; 0: it is removed). Three estimators (:data:`~lit_advgame.vocabulary.RewardEstimator`):

* ``"taylor"`` (:class:`TaylorRewardApproximator`): the paper's approximation (Eq. 7–9), as the reference
  ``backward_shap_new``: each group is split into ``K`` sub-players carrying ``δ/K``; a random order removes the
  sub-players one by one from the full ``δ``; at every state the gradient ``∂z/∂w_g`` (``w_g`` = the fraction of the
  group's perturbation present; ``∂z/∂w_g · 1/K = δ_(g,k) · ∂z/∂δ_(g,k)``) credits every group. The masked inputs
  ``x + δ∘w`` with fractional ``w`` go through the engine (:meth:`MaskedGame.evaluate_rows`, chunked by the game's
  ``batch_size``).
* ``"exact"`` (all ``2^m`` coalitions, :func:`~lit_advgame.interactions.exact.exact_interactions`) and
  ``"permutation"`` (:class:`~lit_advgame.interactions.shapley.ShapleyApproximator`) on a derived perturbation game
  whose players are the groups, for checking.

Interactions (:func:`coalition_interactions`): ``I[S] = φ'_S − Σ_{i∈S} φ_i`` (Eq. 5), with ``φ'_S`` the reward of
``S`` merged into one player and ``φ_i`` (:data:`~lit_advgame.vocabulary.SingletonReward`) in the full game
(``"full_game"``, Eq. 6 and the official code, the default) or with the other members of ``S`` absent
(``"members_absent"``, the text's "contribute independently"). See :func:`coalition_interactions` for the closed
forms (a pure AND of ``{0, 1}`` gives 0 under the first, +1 under the second).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from lit_advgame.interactions.budget import DEFAULT_MAX_FORWARD_PASSES, check_budget
from lit_advgame.interactions.exact import MAX_EXACT_PLAYERS, exact_interactions
from lit_advgame.interactions.game import PerturbationGame
from lit_advgame.interactions.results import ResultMixin, ShapleyResult
from lit_advgame.interactions.shapley import ShapleyApproximator
from lit_advgame.interactions.stats import combine_stderr, mean_and_stderr
from lit_advgame.utils.checks import check_choice, check_int
from lit_advgame.utils.seeding import make_generator
from lit_advgame.vocabulary import (
    REWARD_ESTIMATORS,
    SINGLETON_REWARDS,
    TAYLOR_RULES,
    Autocast,
    RewardEstimator,
    SingletonReward,
    TaylorRule,
)

DEFAULT_SUPERPIXEL = 4
DEFAULT_SUBPLAYERS = 10


def superpixel_game(
    model: nn.Module,
    x: torch.Tensor,
    delta: torch.Tensor,
    y: torch.Tensor,
    target: torch.Tensor,
    *,
    superpixel: int = DEFAULT_SUPERPIXEL,
    batch_size: int | None = None,
    autocast: Autocast | None = None,
    channels_last: bool = False,
) -> PerturbationGame:
    """The perturbation-pixel game of Sec. 3.2: ``z(S) = g_t(x + δ∘M_S) − g_ℓ(x + δ∘M_S)`` (Wang et al., ICCV 2021).

    Players are ``superpixel x superpixel`` blocks of the perturbation (row-major, ``(H/s) x (W/s)`` players;
    ``superpixel=1``: single pixels); ``y`` is the true class ``ℓ`` and ``target`` the target ``t`` per image.
    """
    check_int(superpixel, "superpixel", minimum=1)
    height, width = x.shape[-2:]
    if height % superpixel or width % superpixel:
        raise ValueError(
            f"superpixel={superpixel} must divide the image sides ({height}x{width} pixels); "
            "choose a divisor of both, e.g. 4 on 224x224 (the reference)"
        )
    return PerturbationGame(
        model,
        x,
        delta,
        y,
        grid=(height // superpixel, width // superpixel),
        value="target_minus_true",
        target=target,
        batch_size=batch_size,
        autocast=autocast,
        channels_last=channels_last,
    )


def check_groups(groups: torch.Tensor, game: PerturbationGame, name: str = "groups") -> torch.Tensor:
    """``groups`` as a ``(B, n)`` long tensor of group ids ``>= -1`` (a shared ``(n,)`` row is expanded)."""
    if not isinstance(game, PerturbationGame):
        raise TypeError(f"game must be a PerturbationGame (the perturbation-pixel game); got {type(game).__name__}")
    n, batch = game.num_players, game.num_images
    if not isinstance(groups, torch.Tensor) or groups.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{name} must be an integer tensor of shape (n,) or (B, n) of group ids; got {groups!r}")
    if groups.dim() == 1:
        groups = groups.unsqueeze(0).expand(batch, -1)
    if groups.shape != (batch, n):
        raise ValueError(f"{name} must have shape (n,) = ({n},) or (B, n) = ({batch}, {n}); got {tuple(groups.shape)}")
    if groups.numel() and int(groups.min()) < -1:
        raise ValueError(f"{name} ids must be >= -1 (-1: a player outside the game); got {int(groups.min())}")
    if not bool((groups >= 0).any(dim=1).all()):
        raise ValueError(f"{name} must give every image at least one group (an id >= 0)")
    return groups.long().cpu()


def check_outside(outside: float | torch.Tensor, groups: torch.Tensor, name: str = "outside") -> torch.Tensor:
    """Weights ``(B, n)`` in [0, 1] of the players outside the game (``groups == -1``)."""
    weights = torch.as_tensor(outside, dtype=torch.float64).cpu()
    if weights.shape not in ((), groups.shape[1:], groups.shape):
        raise ValueError(f"{name} must be a float, (n,) or (B, n) = {tuple(groups.shape)}; got {tuple(weights.shape)}")
    if not bool(((weights >= 0) & (weights <= 1)).all()):
        raise ValueError(f"{name} must be a weight in [0, 1] (a float, (n,) or (B, n)); got {outside!r}")
    return weights.expand(groups.shape).clone()


def _shapley_result(per_image: torch.Tensor, per_image_stderr: torch.Tensor, count: int, passes: int) -> ShapleyResult:
    aggregated = (per_image.mean(dim=0), combine_stderr(per_image_stderr, dim=0))
    return ShapleyResult(*aggregated, per_image, per_image_stderr, num_permutations=count, num_forward_passes=passes)


@dataclass
class TaylorRewardApproximator:
    """Rewards of groups of perturbation pixels by the paper's gradient approximation (ICCV 2021, Eq. 7–9).

    Args:
        num_subplayers: ``K``, sub-players per group, each carrying ``δ/K`` (reference 10).
        num_permutations: ``T``, random removal orders per image (reference 1; ``>= 2`` gives standard errors).
        rule: ``"reference"`` (Eq. 9: every state after each removal credits every group, as
            ``backward_shap_new``), ``"trapezoid"`` (Eq. 9 over all ``mK + 1`` states, the end states at half
            weight: exact in expectation for bilinear games) or ``"removal"`` (Eq. 7 by permutation sampling: each
            removal credits the removed sub-player only, with the mean gradient of the states before and after it;
            per order ``Σ_g φ_g`` is the trapezoid path integral ``≈ z(N) − z(∅)``, hence far less variance).
        max_forward_passes: the budget (refused before any work when exceeded; ``None``: no cap).
        random_state: an ``int`` seeds a fresh generator for every call, a ``torch.Generator`` continues its
            stream, ``None`` uses the global RNG.
    """

    num_subplayers: int = DEFAULT_SUBPLAYERS
    num_permutations: int = 1
    rule: TaylorRule = "reference"
    max_forward_passes: int | None = DEFAULT_MAX_FORWARD_PASSES
    random_state: int | torch.Generator | None = None

    def __post_init__(self) -> None:
        check_int(self.num_subplayers, "num_subplayers", minimum=1)
        check_int(self.num_permutations, "num_permutations", minimum=1)
        check_choice(self.rule, "rule", TAYLOR_RULES)

    def planned_forward_passes(self, groups: torch.Tensor) -> int:
        """Masked inputs (each a forward and a backward pass) for checked ``groups`` ``(B, n)``."""
        used = [torch.unique(row[row >= 0]).numel() for row in groups]
        return sum(m * self.num_subplayers + (self.rule != "reference") for m in used) * self.num_permutations

    def approximate(
        self, game: PerturbationGame, groups: torch.Tensor, outside: float | torch.Tensor = 1.0
    ) -> ShapleyResult:
        """``φ_g ≈ (1/(mKT)) Σ_t Σ_s c_s · ∂z/∂w_g |_{state s of order t}`` (Wang et al., ICCV 2021, Eq. 9).

        ``φ_g = K·φ_(g,k)`` (Eq. 7 for a player, Eq. 8 for a component: the ``K`` sub-players of a group are
        symmetric); the marginal ``z(S ∪ {(g,k)}) − z(S)`` is approximated by ``δ_(g,k) · ∂z(S)/∂δ_(g,k)`` =
        ``∂z/∂w_g / K``. One removal order gives one state of every size ``s`` (a uniformly random set of
        sub-players); ``c_s`` is 1 (``rule="reference"``, states ``s = 0..mK−1``) or the trapezoid weights over
        ``s = 0..mK``; ``rule="removal"`` is Eq. 7 by permutation sampling instead (see the class). Returns a
        :class:`~lit_advgame.interactions.results.ShapleyResult` over the groups (``per_image`` ``(B, m)``, ``m`` =
        the largest group id + 1; a group absent from an image gets 0).
        """
        groups = check_groups(groups, game)
        weights_outside = check_outside(outside, groups)
        planned = self.planned_forward_passes(groups)
        check_budget(planned, self.max_forward_passes, f"{self.num_permutations} removal orders of sub-players")
        generator = make_generator(self.random_state)
        game.resolve_classes()
        before = game.forward_passes
        batch, m_all, count, k = game.num_images, int(groups.max()) + 1, self.num_permutations, self.num_subplayers
        samples = torch.zeros(batch, count, m_all, dtype=torch.float64)
        for b in range(batch):
            used, relabel = torch.unique(groups[b], return_inverse=True)  # contiguous ids; -1 stays first
            inside = used >= 0
            relabel, used = relabel - int((~inside).sum()), used[inside]
            m = used.numel()
            for t in range(count):
                order = torch.arange(m).repeat_interleave(k)[torch.randperm(m * k, generator=generator)]
                removed = torch.nn.functional.one_hot(order, m).cumsum(dim=0)
                counts = torch.cat([torch.zeros(1, m, dtype=torch.long), removed])  # (mK + 1, m) removed so far
                if self.rule == "reference":
                    counts = counts[1:]
                gradients = self._gradients(game, b, (k - counts).double() / k, relabel, weights_outside[b])
                if self.rule == "removal":  # Eq. 7: the removed sub-player's marginal, trapezoid over its step
                    steps = (gradients[:-1] + gradients[1:]).gather(1, order.unsqueeze(1)).squeeze(1) / (2 * k)
                    samples[b, t, used] = torch.zeros(m, dtype=torch.float64).index_add_(0, order, steps)
                    continue
                state_weights = torch.ones(counts.shape[0], dtype=torch.float64)
                if self.rule == "trapezoid":
                    state_weights[[0, -1]] = 0.5
                samples[b, t, used] = (state_weights @ gradients) / (m * k)
        per_image, per_image_stderr = mean_and_stderr(samples, dim=1)
        return _shapley_result(per_image, per_image_stderr, count, game.forward_passes - before)

    @staticmethod
    def _gradients(
        game: PerturbationGame, image: int, group_weights: torch.Tensor, groups: torch.Tensor, outside: torch.Tensor
    ) -> torch.Tensor:
        """``∂z/∂w_g`` ``(R, m)`` at the states ``group_weights`` ``(R, m)`` of one image, chunk by chunk."""
        dtype, device = game.present.dtype, game.device
        inside = (groups >= 0).to(device)
        index = groups.clamp(min=0).to(device)
        fixed = outside.to(device=device, dtype=dtype)
        out = []
        for start in range(0, group_weights.shape[0], game.batch_size):
            chunk = group_weights[start : start + game.batch_size].to(device=device, dtype=dtype).requires_grad_(True)
            rows = torch.where(inside, chunk.index_select(1, index), fixed)  # fractional coalitions x + δ∘w
            images = torch.full((rows.shape[0],), image, dtype=torch.long, device=device)
            values = game.evaluate_rows(rows, images, grad=True)
            (gradient,) = torch.autograd.grad(values.sum(), chunk)
            out.append(gradient.detach().double().cpu())
        return torch.cat(out)


def derived_game(game: PerturbationGame, image: int, groups: torch.Tensor, outside: torch.Tensor) -> PerturbationGame:
    """A one-image perturbation game whose players are the used groups of ``groups`` ``(n,)`` (relabelled in
    increasing id order), plus one dummy player (``δ = 0``) for the players outside the game, whose perturbation
    is moved into the clean image at weight ``outside`` (0 or 1)."""
    if not bool(((outside == 0) | (outside == 1)).all()):
        raise ValueError("outside must be 0 or 1 for the exact and permutation estimators (fractional: 'taylor')")
    game.resolve_classes()
    cells = game.player_map
    inside = groups >= 0
    _, relabel = torch.unique(groups[inside], return_inverse=True)
    ids = torch.full_like(groups, int(relabel.max()) + 1)
    ids[inside] = relabel
    player_map = ids.to(cells.device)[cells]
    x, delta = game.absent[image : image + 1], game.delta[image : image + 1].detach()
    keep = inside.to(x.dtype).to(x.device)[cells]
    moved = ((~inside).to(x.dtype) * outside.to(x.dtype)).to(x.device)[cells]
    second = game.targets[image : image + 1] if game.value.second_class == "given" else None
    return PerturbationGame(
        game.model,
        x + delta * moved,
        delta * keep,
        game.labels[image : image + 1],
        player_map=player_map,
        value=game.value,  # type: ignore[arg-type]  # resolve_value keeps a ValueFunction
        target=second,
        batch_size=game.batch_size,
        autocast=game.autocast,
        channels_last=game.channels_last,
    )


def group_rewards(
    game: PerturbationGame,
    groups: torch.Tensor,
    outside: float | torch.Tensor = 1.0,
    *,
    estimator: RewardEstimator = "taylor",
    num_subplayers: int = DEFAULT_SUBPLAYERS,
    num_permutations: int = 1,
    rule: TaylorRule = "reference",
    max_forward_passes: int | None = DEFAULT_MAX_FORWARD_PASSES,
    random_state: int | torch.Generator | None = None,
) -> ShapleyResult:
    """Shapley rewards ``φ_g`` of the groups of players (Wang et al., ICCV 2021, Eq. 6), ``per_image`` ``(B, m)``.

    ``estimator``: ``"taylor"`` (Eq. 7–9, :class:`TaylorRewardApproximator` with ``num_subplayers``,
    ``num_permutations``, ``rule``), ``"exact"`` (``2^(m+1)`` coalitions, at most 15 groups) or ``"permutation"``
    (``num_permutations`` permutations of the groups, Castro et al. 2009); the last two need ``outside`` in {0, 1}.
    """
    check_choice(estimator, "estimator", REWARD_ESTIMATORS)
    if estimator == "taylor":
        taylor = TaylorRewardApproximator(num_subplayers, num_permutations, rule, max_forward_passes, random_state)
        return taylor.approximate(game, groups, outside)
    groups = check_groups(groups, game)
    weights_outside = check_outside(outside, groups)
    generator = make_generator(random_state)
    m_all = int(groups.max()) + 1
    per_image = torch.zeros(game.num_images, m_all, dtype=torch.float64)
    per_image_stderr = torch.zeros_like(per_image)
    passes = 0
    for b in range(game.num_images):
        used = torch.unique(groups[b][groups[b] >= 0])
        if estimator == "exact" and used.numel() + 1 > MAX_EXACT_PLAYERS:
            raise ValueError(f"estimator='exact' takes at most {MAX_EXACT_PLAYERS - 1} groups; got {used.numel()}")
        sub = derived_game(game, b, groups[b], weights_outside[b])
        if sub.num_players == 1:  # one group and nothing outside: φ = z(N) − z(∅)
            ends = sub.evaluate(torch.tensor([[True], [False]]))[0].double().cpu()
            per_image[b, used] = ends[0] - ends[1]
        elif estimator == "exact":
            exact = exact_interactions(sub, max_forward_passes=max_forward_passes)
            per_image[b, used] = exact.shapley[0, : used.numel()]
        else:
            approximator = ShapleyApproximator(num_permutations, max_forward_passes, generator)
            result = approximator.approximate(sub)
            per_image[b, used] = result.per_image[0, : used.numel()]
            per_image_stderr[b, used] = result.per_image_stderr[0, : used.numel()]
        passes += sub.forward_passes
    return _shapley_result(per_image, per_image_stderr, num_permutations, passes)


@dataclass
class CoalitionInteractionResult(ResultMixin):
    """Interactions ``I[S] = φ'_S − Σ_{i∈S} φ_i`` of ``C`` coalitions (Wang et al., ICCV 2021, Eq. 5).

    Attributes:
        values: ``(C,)`` ``I[S]`` averaged over the images; ``per_image`` ``(B, C)``.
        merged_reward: ``(B, C)`` ``φ'_S`` (``S`` merged into one player).
        singleton_sum: ``(B, C)`` ``Σ_{i∈S} φ_i`` under ``singleton``.
        singleton, estimator: the definitions used; ``num_forward_passes``: masked inputs evaluated.
    """

    values: torch.Tensor
    per_image: torch.Tensor
    merged_reward: torch.Tensor
    singleton_sum: torch.Tensor
    singleton: str
    estimator: str
    num_forward_passes: int = field(default=0)

    def to_dict(self, prefix: str = "interaction") -> dict[str, float]:
        out = {f"{prefix}/coalition{c}": float(v) for c, v in enumerate(self.values.tolist())}
        out[f"{prefix}/num_forward_passes"] = float(self.num_forward_passes)
        return out


def merged_groups(num_players: int, coalition: torch.Tensor) -> torch.Tensor:
    """Group ids ``(n,)`` with the players of ``coalition`` (boolean ``(n,)``) merged into group 0, the others
    single groups ``1..n−|S|`` in increasing player order."""
    groups = torch.empty(num_players, dtype=torch.long)
    groups[coalition] = 0
    groups[~coalition] = torch.arange(1, num_players - int(coalition.sum()) + 1)
    return groups


def coalition_interactions(
    game: PerturbationGame,
    coalitions: torch.Tensor,
    *,
    singleton: SingletonReward = "full_game",
    estimator: RewardEstimator = "taylor",
    **options: object,
) -> CoalitionInteractionResult:
    """``I[S] = φ'_S − Σ_{i∈S} φ_i`` (Wang et al., ICCV 2021, Eq. 5, rewards by Eq. 6) for each coalition.

    ``coalitions``: boolean ``(C, n)`` (shared by the images), each of at least 2 players. ``φ'_S`` is the reward
    of ``S`` merged into one player in the game of ``n' = n − |S| + 1`` players (Eq. 6). ``φ_i``:

    * ``"full_game"`` (default; Eq. 6 and the official code): the Shapley value of ``i`` among all ``n`` players.
      With the Harsanyi dividends ``a(T)`` of ``z``: ``I[S] = Σ_{T: |T∩S| ≥ 2} a(T) (1/(|T\\S|+1) − |T∩S|/|T|)``;
      every coefficient is ``<= 0`` and it is 0 for ``T ⊆ S``: interactions inside ``S`` cancel, so a pure AND of
      ``S = {0, 1}`` (``z = 1`` iff both present) gives ``I[S] = 1 − (1/2 + 1/2) = 0``.
    * ``"members_absent"``: the Shapley value of ``i`` in the game without the other members of ``S`` (their
      perturbation removed): ``I[S] = Σ_{T: |T∩S| ≥ 2} a(T) / (|T\\S|+1)`` (for a pair, the Shapley interaction
      index); the pure AND of ``{0, 1}`` gives ``I[S] = 1 − 0 = +1``.

    ``estimator`` and ``options`` (``num_subplayers``, ``num_permutations``, ``rule``, ``max_forward_passes``,
    ``random_state``) as :func:`group_rewards`. Cost: one reward run per coalition, plus one (``"full_game"``) or
    ``|S|`` per coalition (``"members_absent"``).
    """
    check_choice(singleton, "singleton", SINGLETON_REWARDS)
    n = game.num_players
    if not isinstance(coalitions, torch.Tensor) or coalitions.dtype != torch.bool or coalitions.dim() != 2:
        raise TypeError(f"coalitions must be a boolean tensor of shape (C, n) with n = {n}")
    if coalitions.shape[1] != n or coalitions.shape[0] == 0:
        raise ValueError(f"coalitions must have shape (C, n) = (C >= 1, {n}); got {tuple(coalitions.shape)}")
    coalitions = coalitions.cpu()
    if bool((coalitions.sum(dim=1) < 2).any()):
        raise ValueError("every coalition needs at least 2 players (an interaction of one player is 0)")
    before = game.forward_passes
    batch, count = game.num_images, coalitions.shape[0]
    merged = torch.empty(batch, count, dtype=torch.float64)
    singles = torch.zeros(batch, count, dtype=torch.float64)
    full = None
    if singleton == "full_game":
        full = group_rewards(game, torch.arange(n), estimator=estimator, **options).per_image  # type: ignore[arg-type]
    for c, coalition in enumerate(coalitions):
        rewards = group_rewards(game, merged_groups(n, coalition), estimator=estimator, **options)  # type: ignore[arg-type]
        merged[:, c] = rewards.per_image[:, 0]
        if full is not None:
            singles[:, c] = full[:, coalition].sum(dim=1)
            continue
        for i in coalition.nonzero().flatten().tolist():
            others = coalition.clone()
            others[i] = False
            groups = torch.where(others, -1, torch.arange(n))  # the other members absent
            rewards = group_rewards(game, groups, 0.0, estimator=estimator, **options)  # type: ignore[arg-type]
            singles[:, c] += rewards.per_image[:, i]
    interaction = merged - singles
    return CoalitionInteractionResult(
        values=interaction.mean(dim=0),
        per_image=interaction,
        merged_reward=merged,
        singleton_sum=singles,
        singleton=singleton,
        estimator=estimator,
        num_forward_passes=game.forward_passes - before,
    )
