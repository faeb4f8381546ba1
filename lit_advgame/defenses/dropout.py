"""Dropout and cutout on adversarial examples (Ren et al., NeurIPS 2021, §4.3, Table 1 and supplement H).

The theory (supplement H). Dropping players at rate α keeps a uniform random set ``K`` of
``k = ⌊(1-α)n⌋`` players; the average output ``v^α(N) = E_{|K|=k} v(K)`` decomposes, by the efficiency property
applied to every ``K``, into the interactions of the full game:

    v^α(N) = v(∅) + (k/n) Σ_i φ^(0)(i) + Σ_{i≠j} Σ_{m=0}^{k-2} (k-1-m)/(n(n-1)) · I^(m)_ij,

i.e. order ``m`` keeps the fraction ``(k-1-m)/(n-1-m)`` of its share ``J^(m)`` of ``v(N)`` (Eq. 17) and orders
``m >= k-1`` vanish; even order 0 loses about α. This is Eq. 20 in its exact form: as printed (with α in place
of ``(n-k)/n``) it holds only when ``(1-α)n`` is an integer. :func:`dropout_keep_count` computes ``k`` robustly
(``(1 - 0.9) * 10`` is ``0.9999999999999998`` in floating point, whose floor would be 0, not 1);
:func:`dropout_average_value` computes ``v^α(N)`` from a value table directly and
:func:`dropout_value_from_interactions` from the interactions, so the exact oracle checks one against the other.

The experiment (Table 1). Correctly classified images are attacked with an untargeted L∞ PGD **stopped once it
succeeds** (:class:`EarlyStoppedAttack`: per image, the first iterate the model misclassifies); then
:class:`PixelDropout` (rate α at the pixel level, every dropped pixel filled with the mean of the **kept** pixels
of its 3x3 neighbourhood, see :func:`neighbour_fill`) or :class:`Cutout` (a square of half the image side,
25 % of the pixels) is applied to the adversarial examples, and :func:`correction_ratio` is the fraction of the
misclassified ones whose prediction returns to the true label.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lit_advgame.attacks import Attack
from lit_advgame.interactions import ExactInteractions
from lit_advgame.interactions.baselines import Baseline, make_baseline
from lit_advgame.utils.checks import check_images, check_int, check_labels, check_module
from lit_advgame.utils.modes import eval_mode
from lit_advgame.utils.precision import forward_logits, resolve_autocast
from lit_advgame.utils.seeding import make_generator

# ----------------------------------------------------------------------------- theory (supplement H)


def check_dropout_rate(rate: float, name: str = "rate") -> float:
    """The dropout rate α as a float in ``[0, 1)`` (``ValueError`` naming ``name`` otherwise)."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)):
        raise TypeError(f"{name} (the dropout rate α) must be a number in [0, 1); got {rate!r}")
    if not 0.0 <= float(rate) < 1.0:
        raise ValueError(f"{name} (the dropout rate α) must lie in [0, 1); got {rate!r}")
    return float(rate)


def dropout_keep_count(num_players: int, rate: float) -> int:
    """``k = ⌊(1-α)n⌋`` players kept at dropout rate α (Ren et al., NeurIPS 2021, supplement H), robust to float
    rounding: a product within ``1e-9`` (relative) of an integer counts as that integer, so ``α = 0.9, n = 10``
    keeps 1 player (the float product is ``0.9999999999999998``).

    >>> dropout_keep_count(10, 0.9), dropout_keep_count(10, 0.25), dropout_keep_count(7, 0.3)
    (1, 7, 4)
    """
    check_int(num_players, "num_players", minimum=1)
    kept = (1.0 - check_dropout_rate(rate)) * num_players
    nearest = round(kept)
    return int(nearest) if math.isclose(kept, nearest, rel_tol=1e-9, abs_tol=1e-9) else math.floor(kept)


def dropout_order_fractions(num_players: int, rate: float) -> torch.Tensor:
    """``(n-1,)`` float64: the fraction ``max(0, (k-1-m)/(n-1-m))`` of order ``m``'s share ``J^(m)`` that the dropout
    average keeps (Ren et al., NeurIPS 2021, supplement H, Eq. 20 in the exact form; ``k`` from
    :func:`dropout_keep_count`): orders ``m >= k-1`` vanish."""
    n, k = num_players, dropout_keep_count(num_players, rate)
    orders = torch.arange(n - 1, dtype=torch.float64)
    return ((k - 1 - orders) / (n - 1 - orders)).clamp_min(0.0)


def _value_table(values: torch.Tensor | ExactInteractions) -> torch.Tensor:
    table = values.value_table if isinstance(values, ExactInteractions) else torch.as_tensor(values)
    table = table.detach().to(torch.float64)
    return table.unsqueeze(0) if table.dim() == 1 else table


def dropout_average_value(values: torch.Tensor | ExactInteractions, rate: float) -> torch.Tensor:
    """``v^α(N) = E_{K ⊆ N, |K| = k} v(K)`` straight from a value table ``(2^n,)``/``(B, 2^n)`` (index = bitmask of
    the coalition) or exact interactions: the mean over all coalitions of ``k = ⌊(1-α)n⌋`` players
    (Ren et al., NeurIPS 2021, supplement H, the definition before Eq. 17). Returns ``(B,)``."""
    table = _value_table(values)
    n = table.shape[1].bit_length() - 1
    if table.dim() != 2 or table.shape[1] != 1 << n:
        raise ValueError(f"the value table must have shape (2^n,) or (B, 2^n); got {tuple(table.shape)}")
    k = dropout_keep_count(n, rate)
    sizes = torch.tensor([bin(s).count("1") for s in range(1 << n)])
    return table[:, sizes == k].mean(dim=1)


def dropout_value_from_interactions(exact: ExactInteractions, rate: float) -> torch.Tensor:
    """``v^α(N)`` from the interactions: ``v(∅) + (k/n) Σ_i φ^(0)(i) + Σ_m f_m J^(m)`` with the kept fractions
    ``f_m = max(0, (k-1-m)/(n-1-m))`` (Ren et al., NeurIPS 2021, supplement H, Eq. 20 in its exact form, see the
    module docstring; ``J^(m) = Σ_{i≠j} (n-1-m)/(n(n-1)) I^(m)_ij``). Returns ``(B,)``; equals
    :func:`dropout_average_value` up to rounding."""
    if not isinstance(exact, ExactInteractions):
        raise TypeError(f"exact must be an ExactInteractions (from exact_interactions); got {type(exact).__name__}")
    n = exact.num_players
    k = dropout_keep_count(n, rate)
    first_order = (exact.singleton_values - exact.empty_value.unsqueeze(1)).sum(dim=1)
    kept = exact.utility_sum @ dropout_order_fractions(n, rate).to(exact.utility_sum)
    return exact.empty_value + (k / n) * first_order + kept


def dropout_removed_by_order(exact: ExactInteractions, rate: float) -> torch.Tensor:
    """``(B, n-1)``: the part ``(1 - f_m) J^(m)`` of each order's share that dropout at rate α removes from ``v(N)``
    (Ren et al., NeurIPS 2021, supplement H, Eq. 20, exact form); with the first-order part
    ``(1 - k/n) Σ_i φ^(0)(i)`` it sums to ``v(N) - v^α(N)``."""
    fractions = dropout_order_fractions(exact.num_players, rate).to(exact.utility_sum)
    return exact.utility_sum * (1.0 - fractions)


# ----------------------------------------------------------------------------- pixel dropout and cutout


def _check_keep(keep: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if not isinstance(keep, torch.Tensor) or keep.dtype != torch.bool:
        raise TypeError("keep must be a boolean tensor of shape (B, H, W) or (B, 1, H, W)")
    if keep.dim() == 3:
        keep = keep.unsqueeze(1)
    batch, _, height, width = x.shape
    if keep.shape != (batch, 1, height, width):
        raise ValueError(
            f"keep must have shape ({batch}, {height}, {width}) or ({batch}, 1, {height}, {width}); "
            f"got {tuple(keep.shape)}"
        )
    return keep.to(x.device)


def neighbour_fill(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Fill every dropped pixel (``keep`` false) with the mean of the **kept** pixels around it, per channel.

    The neighbourhood is the 3x3 window (the 8 surrounding pixels, fewer at the border: only pixels inside the
    image count); a dropped pixel none of whose 8 neighbours is kept uses the smallest larger window
    (5x5, 7x7, ...) that holds a kept pixel. Only kept pixels are averaged (never other dropped pixels, filled or
    not) and kept pixels are returned unchanged. ``keep``: ``(B, H, W)`` or ``(B, 1, H, W)`` bool, at least one
    kept pixel per image. Used by :class:`PixelDropout` (supplement H: "filled with the average value of
    surrounding pixels")."""
    check_images(x, "x", allow_empty=False)
    keep = _check_keep(keep, x)
    if not bool(keep.flatten(1).any(dim=1).all()):
        raise ValueError("every image needs at least one kept pixel to fill the dropped ones from")
    weight = keep.to(x.dtype)
    kept_values = x * weight
    filled = x.clone()
    pending = ~keep  # (B, 1, H, W)
    radius = 1
    while bool(pending.any()):
        size = 2 * radius + 1
        # window sums with zero padding: pixels outside the image count neither as values nor as kept pixels
        total = F.avg_pool2d(kept_values, size, stride=1, padding=radius, divisor_override=1)
        count = F.avg_pool2d(weight, size, stride=1, padding=radius, divisor_override=1)
        ready = pending & (count > 0)
        mean = total / count.clamp_min(1.0)
        filled = torch.where(ready, mean, filled)
        pending = pending & ~ready
        radius += 1
    return filled


def _uniform_keep_masks(
    batch: int, height: int, width: int, kept: int, generator: torch.Generator | None
) -> torch.Tensor:
    """``(B, 1, H, W)`` masks, each with exactly ``kept`` pixels chosen uniformly at random."""
    scores = torch.rand(batch, height * width, generator=generator)
    order = scores.argsort(dim=1)
    keep = torch.zeros(batch, height * width, dtype=torch.bool)
    keep.scatter_(1, order[:, :kept], True)
    return keep.view(batch, 1, height, width)


@dataclass
class PixelDropout:
    """Pixel dropout at rate α with neighbour filling (Ren et al., NeurIPS 2021, §4.3, Table 1 "ours").

    Per image, exactly ``k = ⌊(1-α)·H·W⌋`` pixels (:func:`dropout_keep_count`; all channels together) are kept,
    uniformly at random -- the ``K`` of supplement H -- and every dropped pixel is filled by :func:`neighbour_fill`
    (the mean of the kept pixels of its 3x3 neighbourhood).

    Args:
        rate: α in ``[0, 1)`` (the paper: 0.1, 0.2, 0.3).
        seed: an ``int`` draws the same masks on every call, a ``torch.Generator`` continues its stream, ``None``
            uses torch's global generator. Masks are drawn on the CPU, so every device gets the same ones.
    """

    rate: float
    seed: int | torch.Generator | None = 0

    def __post_init__(self) -> None:
        self.rate = check_dropout_rate(self.rate)

    def keep_mask(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, H, W)`` bool: the kept pixels of each image of ``x``."""
        check_images(x, "x", allow_empty=False)
        batch, _, height, width = x.shape
        kept = dropout_keep_count(height * width, self.rate)
        if kept < 1:
            raise ValueError(
                f"rate={self.rate} keeps no pixel of a {height}x{width} image (k = ⌊(1-α)HW⌋ = 0); lower the rate"
            )
        return _uniform_keep_masks(batch, height, width, kept, make_generator(self.seed)).to(x.device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` with a fresh dropout mask per image, dropped pixels filled from their kept neighbours."""
        return neighbour_fill(x, self.keep_mask(x))


@dataclass
class Cutout:
    """Cutout (DeVries & Taylor, 2017) of one square per image (Ren et al., NeurIPS 2021, §4.3, Table 1 "cutout").

    The square (side ``size``, default half the shorter image side: 25 % of a square image's pixels, the paper's
    112 of 224) lies entirely inside the image at a uniformly random position and is filled with ``fill``
    (default ``"mean"``: the model's Normalize mean, i.e. zero after normalization as in the cutout code, which
    masks normalized images; ``"zeros"``, a per-channel mean or a tensor as
    :func:`~lit_advgame.interactions.make_baseline`).

    Args:
        size: side of the square in pixels, ``1 <= size <= min(H, W)`` (``None``: ``min(H, W) // 2``).
        fill: the fill value (``"mean"`` needs ``model=`` when called).
        seed: as :class:`PixelDropout`.
    """

    size: int | None = None
    fill: Baseline = "mean"
    seed: int | torch.Generator | None = 0

    def __post_init__(self) -> None:
        if self.size is not None:
            check_int(self.size, "size", minimum=1)

    def side(self, height: int, width: int) -> int:
        """The square's side for ``height x width`` images (``ValueError`` when it does not fit)."""
        size = min(height, width) // 2 if self.size is None else self.size
        if size < 1 or size > min(height, width):
            raise ValueError(
                f"cutout size {size} does not fit a {height}x{width} image: it must lie in [1, {min(height, width)}]"
            )
        return size

    def keep_mask(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, H, W)`` bool: false inside each image's square."""
        check_images(x, "x", allow_empty=False)
        batch, _, height, width = x.shape
        size = self.side(height, width)
        generator = make_generator(self.seed)
        top = torch.randint(0, height - size + 1, (batch,), generator=generator)
        left = torch.randint(0, width - size + 1, (batch,), generator=generator)
        rows, cols = torch.arange(height).view(1, -1, 1), torch.arange(width).view(1, 1, -1)
        inside = ((rows >= top.view(-1, 1, 1)) & (rows < (top + size).view(-1, 1, 1))) & (
            (cols >= left.view(-1, 1, 1)) & (cols < (left + size).view(-1, 1, 1))
        )
        return (~inside).unsqueeze(1).to(x.device)

    def __call__(self, x: torch.Tensor, model: nn.Module | None = None) -> torch.Tensor:
        """``x`` with one square per image replaced by ``fill`` (``model``: where ``"mean"`` is read from)."""
        keep = self.keep_mask(x)
        return torch.where(keep, x, make_baseline(self.fill, x, model).expand_as(x))


# ----------------------------------------------------------------------------- the experiment (Table 1)


class _AllStopped(Exception):
    """Raised inside the attack's step callback once every image has stopped: ends the attack early."""


@dataclass
class EarlyStoppedResult:
    """Output of :meth:`EarlyStoppedAttack.run`.

    Attributes:
        x_adv: ``(B, C, H, W)`` each image at its first successful iterate (or after all steps if it never
            succeeded).
        success: ``(B,)`` bool, the image succeeded (misclassified; for a targeted attack: the target reached).
        steps: ``(B,)`` long, the updates applied when it stopped (0: the start already succeeded; ``T`` for
            an image that never did).
        num_steps_run: updates the batch ran (fewer than ``T`` when every image stopped early).
        forward_passes: images through the model: the attack's class check (``B``), one forward-backward per image
            and update (plain PGD; more with VR copies or loss terms) and one forward per checked iterate.
    """

    x_adv: torch.Tensor
    success: torch.Tensor
    steps: torch.Tensor
    num_steps_run: int
    forward_passes: int


class EarlyStoppedAttack:
    """An iterative attack stopped per image at its first successful step (Ren et al., NeurIPS 2021, §4.3: "the
    attack was stopped once it succeeded").

    Wraps an :class:`~lit_advgame.attacks.Attack` (e.g. ``build_attack("pgd", model, eps=..., steps=...)``): every
    iterate ``x_t`` (the start ``t = 0``, then after each update) is classified and each image keeps its first
    successful one -- misclassified (``pred != y``), or for a targeted attack classified as the target. The attack's
    images are independent (each has its own objective and steps), so this is the image attacked alone and stopped
    there, with the batch's random streams; the attack ends once every image has stopped.
    """

    def __init__(self, attack: Attack) -> None:
        if not isinstance(attack, Attack):
            raise TypeError(
                f"attack must be a lit_advgame.attacks.Attack (e.g. build_attack('pgd', model, ...)); "
                f"got {type(attack).__name__}"
            )
        self.attack = attack

    def __call__(self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        return self.run(x, y, target).x_adv

    def run(self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> EarlyStoppedResult:
        """Attack ``x`` (``(B, C, H, W)`` in [0, 1]) with true labels ``y`` (and ``target`` when targeted).

        Works inside ``torch.inference_mode()`` (e.g. Lightning's predict loop): its state is made outside it."""
        with torch.inference_mode(False):
            return self._run(x, y, target)

    def _run(self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> EarlyStoppedResult:
        attack = self.attack
        check_images(x, "x", allow_empty=False)
        check_labels(y, x.shape[0], None, "y")
        if attack.targeted and target is None:
            raise ValueError("a targeted attack needs target labels: call run(x, y, target)")
        batch = x.shape[0]
        autocast = resolve_autocast(attack.autocast, x.device)
        goal = (target if attack.targeted else y).detach().to(x.device)
        x_adv = x.detach().clone()
        steps = torch.full((batch,), attack.steps, dtype=torch.long, device=x.device)
        stopped = torch.zeros(batch, dtype=torch.bool, device=x.device)
        counts = {"checked": 0, "updates": 0}

        def stop_successful(t: int, candidate: torch.Tensor) -> None:
            """Stop the images whose iterate ``candidate`` (after ``t`` updates) succeeds."""
            active = (~stopped).nonzero().squeeze(1)
            with torch.no_grad():
                predicted = forward_logits(
                    attack.model, candidate[active], autocast=autocast, channels_last=attack.channels_last
                ).argmax(dim=1)
            counts["checked"] += active.numel()
            counts["updates"] = t
            hit = predicted == goal[active] if attack.targeted else predicted != goal[active]
            done = active[hit]
            x_adv[done] = candidate[done].to(x_adv.dtype)
            steps[done] = t
            stopped[done] = True

        def callback(t: int, candidate: torch.Tensor) -> None:
            stop_successful(t, candidate)
            if bool(stopped.all()):
                raise _AllStopped

        try:
            final = attack.run(x, y, target, callback=callback, record_iterates=False).x_adv
        except _AllStopped:
            final = None
        if final is not None:  # every step ran: check the last iterate; the others end there
            remaining = ~stopped
            x_adv[remaining] = final[remaining].to(x_adv.dtype)
            with eval_mode(attack.models):
                stop_successful(attack.steps, final)
        return EarlyStoppedResult(
            x_adv=x_adv,
            success=stopped.clone(),
            steps=steps,
            num_steps_run=counts["updates"],
            forward_passes=batch * (1 + counts["updates"]) + counts["checked"],
        )


@dataclass
class CorrectionResult:
    """Adversarial examples corrected by an input transform (Ren et al., NeurIPS 2021, Table 1).

    Attributes:
        counted: ``(B,)`` bool, the adversarial example is misclassified (only these count).
        corrected: ``(B,)`` bool, counted and classified as the true label after the transform.
        ratio: corrected / counted (NaN when none is counted).
        num_counted: the number counted.
    """

    counted: torch.Tensor
    corrected: torch.Tensor
    ratio: float
    num_counted: int


def correction_ratio(
    model: nn.Module,
    x_adv: torch.Tensor,
    y: torch.Tensor,
    transform: Callable[[torch.Tensor], torch.Tensor],
) -> CorrectionResult:
    """The ratio of misclassified adversarial examples whose classification ``transform`` corrects back to the
    true label ``y`` (Ren et al., NeurIPS 2021, §4.3, Table 1), e.g. ``transform=PixelDropout(0.1)`` or
    ``functools.partial(Cutout(), model=model)``. Two forward passes per image."""
    check_module(model, "model")
    check_images(x_adv, "x_adv", allow_empty=False)
    check_labels(y, x_adv.shape[0], None, "y")
    if not callable(transform):
        raise TypeError(f"transform must map a batch of images to a batch of images; got {type(transform).__name__}")
    y = y.to(x_adv.device)
    with eval_mode(model), torch.no_grad():
        counted = model(x_adv).argmax(dim=1) != y
        transformed = transform(x_adv)
        if not isinstance(transformed, torch.Tensor) or transformed.shape != x_adv.shape:
            raise ValueError(f"transform must return images shaped like x_adv {tuple(x_adv.shape)}")
        corrected = counted & (model(transformed).argmax(dim=1) == y)
    num_counted = int(counted.sum())
    ratio = float(corrected.sum()) / num_counted if num_counted else math.nan
    return CorrectionResult(counted=counted, corrected=corrected, ratio=ratio, num_counted=num_counted)
