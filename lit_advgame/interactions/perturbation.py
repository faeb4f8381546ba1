"""Average interaction inside a perturbation, ``E_ij[I_ij(δ)]`` (Wang et al., ICLR 2021, Eq. 4 / 39).

Players are the grid cells of the perturbation ``δ``; ``v(S)`` is evaluated at ``x + δ ⊙ M_S``
(absent cells keep the clean pixel), so ``v(Ω)`` is the value at ``x + δ`` and ``v(∅)`` at ``x``.
Appendix F proves (exactly; the exact oracle checks it numerically)::

    E_ij[I_ij(δ)] = 1/(n-1) · E_i [ v(Ω) - v(Ω \\ {i}) - v({i}) + v(∅) ]          (Eq. 4 / 39)

Two forms:

* ``form="single"`` -- the paper: ``num_samples`` players ``i`` drawn uniformly without
  replacement per image (all players, i.e. the exact value, when ``num_samples >= n``).
* ``form="coalition"`` (default) -- the reference code (``interaction_loss.py``): ``num_samples``
  groups ``S`` of ``group_size`` cells drawn uniformly **with replacement**, and the mean of
  ``v(Ω) - v(Ω \\ S) - v(S) + v(∅)``. This is a cheaper group approximation (maintainers, issue
  #4), not an unbiased estimate of Eq. 4.

``scale="reference"`` (default) drops the ``1/(n-1)`` factor as the code does (it only rescales
the IR loss weight λ); ``scale="paper"`` includes it for both forms.

Values: ``"margin_fixed"`` (default, the code: ``z_t - z_y`` with ``t`` the runner-up class of
``x + δ``, detached and fixed for all subsets) or ``"margin_max"`` (the paper: max over
``y' != y`` inside each subset); any other value of :mod:`~lit_advgame.interactions.values` works too.

Cost per image: ``1`` (``x + δ``) ``+ 1`` (``x``) ``+ 2 · num_samples`` forward passes
(``2n + 2`` for the exact single form).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from lit_advgame.interactions.budget import DEFAULT_MAX_FORWARD_PASSES, check_budget
from lit_advgame.interactions.game import PerturbationGame
from lit_advgame.interactions.options import build_approximator
from lit_advgame.interactions.results import PerturbationInteractionResult
from lit_advgame.interactions.sampling import (
    sample_groups_with_replacement,
    sample_players,
)
from lit_advgame.interactions.stats import combine_stderr, mean_and_stderr
from lit_advgame.utils.checks import check_choice, check_int
from lit_advgame.utils.seeding import make_generator
from lit_advgame.vocabulary import INTERACTION_SCALES, PERTURBATION_FORMS

FORMS = PERTURBATION_FORMS
SCALES = INTERACTION_SCALES


def check_full_logits(full_logits: torch.Tensor, batch: int) -> None:
    """Check ``full_logits`` is a floating ``(B, C)`` tensor (the model's logits at ``x + δ``)."""
    if not isinstance(full_logits, torch.Tensor):
        raise TypeError(
            f"full_logits must be a torch.Tensor of shape ({batch}, classes); got {type(full_logits).__name__}"
        )
    if full_logits.dim() != 2 or full_logits.shape[0] != batch or not full_logits.is_floating_point():
        raise ValueError(
            f"full_logits must be the model's floating logits at x + delta, shape ({batch}, classes); "
            f"got {tuple(full_logits.shape)} {full_logits.dtype}"
        )


class _PrecomputedGradient(torch.autograd.Function):
    """``value`` ``(B,)`` whose gradient w.r.t. ``inputs`` ``(B, ...)`` is ``grad_output_b · jacobian_b``.

    ``jacobian_b = ∂value_b/∂inputs_b`` is computed beforehand (chunk by chunk, see
    :meth:`PerturbationInteractionApproximator.interaction`); ``value_b`` depends on ``inputs_b`` only.
    """

    @staticmethod
    def forward(ctx: Any, value: torch.Tensor, inputs: torch.Tensor, jacobian: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(jacobian)
        return value.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[None, torch.Tensor, None]:
        (jacobian,) = ctx.saved_tensors
        return None, grad_output.view(-1, *([1] * (jacobian.dim() - 1))) * jacobian, None


@dataclass
class PerturbationInteractionApproximator:
    """Estimator of ``E_ij[I_ij(δ)]`` on a :class:`~lit_advgame.interactions.game.PerturbationGame`.

    Args:
        form: ``"coalition"`` (reference code) or ``"single"`` (paper Eq. 4 / 39).
        num_samples: groups (coalition form) or players (single form) per image; the single form
            uses every player (exact) when ``num_samples >= n``.
        group_size: cells per group, drawn with replacement (coalition form).
        scale: ``"reference"`` (no ``1/(n-1)``, default) or ``"paper"``.
        max_forward_passes: the budget, ``B · (2 + 2 · num_samples)`` (``None``: no cap).
        random_state: an ``int`` seeds a fresh generator for every call, a ``torch.Generator``
            continues its stream, ``None`` uses the global RNG.
    """

    form: str = "coalition"
    num_samples: int = 32
    group_size: int = 32
    scale: str = "reference"
    max_forward_passes: int | None = DEFAULT_MAX_FORWARD_PASSES
    random_state: int | torch.Generator | None = None

    def __post_init__(self) -> None:
        check_choice(self.form, "form", FORMS)
        check_choice(self.scale, "scale", SCALES)
        check_int(self.num_samples, "num_samples", minimum=1)
        check_int(self.group_size, "group_size", minimum=1)

    def _setup(
        self, game: PerturbationGame, full_logits: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool, bool]:
        """``(full, empty, groups, exhaustive, grad)``: ``v(Ω)`` (differentiable when ``grad``), ``v(∅)``,
        the sampled boolean groups ``(B, k, n)``, whether they are every player, whether gradients flow."""
        if not isinstance(game, PerturbationGame):
            raise TypeError(f"game must be a PerturbationGame; got {type(game).__name__}")
        if game.labels is None:
            raise ValueError("y (the true class of each image) is required for the perturbation interaction")
        n, batch, device = game.num_players, game.num_images, game.device
        if n < 2:
            raise ValueError("the perturbation interaction needs at least 2 players")
        samples = min(self.num_samples, n) if self.form == "single" else self.num_samples
        shared = full_logits is not None
        check_budget(
            batch * (1 + (not shared) + 2 * samples),
            self.max_forward_passes,
            f"{samples} {self.form}-form samples per image",
        )
        generator = make_generator(self.random_state)
        grad = game.delta.requires_grad and torch.is_grad_enabled()
        if shared:
            check_full_logits(full_logits, batch)
        else:
            full_logits = game.full_logits(grad=grad)
        game.resolve_classes(full_logits)
        with torch.set_grad_enabled(grad):
            full = game.value(full_logits, game.labels, game.targets)
        empty = game.evaluate(torch.zeros(1, n, dtype=torch.bool, device=device)).squeeze(1)
        exhaustive = self.form == "single" and self.num_samples >= n
        if self.form == "coalition":
            groups = sample_groups_with_replacement(batch, self.num_samples, self.group_size, n, generator).to(device)
        else:
            if exhaustive:
                players = torch.arange(n, device=device).expand(batch, n)
            else:
                players = sample_players(batch, self.num_samples, n, generator).to(device)
            groups = torch.zeros(batch, players.shape[1], n, dtype=torch.bool, device=device)
            groups.scatter_(2, players.unsqueeze(2), True)
        return full, empty, groups, exhaustive, grad

    def _combine(self, full: torch.Tensor, values: torch.Tensor, empty: torch.Tensor, n: int) -> torch.Tensor:
        """Terms ``v(Ω) - v(Ω \\ S) - v(S) + v(∅)`` ``(B, k)`` from ``values`` ``(B, 2k)`` (Ω \\ S, then S), scaled."""
        k = values.shape[1] // 2
        terms = full.unsqueeze(1) - values[:, :k] - values[:, k:] + empty.unsqueeze(1)
        return terms / (n - 1) if self.scale == "paper" else terms

    def terms(self, game: PerturbationGame, full_logits: torch.Tensor | None = None) -> tuple[torch.Tensor, bool]:
        """Per-sample terms ``(B, k)`` of ``v(Ω) - v(Ω \\ S) - v(S) + v(∅)`` (scaled) and whether they are exhaustive.

        Wang et al., ICLR 2021, Eq. 4 / 39: ``E_ij[I_ij(δ)] = 1/(n-1) · E_i [v(Ω) - v(Ω\\{i}) - v({i}) + v(∅)]``
        (single form, ``S = {i}``); the coalition form uses groups ``S`` instead. Differentiable
        w.r.t. ``game.delta`` when it requires grad and grad mode is on; then every chunk's autograd
        graph stays alive until the caller's backward (memory grows with images × samples: for
        gradients use :meth:`interaction`, whose memory is bounded by the game's ``batch_size``).
        ``full_logits``: the model's logits at ``x + δ`` ``(B, C)`` if already computed (one forward
        pass per image fewer).
        """
        full, empty, groups, exhaustive, grad = self._setup(game, full_logits)
        values = game.evaluate(torch.cat([~groups, groups], dim=1), grad=grad)  # (B, 2k): Ω \ S, then S
        return self._combine(full, values, empty, game.num_players), exhaustive

    def interaction(self, game: PerturbationGame, full_logits: torch.Tensor | None = None) -> torch.Tensor:
        """Per-image ``E_ij[I_ij(δ)]`` (Wang et al., ICLR 2021, Eq. 4 / 39), ``(B,)``, differentiable in ``game.delta``.

        The IR loss term.
        With gradients, memory is bounded by the game's ``batch_size`` (masked inputs per forward
        pass), not by images × samples: Eq. 4 / 39 is linear in the masked values ``v(Ω \\ S)``,
        ``v(S)``, so each chunk of masked inputs is back-propagated as soon as it is evaluated
        (:meth:`~lit_advgame.interactions.game.MaskedGame.backward_rows`, weight ``-1/k`` per value,
        times ``1/(n-1)`` for ``scale="paper"``) and the per-image gradients ``∂I_b/∂(x_b + δ_b)``
        are accumulated; the returned tensor back-propagates ``grad_output_b · ∂I_b/∂(x_b + δ_b)``
        (exact since image b's masked inputs depend on ``δ_b`` alone: the model runs in eval mode on
        each masked image independently). ``v(Ω)`` keeps its ordinary graph (one forward per
        image; with ``full_logits`` given, e.g. the attack's forward at ``x + δ``, the graph of that
        forward). The value equals ``terms(game).mean(dim=1)`` bit for bit and its gradient equals
        that of the all-graph path up to the order of float summation. First-order only (no
        ``create_graph`` double backward through the masked values).
        """
        if not (game.delta.requires_grad and torch.is_grad_enabled()):
            terms, _ = self.terms(game, full_logits)
            return terms.mean(dim=1)
        full, empty, groups, _, _ = self._setup(game, full_logits)
        batch, k, n = groups.shape
        rows = torch.cat([~groups, groups], dim=1).reshape(batch * 2 * k, n)
        images = torch.arange(batch, device=game.device).repeat_interleave(2 * k)
        weight = -(1.0 / k) / (n - 1) if self.scale == "paper" else -(1.0 / k)
        weights = torch.full((rows.shape[0],), weight, dtype=full.dtype, device=game.device)
        values, jacobian = game.backward_rows(rows, images, weights)
        value = self._combine(full.detach(), values.view(batch, 2 * k), empty, n).mean(dim=1)
        full_term = full / (n - 1) if self.scale == "paper" else full
        # value + 0 (exact): the gradient of v(Ω) through its graph, of the masked values through the Jacobian
        return _PrecomputedGradient.apply(value, game.present, jacobian) + (full_term - full_term.detach())

    def approximate(self, game: PerturbationGame) -> PerturbationInteractionResult:
        """Non-differentiable estimate with standard errors (for metrics).

        Standard errors: over the ``k`` sampled groups (iid), ``scipy.stats.sem``; for the single
        form (``k`` of the ``n`` players drawn without replacement) times the finite-population
        factor ``sqrt((n - k) / n)`` (the ddof=1 sample variance estimates ``S²``, whose mean
        has variance ``S²/k · (n-k)/n``), hence 0 when every player is used. Over images:
        ``sqrt(Σ se_b²) / B``.
        """
        before = game.forward_passes
        with torch.no_grad():
            terms, exhaustive = self.terms(game)
        terms = terms.to(torch.float64)
        k, n = terms.shape[1], game.num_players
        population = n if self.form == "single" else None
        per_image, per_image_stderr = mean_and_stderr(terms, dim=1, population=population)
        if exhaustive:
            per_image_stderr = torch.zeros_like(per_image)
        return PerturbationInteractionResult(
            values=per_image.mean(),
            stderr=combine_stderr(per_image_stderr, dim=0),
            per_image=per_image,
            per_image_stderr=per_image_stderr,
            form=self.form,
            scale=self.scale,
            num_samples=k,
            num_players=n,
            num_forward_passes=game.forward_passes - before,
        )


def _game_and_approximator(
    model: nn.Module, x: torch.Tensor, delta: torch.Tensor, y: torch.Tensor, options: dict[str, Any], owner: str
) -> tuple[PerturbationGame, PerturbationInteractionApproximator]:
    """Split the keywords of the functional API into the game's and the approximator's."""
    game_keys = ("grid", "player_map", "value", "batch_size", "autocast", "channels_last")
    game_options = {key: options.pop(key) for key in game_keys if key in options}
    approximator = build_approximator(
        PerturbationInteractionApproximator,
        owner,
        extra=game_keys,
        random_state=options.pop("generator", None),
        **options,
    )
    if y is None:
        raise ValueError("y (the true class of each image) is required for the perturbation interaction")
    return PerturbationGame(model, x, delta, y, **game_options), approximator


def perturbation_interaction(
    model: nn.Module,
    x: torch.Tensor,
    delta: torch.Tensor,
    y: torch.Tensor,
    *,
    grid: int = 16,
    player_map: torch.Tensor | None = None,
    value: str | Callable[..., torch.Tensor] = "margin_fixed",
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
    full_logits: torch.Tensor | None = None,
    **options: Any,
) -> torch.Tensor:
    """Per-image interaction inside ``δ`` (Wang et al., ICLR 2021, Eq. 4 / 39), shape ``(B,)``.

    Differentiable w.r.t. ``delta``.

    Gradients flow when ``delta.requires_grad`` and grad mode is on, with memory bounded by
    ``batch_size`` (see :meth:`PerturbationInteractionApproximator.interaction`; no ``inference_mode``
    inside; under Lightning's inference mode wrap the call in ``torch.inference_mode(False)`` /
    ``torch.enable_grad()``). The model runs in eval mode; its previous modes are restored.

    Args:
        model: classifier on pixel-space input (an ``nn.Module``).
        x: clean images ``(B, C, H, W)`` in [0, 1], B >= 1; delta: perturbation of the same shape
            with ``x + delta`` in [0, 1] (else ``ValueError``). Both are cast to the model's dtype
            (e.g. float64 images for a float32 model; gradients still reach ``delta``).
        y: true classes ``(B,)``.
        grid: ``L`` for an ``L x L`` grid of perturbation cells (ignored with ``player_map``).
        player_map: explicit ``(H, W)`` player ids.
        value: ``"margin_fixed"`` (code) or ``"margin_max"`` (paper), or another value function.
        batch_size: masked inputs per forward pass (default 256).
        generator: source of the random groups/players (the approximator's ``random_state``).
        full_logits: the model's logits at ``x + delta`` ``(B, C)`` when the caller already has them
            (e.g. the attack's classification-loss forward): ``v(Ω)`` and the runner-up class come
            from them and their graph, saving one forward pass per image.
        options: :class:`PerturbationInteractionApproximator`'s fields: ``form="coalition"``,
            ``num_samples=32``, ``group_size=32``, ``scale="reference"``, ``max_forward_passes``; and the
            game's ``autocast``/``channels_last`` (precision of the model's forward, see
            :class:`~lit_advgame.interactions.game.PerturbationGame`).

    Example: the interaction inside a small perturbation on a 4×4 grid, and its gradient (as in the IR loss):

    >>> import torch
    >>> from torch import nn
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.Tanh(), nn.Linear(8, 3))
    >>> x, y = 0.25 + 0.5 * torch.rand(2, 1, 8, 8), torch.tensor([0, 1])
    >>> delta = (0.1 * torch.rand_like(x) - 0.05).requires_grad_()
    >>> g = torch.Generator().manual_seed(0)
    >>> interaction = perturbation_interaction(model, x, delta, y, grid=4, num_samples=4, group_size=4, generator=g)
    >>> interaction.shape, interaction.requires_grad
    (torch.Size([2]), True)
    >>> interaction.sum().backward()
    >>> delta.grad.shape
    torch.Size([2, 1, 8, 8])
    """
    options.update(grid=grid, player_map=player_map, value=value, batch_size=batch_size, generator=generator)
    game, approximator = _game_and_approximator(model, x, delta, y, options, "perturbation_interaction")
    return approximator.interaction(game, full_logits)


def perturbation_interaction_estimate(
    model: nn.Module, x: torch.Tensor, delta: torch.Tensor, y: torch.Tensor, **options: Any
) -> PerturbationInteractionResult:
    """Non-differentiable :func:`perturbation_interaction` (Wang et al., ICLR 2021, Eq. 4 / 39) with standard errors.

    Keyword arguments as :func:`perturbation_interaction` (``grid=16``, ``player_map``,
    ``value="margin_fixed"``, ``batch_size``, ``generator`` and the approximator's ``form``,
    ``num_samples``, ``group_size``, ``scale``, ``max_forward_passes``); see
    :meth:`PerturbationInteractionApproximator.approximate` for the standard errors.
    """
    game, approximator = _game_and_approximator(
        model, x, delta.detach(), y, dict(options), "perturbation_interaction_estimate"
    )
    return approximator.approximate(game)
