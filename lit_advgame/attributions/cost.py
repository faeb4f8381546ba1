"""Restricted targeted attacks and their attacking cost (Wang et al., ICCV 2021, Sec. 3.1).

``cost(S) = ‖δ^(S)‖_p`` is the norm of the smallest targeted perturbation found when only the pixels of a
mask ``M^(S)`` may change (Sec. 3.1, below Eq. 4). Two attacks, as the reference code
(``main_attribution.py``):

* :class:`L2CostAttack` -- Carlini–Wagner L2 (Carlini & Wagner 2017): Adam on ``w`` with
  ``x' = x + M∘((tanh w + 1)/2 − x)``, minimising ``‖x' − x‖₂² + c·max(max_{i≠t} Z_i − Z_t, −κ)``
  with a binary search over ``c`` (reference: 5 searches × 200 steps, lr 0.025, the initial ``c``
  scaled by the allowed area). The cost is the smallest successful ``‖δ‖₂`` over all iterates.
* :class:`LinfCostAttack` -- the smallest ``ε = e·eps_step`` (``e = 1 … max_level``; reference
  ``e/256``, ``e ≤ 255``) for which targeted BIM (step 1/256, 80 steps) succeeds, found by the
  reference's increasing ``scan`` or by ``bisection`` over ``e`` (9 BIM runs instead of up to 255; it
  assumes success is monotone in ε, which BIM from δ = 0 need not be exactly, so the two may differ by
  a few levels). The cost is the grid value ``ε``.

Both start from δ = 0, so they are deterministic, and keep ``x + δ ∈ [0, 1]``; the perturbation is
exactly 0 outside the mask. Many masks of many images are attacked in one call, ``batch_size`` rows
(image, mask) at a time (the reference batches 64 masks). A row that never reaches the target is a
*failure*: its cost is NaN and its ``success`` flag False -- never a sentinel value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from lit_advgame.attacks.losses import classification_loss, margin
from lit_advgame.attacks.norms import clip_to_box
from lit_advgame.utils.checks import (
    as_model_dtype,
    check_choice,
    check_images,
    check_int,
    check_labels,
    check_module,
    check_positive,
)
from lit_advgame.utils.modes import eval_mode
from lit_advgame.vocabulary import CW_BOXES, EPS_SEARCHES, LOSSES, NORMS, CWBox, EpsSearch, Loss, Norm


@dataclass
class RestrictedAttackResult:
    """Restricted attacks of ``B`` images × ``K`` masks.

    Attributes:
        cost: ``(B, K)`` float64 ``‖δ‖_p`` of the successful attacks, NaN where the attack failed.
        success: ``(B, K)`` bool, whether the prediction reached the target.
        perturbation: ``(B, K, C, H, W)`` the perturbations (zeros where failed), if asked for.
        num_steps: gradient steps run, summed over rows.
    """

    cost: torch.Tensor
    success: torch.Tensor
    perturbation: torch.Tensor | None
    num_steps: int

    @property
    def failure_rate(self) -> float:
        """Share of the attacked (image, mask) rows that failed."""
        return float((~self.success).float().mean()) if self.success.numel() else 0.0


def reached_target(logits: torch.Tensor, target: torch.Tensor, confidence: float = 0.0) -> torch.Tensor:
    """``Z_t − max_{i≠t} Z_i > 0`` and ``≥ confidence`` per row: the targeted attack succeeded."""
    gap = -margin(logits, target)
    return (gap > 0) & (gap >= confidence)


@dataclass
class RestrictedAttack:
    """Shared part of the restricted attacks: argument checks and batching over (image, mask) rows.

    Args:
        batch_size: rows (image, mask) attacked together (the reference: 64 masks).
    """

    batch_size: int = 64

    norm: ClassVar[str] = ""

    def __post_init__(self) -> None:
        check_int(self.batch_size, "batch_size", minimum=1)

    def steps_per_row(self) -> int:  # pragma: no cover - overridden
        """Upper bound of the gradient steps one row needs."""
        raise NotImplementedError

    def planned_steps(self, num_rows: int) -> int:
        """Upper bound of the gradient steps of ``num_rows`` restricted attacks (announced before long work)."""
        return num_rows * self.steps_per_row()

    def attack_batch(
        self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:  # pragma: no cover - overridden
        """One batch of rows: ``x`` (N, C, H, W), ``target`` (N,), float ``mask`` (N, 1, H, W) ->
        (cost (N,), success (N,), δ (N, C, H, W), steps run)."""
        raise NotImplementedError

    def __call__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        target: torch.Tensor,
        masks: torch.Tensor,
        *,
        return_perturbation: bool = False,
    ) -> RestrictedAttackResult:
        """Attack every image with every mask: ``masks`` boolean ``(K, H, W)`` (the same for all images)
        or ``(B, K, H, W)``; ``True`` marks a pixel that may change (all channels)."""
        check_images(x, "x", allow_empty=False)
        batch, _, height, width = x.shape
        if not isinstance(masks, torch.Tensor) or masks.dtype != torch.bool:
            raise TypeError(f"masks must be a boolean tensor of shape (K, H, W) or (B, K, H, W); got {masks!r:.80}")
        if masks.dim() == 3:
            masks = masks.unsqueeze(0).expand(batch, -1, -1, -1)
        if masks.dim() != 4 or masks.shape[0] != batch or tuple(masks.shape[2:]) != (height, width):
            raise ValueError(
                f"masks must have shape (K, {height}, {width}) or ({batch}, K, {height}, {width}); "
                f"got {tuple(masks.shape)}"
            )
        k = masks.shape[1]
        images = torch.arange(batch, device=x.device).repeat_interleave(k)
        cost, success, delta, steps = self.attack_rows(
            model, x, target, images, masks.reshape(batch * k, height, width), return_perturbation
        )
        perturbation = None if delta is None else delta.view(batch, k, *x.shape[1:])
        return RestrictedAttackResult(cost.view(batch, k), success.view(batch, k), perturbation, steps)

    def attack_rows(
        self,
        model: nn.Module,
        x: torch.Tensor,
        target: torch.Tensor,
        images: torch.Tensor,
        masks: torch.Tensor,
        return_perturbation: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, int]:
        """Rows ``(images[r], masks[r])``: cost (N,) float64 (NaN on failure), success (N,), δ (N, C, H, W) or None."""
        check_module(model)
        check_labels(target, x.shape[0], name="target")
        x = as_model_dtype(x, model)
        rows = images.numel()
        cost = torch.full((rows,), math.nan, dtype=torch.float64)
        success = torch.zeros(rows, dtype=torch.bool)
        deltas = torch.zeros(rows, *x.shape[1:], dtype=x.dtype, device=x.device) if return_perturbation else None
        steps = 0
        with eval_mode(model):
            for start in range(0, rows, self.batch_size):
                ids = images[start : start + self.batch_size].to(x.device)
                mask = masks[start : start + self.batch_size].to(device=x.device, dtype=x.dtype).unsqueeze(1)
                c, s, d, n = self.attack_batch(model, x[ids], target.to(x.device)[ids], mask)
                cost[start : start + ids.numel()] = torch.where(s, c, torch.nan).double().cpu()
                success[start : start + ids.numel()] = s.cpu()
                if deltas is not None:
                    deltas[start : start + ids.numel()] = d  # zeros where the attack failed
                steps += n
        return cost, success, deltas, steps


@dataclass
class L2CostAttack(RestrictedAttack):
    """Carlini–Wagner L2 restricted to a mask, with a binary search over the constant ``c``.

    Minimises ``‖δ∘M‖₂² + c·max(max_{i≠t} Z_i − Z_t, −confidence)`` over ``w`` with
    ``x + δ∘M = x + M∘((tanh w + 1)/2 − x)`` (Carlini & Wagner 2017, the L2 attack; Wang et al.,
    ICCV 2021, Sec. 3.1, the masked form of Eq. 2). After each search, ``c`` moves to the middle of
    its bracket (halving after a success, ×10 while no success bounds it).

    Args:
        binary_search_steps, steps, lr: the reference's 5 × 200 Adam steps, lr 0.025.
        initial_const: ``c`` of the first search.
        area_scaled_const: start from ``initial_const · (H·W) / |M|`` (the allowed area ``|M|`` in
            pixels), the reference's scaling: a smaller allowed area needs a larger constant.
        confidence: ``κ`` (0: reaching the target is enough).
        box: how ``x + δ ∈ [0, 1]`` is kept: ``"tanh"`` (Carlini–Wagner's change of variables, the
            reference) or ``"clip"`` (Adam on δ itself, clipped to the box after each step). The tanh
            variable saturates at pixels exactly 0 or 1 (``atanh(±(1 − 10⁻⁶)) ≈ ±7.3``, far more than
            200 steps of 0.025 from 0), so such pixels -- the background of digits and MNIST -- barely
            move; use ``"clip"`` for such data.
    """

    binary_search_steps: int = 5
    steps: int = 200
    lr: float = 0.025
    initial_const: float = 0.01
    area_scaled_const: bool = True
    confidence: float = 0.0
    box: CWBox = "tanh"

    norm: ClassVar[str] = "l2"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self.binary_search_steps, "binary_search_steps", minimum=1)
        check_int(self.steps, "steps", minimum=1)
        check_positive(self.lr, "lr")
        check_positive(self.initial_const, "initial_const")
        check_positive(self.confidence, "confidence", allow_zero=True)
        check_choice(self.box, "box", CW_BOXES)

    def steps_per_row(self) -> int:
        return self.binary_search_steps * self.steps

    def attack_batch(self, model, x, target, mask):
        rows = x.shape[0]
        area = mask.flatten(1).sum(dim=1)
        const = torch.full((rows,), self.initial_const, dtype=x.dtype, device=x.device)
        if self.area_scaled_const:
            const = const * mask[0].numel() / area.clamp_min(1.0)
        lower, upper = torch.zeros_like(const), torch.full_like(const, 1e10)
        best = torch.full((rows,), math.inf, dtype=x.dtype, device=x.device)
        best_delta = torch.zeros_like(x)
        tanh = self.box == "tanh"
        start = torch.atanh((2.0 * x - 1.0).clamp(-1 + 1e-6, 1 - 1e-6)) if tanh else torch.zeros_like(x)
        for _ in range(self.binary_search_steps):
            w = start.clone().requires_grad_(True)
            optimizer = torch.optim.Adam([w], lr=self.lr)
            found = torch.zeros(rows, dtype=torch.bool, device=x.device)
            for _ in range(self.steps):
                # clip: w stays in the box (projected after each step); no clamp in the graph, whose
                # gradient vanishes on the box's faces (at pixels exactly 0 or 1)
                delta = clip_to_box(mask * ((torch.tanh(w) + 1.0) / 2.0 - x), x) if tanh else mask * w
                logits = model(x + delta)
                distance = delta.flatten(1).pow(2).sum(dim=1)
                loss = distance + const * margin(logits, target).clamp_min(-self.confidence)
                (grad,) = torch.autograd.grad(loss.sum(), w)
                w.grad = grad
                optimizer.step()
                if not tanh:
                    with torch.no_grad():
                        w.copy_(clip_to_box(mask * w, x))
                with torch.no_grad():
                    norms, hit = distance.sqrt(), reached_target(logits, target, self.confidence)
                    better = hit & (norms < best)
                    best = torch.where(better, norms, best)
                    best_delta[better] = delta.detach()[better]
                    found |= hit
            upper = torch.where(found, torch.minimum(upper, const), upper)
            lower = torch.where(found, lower, torch.maximum(lower, const))
            const = torch.where(upper < 1e9, (lower + upper) / 2.0, const * 10.0)
        success = torch.isfinite(best)
        return best, success, best_delta, rows * self.steps_per_row()


@dataclass
class LinfCostAttack(RestrictedAttack):
    """The smallest ``ε`` of the grid ``e·eps_step`` (``e = 1 … max_level``) for which targeted BIM succeeds.

    BIM (Kurakin et al. 2017) from δ = 0: ``δ ← clip_ε(M∘(δ + α·sign ∇_δ ℓ))`` and the box, ``ℓ`` the
    targeted loss (``-CE(z, t)`` or ``Z_t − max_{i≠t} Z_i``); it succeeds when some iterate reaches
    the target (Wang et al., ICCV 2021, Sec. 3.1 and 4, L∞ cost).

    Args:
        eps_step, max_level: the grid (reference: 1/256 and 255).
        step_size, steps: BIM's α and iterations (reference: 1/256, 80).
        search: ``"scan"`` (the reference: every level upward until success; up to ``max_level`` BIM
            runs) or ``"bisection"`` (``1 + ⌈log₂ max_level⌉`` runs; assumes monotone success in ε).
        loss: ``"ce"`` or ``"margin"``.
    """

    norm: ClassVar[str] = "linf"
    eps_step: float = 1 / 256
    max_level: int = 255
    step_size: float = 1 / 256
    steps: int = 80
    search: EpsSearch = "scan"
    loss: Loss = "ce"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self.eps_step, "eps_step")
        check_int(self.max_level, "max_level", minimum=1)
        check_positive(self.step_size, "step_size")
        check_int(self.steps, "steps", minimum=1)
        check_choice(self.search, "search", EPS_SEARCHES)
        check_choice(self.loss, "loss", LOSSES)

    def steps_per_row(self) -> int:
        runs = self.max_level if self.search == "scan" else 1 + math.ceil(math.log2(self.max_level))
        return runs * self.steps

    def bim(
        self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, eps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Targeted BIM with per-row radii ``eps`` (N,): (success (N,), first successful δ, steps run)."""
        radius = eps.view(-1, *([1] * (x.dim() - 1)))
        delta = torch.zeros_like(x)
        success = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        hit_delta = torch.zeros_like(x)
        for step in range(self.steps + 1):
            delta.requires_grad_(True)
            logits = model(x + delta)
            with torch.no_grad():
                new = reached_target(logits, target) & ~success
                hit_delta[new] = delta.detach()[new]
                success |= new
            if step == self.steps or bool(success.all()):
                return success, hit_delta, x.shape[0] * step
            (grad,) = torch.autograd.grad(classification_loss(logits, target, self.loss, targeted=True).sum(), delta)
            with torch.no_grad():
                stepped = delta + self.step_size * grad.sign()
                delta = clip_to_box(mask * torch.maximum(torch.minimum(stepped, radius), -radius), x)
        raise AssertionError("unreachable")  # pragma: no cover

    def attack_batch(self, model, x, target, mask):
        best_delta = torch.zeros_like(x)
        with torch.no_grad():
            clean = reached_target(model(x), target)
        level = torch.where(clean, 0, self.max_level + 1).to(device=x.device)  # max_level + 1: not found
        steps = 0
        if self.search == "scan":
            for e in range(1, self.max_level + 1):
                pending = (level > self.max_level).nonzero().flatten()
                if pending.numel() == 0:
                    break
                eps = torch.full((pending.numel(),), e * self.eps_step, dtype=x.dtype, device=x.device)
                ok, found, n = self.bim(model, x[pending], target[pending], mask[pending], eps)
                steps += n
                level[pending[ok]] = e
                best_delta[pending[ok]] = found[ok]
        else:
            lo = torch.zeros_like(level)  # the level below is known to fail (or the clean image succeeds)
            hi = torch.where(clean, 0, self.max_level)
            top = (~clean).nonzero().flatten()
            if top.numel():
                eps = torch.full((top.numel(),), self.max_level * self.eps_step, dtype=x.dtype, device=x.device)
                ok, found, n = self.bim(model, x[top], target[top], mask[top], eps)
                steps += n
                best_delta[top[ok]] = found[ok]
                hi[top[~ok]] = 0  # failed at the largest ε: nothing to bisect
                level[top[ok]] = self.max_level
            while True:
                open_rows = (hi - lo > 1).nonzero().flatten()
                if open_rows.numel() == 0:
                    break
                mid = (lo[open_rows] + hi[open_rows]) // 2
                ok, found, n = self.bim(
                    model, x[open_rows], target[open_rows], mask[open_rows], mid.to(x.dtype) * self.eps_step
                )
                steps += n
                hi[open_rows[ok]] = mid[ok]
                lo[open_rows[~ok]] = mid[~ok]
                best_delta[open_rows[ok]] = found[ok]
                level[open_rows[ok]] = mid[ok]
        success = level <= self.max_level
        return level.to(x.dtype) * self.eps_step, success, best_delta, steps


COST_ATTACKS: dict[str, type[RestrictedAttack]] = {"l2": L2CostAttack, "linf": LinfCostAttack}
assert set(COST_ATTACKS) == set(NORMS)


def build_cost_attack(norm: Norm | RestrictedAttack = "l2", **options) -> RestrictedAttack:
    """The restricted attack of ``norm`` (``"l2"``: :class:`L2CostAttack`, ``"linf"``: :class:`LinfCostAttack`)
    with its ``options``; an attack object passes through (then without options)."""
    if isinstance(norm, RestrictedAttack):
        if options:
            raise ValueError(f"options {sorted(options)} given with an attack object; set them on the object")
        return norm
    check_choice(norm, "norm", NORMS)
    return COST_ATTACKS[norm](**options)
