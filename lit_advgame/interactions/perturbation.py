"""Average interaction inside a perturbation, ``E_ij[I_ij(δ)]`` (Wang et al., ICLR 2021, Eq. 4 / 39).

Players are the grid cells of the perturbation ``δ``; ``v(S)`` is evaluated at ``x + δ ⊙ M_S``
(absent cells keep the clean pixel), so ``v(Ω)`` is the value at ``x + δ`` and ``v(∅)`` at ``x``.
Appendix F proves (exactly, see ``interactions.md`` §1.8)::

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

import math
from collections.abc import Callable

import torch
from torch import nn

from lit_advgame.interactions.game import PerturbationGame, eval_mode
from lit_advgame.interactions.results import PerturbationInteractionResult
from lit_advgame.interactions.sampling import (
    sample_groups_with_replacement,
    sample_players,
)
from lit_advgame.utils.checks import check_choice, check_int

FORMS = ("coalition", "single")
SCALES = ("reference", "paper")


def _terms(
    model: nn.Module,
    x: torch.Tensor,
    delta: torch.Tensor,
    y: torch.Tensor,
    *,
    grid: int,
    player_map: torch.Tensor | None,
    form: str,
    num_samples: int,
    group_size: int,
    value: str | Callable[..., torch.Tensor],
    generator: torch.Generator | None,
    batch_size: int | None,
    scale: str,
) -> tuple[torch.Tensor, PerturbationGame, bool]:
    """Per-sample terms ``(B, k)`` of ``v(Ω) - v(Ω\\S) - v(S) + v(∅)`` (scaled), the game, exhaustiveness."""
    check_choice(form, "form", FORMS)
    check_choice(scale, "scale", SCALES)
    check_int(num_samples, "num_samples", minimum=1)
    check_int(group_size, "group_size", minimum=1)
    if y is None:
        raise ValueError("y (the true class of each image) is required for the perturbation interaction")
    game = PerturbationGame(model, x, delta, y, grid=grid, player_map=player_map, value=value, batch_size=batch_size)
    n, batch, device = game.num_players, game.num_images, game.device
    if n < 2:
        raise ValueError("the perturbation interaction needs at least 2 players")
    grad = delta.requires_grad and torch.is_grad_enabled()
    with eval_mode(model), torch.set_grad_enabled(grad):
        full_logits = torch.cat(
            [model(game.present[s : s + game.batch_size]) for s in range(0, batch, game.batch_size)]
        )
    game.forward_passes += batch
    game.resolve_classes(full_logits)
    with torch.set_grad_enabled(grad):
        full = game.value(full_logits, game.labels, game.targets)
    empty = game.evaluate(torch.zeros(1, n, dtype=torch.bool, device=device)).squeeze(1)

    exhaustive = False
    if form == "coalition":
        groups = sample_groups_with_replacement(batch, num_samples, group_size, n, generator).to(device)
    else:
        if num_samples >= n:
            players = torch.arange(n, device=device).expand(batch, n)
            exhaustive = True
        else:
            players = sample_players(batch, num_samples, n, generator).to(device)
        groups = torch.zeros(batch, players.shape[1], n, dtype=torch.bool, device=device)
        groups.scatter_(2, players.unsqueeze(2), True)
    k = groups.shape[1]
    values = game.evaluate(torch.cat([~groups, groups], dim=1), grad=grad)  # (B, 2k): Ω \ S, then S
    terms = full.unsqueeze(1) - values[:, :k] - values[:, k:] + empty.unsqueeze(1)
    if scale == "paper":
        terms = terms / (n - 1)
    return terms, game, exhaustive


def perturbation_interaction(
    model: nn.Module,
    x: torch.Tensor,
    delta: torch.Tensor,
    y: torch.Tensor,
    *,
    grid: int = 16,
    player_map: torch.Tensor | None = None,
    form: str = "coalition",
    num_samples: int = 32,
    group_size: int = 32,
    value: str = "margin_fixed",
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    scale: str = "reference",
) -> torch.Tensor:
    """Per-image interaction inside ``δ``, shape ``(B,)``, differentiable w.r.t. ``delta``.

    Gradients flow when ``delta.requires_grad`` and grad mode is on (no ``inference_mode``
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
        form: ``"coalition"`` (reference code) or ``"single"`` (paper Eq. 39).
        num_samples: groups (coalition form) or players (single form) per image; the single form
            uses every player (exact) when ``num_samples >= n``.
        group_size: cells per group, drawn with replacement (coalition form).
        value: ``"margin_fixed"`` (code) or ``"margin_max"`` (paper), or another value function.
        generator: source of the random groups/players.
        batch_size: masked inputs per forward pass (default 256).
        scale: ``"reference"`` (no ``1/(n-1)``, default) or ``"paper"``.
    """
    terms, _, _ = _terms(
        model, x, delta, y, grid=grid, player_map=player_map, form=form, num_samples=num_samples,
        group_size=group_size, value=value, generator=generator, batch_size=batch_size, scale=scale,
    )
    return terms.mean(dim=1)


def perturbation_interaction_estimate(
    model: nn.Module,
    x: torch.Tensor,
    delta: torch.Tensor,
    y: torch.Tensor,
    *,
    grid: int = 16,
    player_map: torch.Tensor | None = None,
    form: str = "coalition",
    num_samples: int = 32,
    group_size: int = 32,
    value: str = "margin_fixed",
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    scale: str = "reference",
) -> PerturbationInteractionResult:
    """Non-differentiable :func:`perturbation_interaction` with standard errors (for metrics).

    Standard errors: ``std / sqrt(k)`` over the ``k`` sampled groups (iid); for the single form
    (players without replacement) times the finite-population factor ``sqrt((n - k) / (n - 1))``,
    hence 0 when every player is used. Over images: ``sqrt(Σ se_b²) / B``.
    """
    with torch.no_grad():
        terms, game, exhaustive = _terms(
            model, x, delta.detach(), y, grid=grid, player_map=player_map, form=form, num_samples=num_samples,
            group_size=group_size, value=value, generator=generator, batch_size=batch_size, scale=scale,
        )
    terms = terms.to(torch.float64)
    k, n = terms.shape[1], game.num_players
    per_image = terms.mean(dim=1)
    if exhaustive:
        per_image_stderr = torch.zeros_like(per_image)
    elif k < 2:
        per_image_stderr = torch.full_like(per_image, math.nan)
    else:
        per_image_stderr = terms.std(dim=1, correction=1) / math.sqrt(k)
        if form == "single":
            per_image_stderr = per_image_stderr * math.sqrt((n - k) / (n - 1))
    batch = per_image.shape[0]
    return PerturbationInteractionResult(
        values=per_image.mean(),
        stderr=per_image_stderr.pow(2).sum().sqrt() / batch,
        per_image=per_image,
        per_image_stderr=per_image_stderr,
        form=form,
        scale=scale,
        num_samples=k,
        num_players=n,
        num_forward_passes=game.forward_passes,
    )
