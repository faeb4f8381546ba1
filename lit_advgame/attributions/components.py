"""Perturbation components (Wang et al., ICCV 2021, Sec. 3.2 and supplement C) and their analysis.

:func:`extract_components` decomposes the perturbation of each image into components by hierarchical greedy
merging of ``q`` neighbouring players/components with strong interactions ``|I[S]|`` (Eq. 5), as the reference
(``codes/interaction/run.py``: ``patch_shap``, ``global_shap``, ``cluster``), with its defaults in
:class:`ComponentSettings`:

1. *First step, inside patches*: the player grid is split into ``patch_grid`` patches (reference 8 x 8 patches of
   7 x 7 super-pixels on 224 x 224). Candidates are all windows of ``q`` neighbouring players (2 x 2 for ``q = 4``)
   inside a patch. Candidates with the same offset modulo twice the window (16 patterns for 2 x 2) are disjoint and
   far apart; each pattern is split at random into ``groups_per_round`` halves, and the candidates of a half are
   merged together in one game of the patch's players (the players outside the patch keep their perturbation), so
   their rewards ``φ'_S`` come from one run (supplement B.4). The top ``first_keep`` share of a patch's candidates
   by ``|I[S]|`` (``γ`` with ``E_S[1(|I[S]| > γ)] = 0.2``) are kept greedily when they do not overlap a kept one.
2. *Next steps, global*: each candidate is a component and its ``q − 1`` nearest components (centres of mass); a
   round takes candidates whose members and their nearest components are not yet used (those neighbours stay
   present, the paper's "kept the nearest component of each component in S_c always present"), the other
   components are single players; rounds go on until ``coverage`` of the components were candidate centres. The
   top ``keep`` share by ``|I[S]|`` is kept greedily without overlap. Steps repeat up to components of
   ``max_size`` players (``q, q², …``). As the reference, players and components not kept drop out.

``φ_i`` of Eq. 5 is ``singleton="full_game"`` (default; the reward of each member in the game of all current
players/components of the step) or ``"members_absent"`` (per round, ``q`` extra games, each with one member of every
candidate present and the others absent); the reference instead subtracts the members' rewards stored at the
previous step. Note (:func:`~lit_advgame.attributions.pixel_interactions.coalition_interactions`): under
``"full_game"`` interactions *inside* a candidate cancel, so ``|I|`` ranks candidates by how much they cut
interactions with their surroundings; ``"members_absent"`` ranks them by the interactions among their members.

Analysis: :func:`component_effects` (the change of the true-class and target logits when a component is removed
from ``δ``: "decreases the label" if ``Δy_ℓ > Δy_t``), :func:`foreground_share` (a component is in the foreground
when more than half of its pixels are, as ``generate_info.py``), :func:`foreground_mask_from_image` (digits/MNIST).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
from matplotlib.figure import Figure
from pytorch_lightning.utilities import rank_zero_info

from lit_advgame.attributions.pixel_interactions import TaylorRewardApproximator, derived_game
from lit_advgame.interactions.game import PerturbationGame
from lit_advgame.interactions.players import grid_player_map, grid_shape
from lit_advgame.interactions.results import ResultMixin
from lit_advgame.utils.checks import check_choice, check_int
from lit_advgame.utils.seeding import make_generator
from lit_advgame.vocabulary import SINGLETON_REWARDS, SingletonReward


def check_fraction(value: float, name: str) -> None:
    """``value`` must be a number in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a fraction in [0, 1]; got {value!r}")


@dataclass
class ComponentSettings:
    """Settings of :func:`extract_components`, with the reference's defaults (``main_interaction.py``).

    Args:
        q: players/components merged per step (``component_size``, paper ``q = 4``); ``>= 2``.
        patch_grid: ``P`` or ``(P_h, P_w)`` patches of the player grid for the first step (``patch_num = 8``).
        first_keep: share of a patch's first-step candidates kept by ``|I|`` (``cluster_patch_threshold = 0.2``).
        keep: share of the later steps' candidates kept (``cluster_global_threshold = 0.5``).
        coverage: a later step samples rounds until this share of components were candidate centres (0.9).
        max_size: players per component at the last step (``stop = 64`` for 4 x 4 super-pixels).
        groups_per_round: random parts each first-step pattern is split into (``GROUPS = 2``).
        singleton: ``φ_i`` of Eq. 5 (``"full_game"`` or ``"members_absent"``, see the module docstring).
        estimator: the Taylor reward estimator (Eq. 7–9; the reference's ``K = 10``, one order, ``"reference"``
            rule); its budget applies to each reward run, its ``random_state`` is replaced by this one's.
        random_state: seeds the removal orders, the splits of the patterns and the order of candidates.
    """

    q: int = 4
    patch_grid: int | tuple[int, int] = 8
    first_keep: float = 0.2
    keep: float = 0.5
    coverage: float = 0.9
    max_size: int = 64
    groups_per_round: int = 2
    singleton: SingletonReward = "full_game"
    estimator: TaylorRewardApproximator = field(default_factory=TaylorRewardApproximator)
    random_state: int | torch.Generator | None = None

    def __post_init__(self) -> None:
        check_int(self.q, "q", minimum=2)
        check_int(self.max_size, "max_size", minimum=self.q)
        check_int(self.groups_per_round, "groups_per_round", minimum=1)
        for name in ("first_keep", "keep", "coverage"):
            check_fraction(getattr(self, name), name)
        check_choice(self.singleton, "singleton", SINGLETON_REWARDS)
        if not isinstance(self.estimator, TaylorRewardApproximator):
            raise TypeError(f"estimator must be a TaylorRewardApproximator; got {type(self.estimator).__name__}")

    @property
    def window(self) -> tuple[int, int]:
        """First-step window ``(a, b)``, ``a · b = q``, ``a`` the largest divisor of ``q`` up to ``√q`` (2 x 2)."""
        rows = max(d for d in range(1, math.isqrt(self.q) + 1) if self.q % d == 0)
        return rows, self.q // rows


@dataclass
class ComponentResult(ResultMixin):
    """Perturbation components of ``B`` images.

    Attributes:
        component_map: ``(B, n)`` component id of every player, ``-1`` for players in no component.
        rewards: per image, ``(m_b,)`` ``φ'`` of each component at its last merge.
        interactions: per image, ``(m_b,)`` ``I[S]`` of each component at its last merge.
        steps: per image, the number of components after each step.
        num_forward_passes: masked inputs evaluated.
    """

    component_map: torch.Tensor
    rewards: list[torch.Tensor]
    interactions: list[torch.Tensor]
    steps: list[list[int]]
    num_forward_passes: int = field(default=0)

    def components(self, image: int) -> list[torch.Tensor]:
        """Player ids of each component of ``image``."""
        row = self.component_map[image]
        return [(row == c).nonzero().flatten() for c in range(int(row.max()) + 1)]

    def to_dict(self, prefix: str = "components") -> dict[str, float]:
        counts = [len(r) for r in self.rewards]
        return {f"{prefix}/count": sum(counts) / len(counts), f"{prefix}/num_forward_passes": self.num_forward_passes}


def _grid_of(game: PerturbationGame) -> tuple[int, int]:
    """``(L_h, L_w)`` of a game whose players form a grid (as :func:`superpixel_game`); else a ``ValueError``."""
    pmap = game.player_map.cpu()
    rows, cols = torch.unique(pmap[:, 0]).numel(), torch.unique(pmap[0, :]).numel()
    height, width = pmap.shape
    if rows * cols != game.num_players or not torch.equal(pmap, grid_player_map(height, width, (rows, cols))):
        raise ValueError("extract_components needs a game whose players form a grid (e.g. superpixel_game)")
    return rows, cols


def _centres(game: PerturbationGame) -> torch.Tensor:
    """``(n, 2)`` centre of mass (row, column) of every player's pixels."""
    pmap = game.player_map.cpu().flatten()
    height, width = game.player_map.shape
    coords = torch.stack(torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij"), -1)
    sums = torch.zeros(game.num_players, 2, dtype=torch.float64).index_add_(0, pmap, coords.view(-1, 2).double())
    return sums / torch.bincount(pmap, minlength=game.num_players).unsqueeze(1)


def patch_windows(
    grid: tuple[int, int], settings: ComponentSettings
) -> list[tuple[torch.Tensor, list[list[list[int]]]]]:
    """First-step candidates: per patch, its players and its windows of ``q`` players grouped by their offset
    modulo twice the window (each group disjoint and spread out)."""
    rows, cols = grid
    patches = grid_shape(settings.patch_grid)
    if patches[0] > rows or patches[1] > cols:
        raise ValueError(f"patch_grid={settings.patch_grid!r} has more patches than the {rows}x{cols} players per side")
    patch_of = grid_player_map(rows, cols, patches).flatten()
    a, b = settings.window
    out = []
    for patch in range(int(patch_of.max()) + 1):
        windows: dict[tuple[int, int], list[list[int]]] = {}
        for r in range(rows - a + 1):
            for c in range(cols - b + 1):
                cells = [(r + i) * cols + c + j for i in range(a) for j in range(b)]
                if all(int(patch_of[p]) == patch for p in cells):
                    windows.setdefault((r % (2 * a), c % (2 * b)), []).append(cells)
        out.append(((patch_of == patch).nonzero().flatten(), list(windows.values())))
    return out


def first_step_cost(grid: tuple[int, int], settings: ComponentSettings) -> int:
    """Masked inputs (each a forward and a backward pass) of the first step on one image (the later steps, on
    fewer and larger components, cost less)."""
    k, extra = settings.estimator.num_subplayers, int(settings.estimator.rule != "reference")
    games = settings.q if settings.singleton == "members_absent" else 0  # extra games per round
    total = 0
    for inside, windows in patch_windows(grid, settings):
        if settings.singleton == "full_game" and windows:
            total += inside.numel() * k + extra
        for pattern in windows:
            size = math.ceil(len(pattern) / settings.groups_per_round)
            for part in range(0, len(pattern), size):
                chosen = len(pattern[part : part + size])
                groups = inside.numel() - (settings.q - 1) * chosen
                total += (groups * k + extra) * (1 + games)
    return total * settings.estimator.num_permutations


class _Extractor:
    """The steps of :func:`extract_components` on the one-image game ``game``."""

    def __init__(self, game: PerturbationGame, settings: ComponentSettings, generator: torch.Generator | None):
        self.game, self.settings, self.generator = game, settings, generator
        self.n = game.num_players
        self.taylor = replace(settings.estimator, random_state=generator)
        self.centres = _centres(game)

    def rewards(self, groups: torch.Tensor, outside: torch.Tensor) -> torch.Tensor:
        result = self.taylor.approximate(self.game, groups, outside)
        return result.per_image[0]

    def play(self, candidates: list[list[torch.Tensor]], singles: list[torch.Tensor]):
        """``φ'`` of the disjoint ``candidates`` (lists of member player sets) merged in one game with ``singles``
        single players; the other players keep their perturbation. Returns ``(φ', Σ φ_i)`` when
        ``singleton="members_absent"``, else ``(φ', None)``."""
        groups = torch.full((self.n,), -1, dtype=torch.long)
        for c, members in enumerate(candidates):
            groups[torch.cat(members)] = c
        for s, players in enumerate(singles):
            groups[players] = len(candidates) + s
        merged = self.rewards(groups, torch.ones(self.n))[: len(candidates)]
        if self.settings.singleton == "full_game":
            return merged, None
        singles_sum = torch.zeros(len(candidates), dtype=torch.float64)
        for slot in range(self.settings.q):
            groups_j, outside = groups.clone(), torch.ones(self.n)
            for members in candidates:
                absent = torch.cat([p for j, p in enumerate(members) if j != slot])
                groups_j[absent], outside[absent] = -1, 0.0
            singles_sum += self.rewards(groups_j, outside)[: len(candidates)]
        return merged, singles_sum

    def full_game(self, units: list[torch.Tensor]) -> torch.Tensor:
        """``φ`` of every unit (player set) in the game of all ``units`` (the rest keep their perturbation)."""
        groups = torch.full((self.n,), -1, dtype=torch.long)
        for u, players in enumerate(units):
            groups[players] = u
        return self.rewards(groups, torch.ones(self.n))[: len(units)]

    @staticmethod
    def select(candidates: list[list[int]], scores: torch.Tensor, share: float) -> list[int]:
        """Greedy: the top ``int(C · share)`` candidates by ``|I|`` that overlap no earlier kept one."""
        kept, used = [], set()
        for c in scores.abs().argsort(descending=True, stable=True)[: int(len(candidates) * share)].tolist():
            if used.isdisjoint(candidates[c]):
                kept.append(c)
                used.update(candidates[c])
        return kept

    # ------------------------------------------------------------------ first step
    def first_step(self) -> tuple[list[torch.Tensor], list[float], list[float]]:
        settings = self.settings
        components, rewards, interactions = [], [], []
        for inside, windows in patch_windows(_grid_of(self.game), settings):
            candidates, merged, singles_sum = [], [], []
            for pattern in windows:
                order = torch.randperm(len(pattern), generator=self.generator).tolist()
                size = math.ceil(len(pattern) / settings.groups_per_round)
                for part in range(0, len(pattern), size):
                    chosen = [pattern[i] for i in order[part : part + size]]
                    taken = {p for cells in chosen for p in cells}
                    singles = [p.view(1) for p in inside if int(p) not in taken]
                    phi, absent_sum = self.play([[torch.tensor([p]) for p in cells] for cells in chosen], singles)
                    candidates += chosen
                    merged.append(phi)
                    singles_sum.append(absent_sum)
            if not candidates:
                continue
            merged_t = torch.cat(merged)
            if settings.singleton == "full_game":
                full = torch.zeros(self.n, dtype=torch.float64)
                full[inside] = self.full_game([p.view(1) for p in inside])
                sums = torch.stack([full[cells].sum() for cells in candidates])
            else:
                sums = torch.cat(singles_sum)
            scores = merged_t - sums
            for c in self.select(candidates, scores, settings.first_keep):
                components.append(torch.tensor(candidates[c]))
                rewards.append(float(merged_t[c]))
                interactions.append(float(scores[c]))
        return components, rewards, interactions

    # ------------------------------------------------------------------ later steps
    def global_step(self, components: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[float], list[float]]:
        settings, q = self.settings, self.settings.q
        count = len(components)
        if count < q:
            return [], [], []
        centres = torch.stack([self.centres[c].mean(dim=0) for c in components])
        distance = torch.cdist(centres, centres)
        distance.fill_diagonal_(float("inf"))
        nearest = distance.argsort(dim=1, stable=True)[:, : q - 1].tolist()
        candidates: list[list[int]] = []
        merged, singles_sum = [], []
        centred: set[int] = set()
        while len(centred) < settings.coverage * count:
            blocked: set[int] = set()
            round_candidates = []
            for i in torch.randperm(count, generator=self.generator).tolist():
                if i in centred or i in blocked or not blocked.isdisjoint(nearest[i]):
                    continue
                round_candidates.append([i, *nearest[i]])
                centred.add(i)
                blocked.update([i, *nearest[i]])
                for j in nearest[i]:
                    blocked.update(nearest[j])
            if not round_candidates:
                break
            singles = [components[u] for u in range(count) if u not in blocked]
            members = [[components[u] for u in cand] for cand in round_candidates]
            phi, absent_sum = self.play(members, singles)
            candidates += round_candidates
            merged.append(phi)
            singles_sum.append(absent_sum)
        if not candidates:
            return [], [], []
        merged_t = torch.cat(merged)
        if settings.singleton == "full_game":
            full = self.full_game(components)
            sums = torch.stack([full[cand].sum() for cand in candidates])
        else:
            sums = torch.cat(singles_sum)
        scores = merged_t - sums
        kept = self.select(candidates, scores, settings.keep)
        return (
            [torch.cat([components[u] for u in candidates[c]]) for c in kept],
            [float(merged_t[c]) for c in kept],
            [float(scores[c]) for c in kept],
        )


def extract_components(game: PerturbationGame, settings: ComponentSettings | None = None) -> ComponentResult:
    """Perturbation components of every image of ``game`` (Wang et al., ICCV 2021, Sec. 3.2 and supplement C).

    Hierarchical greedy merging by ``|I[S]|`` (Eq. 5, rewards by the Taylor approximation of Eq. 7–9), as described
    in the module docstring. ``game``: a perturbation game on a grid of players (:func:`superpixel_game`).
    """
    settings = ComponentSettings() if settings is None else settings
    if not isinstance(settings, ComponentSettings):
        raise TypeError(f"settings must be a ComponentSettings; got {type(settings).__name__}")
    grid = _grid_of(game)
    per_image = first_step_cost(grid, settings)
    rank_zero_info(
        f"perturbation components: {game.num_images} images x about {per_image:,} masked inputs (forward and "
        f"backward) in the first step on {grid[0]}x{grid[1]} players; later steps cost less"
    )
    generator = make_generator(settings.random_state)
    component_map = torch.full((game.num_images, game.num_players), -1, dtype=torch.long)
    all_rewards, all_interactions, all_steps = [], [], []
    passes = 0
    for b in range(game.num_images):
        sub = derived_game(game, b, torch.arange(game.num_players), torch.ones(game.num_players))
        extractor = _Extractor(sub, settings, generator)
        components, rewards, interactions = extractor.first_step()
        steps, size = [len(components)], settings.q
        while size * settings.q <= settings.max_size and components:
            components, rewards, interactions = extractor.global_step(components)
            steps.append(len(components))
            size *= settings.q
        for c, players in enumerate(components):
            component_map[b, players] = c
        all_rewards.append(torch.tensor(rewards, dtype=torch.float64))
        all_interactions.append(torch.tensor(interactions, dtype=torch.float64))
        all_steps.append(steps)
        passes += sub.forward_passes
    return ComponentResult(component_map, all_rewards, all_interactions, all_steps, passes)


@dataclass
class ComponentEffects(ResultMixin):
    """Effect of removing each component from ``δ`` (Wang et al., ICCV 2021, Sec. 4.2, Table 3).

    Attributes (per image, ``(m_b,)``):
        delta_true: ``Δy_ℓ = |g_ℓ(x + δ) − g_ℓ(x + δ∘M_{Ω \\ C})|``.
        delta_target: ``Δy_t = |g_t(x + δ) − g_t(x + δ∘M_{Ω \\ C})|``.
        decreases_true: ``Δy_ℓ > Δy_t`` (the component mainly decreases the true class; else it mainly increases
            the target).
    """

    delta_true: list[torch.Tensor]
    delta_target: list[torch.Tensor]
    decreases_true: list[torch.Tensor]

    def share_decreasing_true(self) -> float:
        """Share of all components (pooled over images) that mainly decrease the true class."""
        flags = torch.cat(self.decreases_true)
        return float(flags.double().mean()) if flags.numel() else float("nan")

    def to_dict(self, prefix: str = "components") -> dict[str, float]:
        return {f"{prefix}/share_decreasing_true": self.share_decreasing_true()}


def component_effects(game: PerturbationGame, component_map: torch.Tensor) -> ComponentEffects:
    """``Δy_ℓ``, ``Δy_t`` of every component (ICCV 2021, Sec. 4.2; the reference ``component_func.py``).

    ``component_map``: ``(B, n)`` component ids (``-1``: none), e.g. :attr:`ComponentResult.component_map`. The
    logits come from the engine (a perturbation game with the ``"logit"`` value on the same players).
    """
    if not isinstance(game, PerturbationGame) or game.value.second_class != "given":
        raise TypeError("game must be a PerturbationGame with value 'target_minus_true' (see superpixel_game)")
    if component_map.shape != (game.num_images, game.num_players):
        raise ValueError(f"component_map must have shape (B, n) = {(game.num_images, game.num_players)}")
    game.resolve_classes()
    out: tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]] = ([], [], [])
    for b in range(game.num_images):
        row = component_map[b].cpu()
        count = int(row.max()) + 1
        coalitions = torch.ones(count + 1, game.num_players, dtype=torch.bool)
        for c in range(count):
            coalitions[c + 1, row == c] = False
        logits = []
        for classes in (game.labels, game.targets):
            view = PerturbationGame(
                game.model,
                game.absent[b : b + 1],
                game.delta[b : b + 1].detach(),
                classes[b : b + 1],
                player_map=game.player_map,
                value="logit",
                batch_size=game.batch_size,
                autocast=game.autocast,
                channels_last=game.channels_last,
            )
            logits.append(view.evaluate(coalitions)[0].double().cpu())
        delta_true, delta_target = ((v[1:] - v[0]).abs() for v in logits)
        out[0].append(delta_true)
        out[1].append(delta_target)
        out[2].append(delta_true > delta_target)
    return ComponentEffects(*out)


def foreground_mask_from_image(x: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """``(B, H, W)`` foreground of digits (MNIST, sklearn digits): pixels whose channel mean exceeds ``threshold``."""
    check_fraction(threshold, "threshold")
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError("x must be a (B, C, H, W) image tensor in [0, 1]")
    return x.mean(dim=1) > threshold


def foreground_share(
    component_map: torch.Tensor,
    player_map: torch.Tensor,
    foreground: torch.Tensor | None,
    *,
    threshold: float = 0.5,
) -> list[torch.Tensor]:
    """Per image, the share ``(m_b,)`` of each component's pixels in the foreground mask (ICCV 2021, Table 2).

    A component is in the foreground when its share exceeds ``threshold`` (0.5: "more pixels in the foreground than
    in the background"; ``generate_info.py``). ``foreground``: ``(H, W)`` or ``(B, H, W)`` boolean mask, required
    (for digits: :func:`foreground_mask_from_image`; for other data a segmentation).
    """
    check_fraction(threshold, "threshold")
    if foreground is None:
        raise ValueError(
            "foreground_share needs a foreground mask (B, H, W): for digits foreground_mask_from_image(x), "
            "for other data a given segmentation"
        )
    batch = component_map.shape[0]
    mask = foreground.bool().cpu().expand(batch, *player_map.shape)
    pixels = player_map.cpu().flatten()
    shares = []
    for b in range(batch):
        owner = component_map[b].cpu()[pixels]  # component of every pixel
        count = int(owner.max()) + 1
        total = torch.bincount(owner[owner >= 0], minlength=count).double()
        inside = torch.bincount(owner[(owner >= 0) & mask[b].flatten()], minlength=count).double()
        shares.append(inside / total.clamp(min=1))
    return shares


def component_figure(
    image: torch.Tensor,
    delta: torch.Tensor,
    player_map: torch.Tensor,
    component_map: torch.Tensor,
    decreases_true: torch.Tensor,
) -> Figure:
    """Image, perturbation magnitude and components of one image (ICCV 2021, Fig. 4), as a Matplotlib figure for
    TensorBoard's ``add_figure`` or ``savefig``.

    ``image``, ``delta``: ``(C, H, W)``; ``player_map`` ``(H, W)``; ``component_map`` ``(n,)`` (``-1``: none);
    ``decreases_true`` ``(m,)`` (:attr:`ComponentEffects.decreases_true` of the image). Components that mainly decrease
    the true class are drawn in reds, those that mainly increase the target in blues (one shade per component).
    """
    from matplotlib import colormaps

    owner = component_map.cpu()[player_map.cpu()]  # (H, W) component of every pixel
    count = int(owner.max()) + 1
    if decreases_true.numel() != count:
        raise ValueError(f"decreases_true must have one flag per component ({count}); got {decreases_true.numel()}")
    colours = torch.ones(*owner.shape, 3)
    for c in range(count):
        shade = 0.45 + 0.4 * (c + 1) / (count + 1)
        cmap = colormaps["Reds" if bool(decreases_true[c]) else "Blues"]
        colours[owner == c] = torch.tensor(cmap(shade)[:3], dtype=torch.float32)
    fig = Figure(figsize=(7.5, 2.8), dpi=100)
    axes = fig.subplots(1, 3)
    pictures = [
        ("image", image.detach().cpu().permute(1, 2, 0).squeeze(-1).clamp(0, 1), "gray"),
        ("|δ| (sum over channels)", delta.detach().cpu().abs().sum(dim=0), "magma"),
        (f"{count} components (red: ℓ↓, blue: t↑)", colours, None),
    ]
    for ax, (title, picture, cmap) in zip(axes, pictures):
        ax.imshow(picture.numpy(), cmap=cmap, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    fig.tight_layout(pad=0.4)
    return fig
