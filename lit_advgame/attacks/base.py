"""The iterative attack: a norm, gradient transforms and extra loss terms (IR paper, Appendix C and Eq. 5).

Each step (the order of the official IR code, ``ProjectionAttacker.perturb``):

    objective_i = Σ_copies ℓ(h(T(x_i + δ_i)), y_i) + Σ_terms term_i      (T: VR / DI input transforms)
    g = ∇_δ Σ_i objective_i                                            (SGM hooks active)

(the forward pass h(x + δ) is shared with terms that take ``logits``, e.g. the IR term's full coalition,
when no input transform changed x + δ; the IR term back-propagates its masked inputs chunk by chunk
inside its call, so the final backward only goes through h(x + δ))
    g ← TI(g);  g ← g / ‖g‖₁ (per sample);  g ← μ·g_prev + g (MI)
    δ ← Π(δ + α·sign(g))  or  Π(δ + α·g/‖g‖₂),   then x + δ clipped to [0, 1]

Every image has its own objective (losses are summed over the batch, not averaged), so a batch
attack equals attacking each image alone, up to the random streams. Randomness comes from one
base seed (``seed``, or drawn from ``generator``) split into independent streams per component
(:mod:`.seeding`), so adding e.g. MI with μ = 0 changes nothing in the random numbers of the rest.

Units: ε and α are in pixel units (images in [0, 1]). An L∞ ε or α above 1 (the L∞ diameter of
the pixel cube) and an L2 ε or α above √n (its L2 diameter, n = C·H·W of one image) is an error,
since such a value almost always means intensity levels (``eps: 16`` for 16/255): write the
fraction (``"16/255"``) or pass ``unit="1/255"`` to give ε and α in 0–255 intensity levels.

Precision (:mod:`lit_advgame.utils.precision`): with ``autocast="bf16"``/``"fp16"`` (or, with the default
``autocast=None``, inside an ambient ``torch.autocast`` region such as Lightning's ``bf16-mixed`` predict
step) only the model's forwards -- the classification loss's and the loss terms' (the IR term's masked
inputs) -- run in reduced precision, their logits cast back to float32; δ, its gradient, the gradient
transforms, the step, the projection onto the ε-ball and the clipping to [0, 1] stay float32, so ``x_adv``
is in [0, 1] and in the ball exactly as in float32. ``channels_last=True`` feeds the model channels_last
inputs (the same numbers).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from lit_advgame.attacks.ensemble import as_model_list, combine
from lit_advgame.attacks.loss_term import LossTerm
from lit_advgame.attacks.losses import LOSSES, classification_loss
from lit_advgame.attacks.model_mode import eval_mode
from lit_advgame.attacks.norms import Norm, build_norm
from lit_advgame.attacks.seeding import draw_base_seed, make_generator
from lit_advgame.attacks.transforms.base import Transform
from lit_advgame.utils.checks import (
    as_model_dtype,
    check_choice,
    check_images,
    check_int,
    check_labels,
    check_positive,
    parse_fraction,
)
from lit_advgame.utils.precision import (
    PrecisionModel,
    autocast_context,
    check_autocast,
    check_channels_last,
    resolve_autocast,
)
from lit_advgame.vocabulary import RADIUS_SCALINGS, RECORD_FORMATS, Autocast

SCALINGS = RADIUS_SCALINGS
#: units of ``eps``/``step_size`` and their size in pixel units (the value is divided by it):
#: pixel units (images in [0, 1]) or 0–255 intensity levels
UNITS = {"pixel": 1, "1/255": 255}


def radius_bound(norm: str, numel: int | None) -> float | None:
    """The largest meaningful ε/α: the diameter of the pixel cube [0, 1]^n in ``norm``.

    1 for L∞, √n for L2 (n = C·H·W of one image; ``None`` while n is unknown), ``None`` for
    other norms (no check).
    """
    if norm == "linf":
        return 1.0
    if norm == "l2" and numel is not None:
        return math.sqrt(numel)
    return None


def check_radius(
    value: float, name: str, norm: str, numel: int | None, *, given: str | None = None, sqrt_dim: bool = False
) -> None:
    """Raise when the pixel-space radius ``value`` exceeds :func:`radius_bound` (see the module docstring).

    With ``sqrt_dim`` (L2, ``value`` to be multiplied by √n) the bound on ``value`` itself is 1.
    """
    bound = 1.0 if sqrt_dim else radius_bound(norm, numel)
    if bound is None or value <= bound * (1 + 1e-12):
        return
    given = repr(value) if given is None else given
    if sqrt_dim:
        where = "1: it is multiplied by √n (sqrt_dim scaling) and the L2 diameter of pixel space [0, 1]^n is √n"
    elif norm == "linf":
        where = "1, the L∞ diameter of pixel space [0, 1]"
    else:
        where = f"√n = {bound:.6g}, the L2 diameter of pixel space [0, 1]^n for images of n = {numel} values"
    raise ValueError(
        f"{name} = {given} ({norm}) is larger than {where}. {name} is in pixel units (images in [0, 1]): "
        f"for 16 intensity levels write {name}: '16/255' (a fraction), or give eps and step_size in 0–255 "
        "levels with unit='1/255'"
    )


@dataclass
class AttackResult:
    """Output of :meth:`Attack.run`.

    Attributes:
        x_adv: (B, C, H, W) adversarial images x + δ_T in [0, 1] (after all T updates).
        iterates: with ``record_iterates``, a CPU tensor (T, B, C, H, W) of the candidates the
            official code stores: the state *before* update t = 0..T−1 (t = 0 is the start).
            Format ``"delta"``: δ_t in x's dtype. Format ``"uint8"``: round(255·(x + δ_t)) as uint8,
            the official code's 8-bit PNG quantisation.
        losses: per-step (T, B) CPU tensors: ``"objective"`` (the maximised total),
            ``"classification"`` (when computed) and each term's logs (e.g. ``"interaction"``).
    """

    x_adv: torch.Tensor
    iterates: torch.Tensor | None = None
    losses: dict[str, torch.Tensor] = field(default_factory=dict)


def l1_normalize(grad: torch.Tensor) -> torch.Tensor:
    """g / ‖g‖₁ per sample (MI-FGSM; the official code does it for every attack); zero stays zero."""
    norms = grad.flatten(1).abs().sum(dim=1)
    norms = torch.where(norms > 0, norms, torch.ones_like(norms))
    return grad / norms.view(-1, *([1] * (grad.dim() - 1)))


def _as_list(items, kind: type, name: str) -> list:
    if items is None:
        return []
    if isinstance(items, kind):
        items = [items]
    if not isinstance(items, (list, tuple)):
        raise TypeError(f"{name} must be a list of {kind.__name__} objects; got {type(items).__name__}")
    for i, item in enumerate(items):
        if not isinstance(item, kind):
            raise TypeError(f"{name}[{i}] must be a {kind.__name__}; got {type(item).__name__}")
    return list(items)


class Attack:
    """Iterative (projected) gradient attack in pixel space, batched and device-agnostic.

    Args:
        model: source classifier taking [0, 1] images (e.g. a ``NormalizedModel``), or a list of
            them (attacked through the mean of their logits).
        norm: ``"linf"`` or ``"l2"`` (or a :class:`~lit_advgame.attacks.norms.Norm`).
        eps: radius ε >= 0 in pixel units, a number or a fraction string such as ``"16/255"``
            (paper: 16/255 for L∞; 16/255·√n for L2, i.e. ``eps=16/255, eps_scaling="sqrt_dim"``).
            At most 1 for L∞ and √n for L2 (the diameter of the pixel cube, see the module docstring).
        step_size: step α > 0, same units and bounds (paper: 2/255; the official L2 code uses 2.0).
        steps: number of updates T >= 1 (paper: 100).
        loss: ``"ce"`` or ``"margin"`` (:mod:`.losses`), summed over images and VR copies.
        targeted: attack towards ``target`` (given to ``__call__``) instead of away from ``y``.
        random_start: start from a random δ (L∞: uniform in the ε-box; L2: see ``l2_init``);
            ``None`` (default) follows the official code: random unless a loss term prefers a
            zero start (IR with 0 < λ < ∞).
        transforms: :class:`~lit_advgame.attacks.transforms.Transform` objects (MI, VR, DI, TI, SGM).
        loss_terms: :class:`~lit_advgame.attacks.loss_term.LossTerm` objects (the IR term).
        eps_scaling, step_scaling: ``"none"``, or ``"sqrt_dim"`` to multiply ε (resp. α) by √n,
            n = C·H·W of one image, at call time (L2 only).
        unit: ``"pixel"`` (default: ε and α in pixel units, images in [0, 1]) or ``"1/255"``
            (ε and α in 0–255 intensity levels, e.g. ``eps=16, step_size=2``; divided by 255).
        l2_init: L2 random start, ``"image"`` (official) or ``"ball"`` (:class:`~.norms.L2Norm`).
        seed: base seed; every call with the same seed and input gives the same output.
        generator: instead of ``seed``, draw each call's base seed from this generator.
            With neither, the base seed is drawn from torch's global generator.
        record_iterates: keep the per-step candidates in :attr:`AttackResult.iterates`.
        record_format: ``"delta"`` or ``"uint8"`` (see :class:`AttackResult`).
        autocast: precision of the model's forwards: ``"bf16"``/``"fp16"`` (``torch.autocast``), ``"none"``
            (float32), or ``None`` (default) to follow the ambient ``torch.autocast`` state when the attack
            runs (e.g. Lightning's ``trainer.precision: bf16-mixed``); see the module docstring.
        channels_last: feed the model its inputs in ``torch.channels_last`` memory format.

    The resolved pixel-space radius and step are the attributes :attr:`resolved_eps` and
    :attr:`resolved_step_size` (with ``"sqrt_dim"`` scaling they are ``None`` until the first call,
    then the values of the latest call). Images of another floating dtype than the model (e.g.
    float64 images for a float32 model) are cast to the model's dtype: the attack runs in it and
    returns ``x_adv`` in it. The model(s) must be ``nn.Module`` objects (a plain function gets a
    ``TypeError``); an empty batch (B = 0) is a ``ValueError``.

    The model is put in eval mode during the attack (each module's mode is restored after), the
    attack runs with gradients enabled even inside ``torch.no_grad()``/``torch.inference_mode()``
    (e.g. Lightning's predict/validation loops) and only the input gets gradients: the models'
    parameters never accumulate ``.grad``.
    """

    def __init__(
        self,
        model: nn.Module | Sequence[nn.Module],
        norm: str | Norm = "linf",
        eps: float = 16 / 255,
        step_size: float = 2 / 255,
        steps: int = 100,
        *,
        loss: str = "ce",
        targeted: bool = False,
        random_start: bool | None = None,
        transforms: Sequence[Transform] = (),
        loss_terms: Sequence[LossTerm] = (),
        eps_scaling: str = "none",
        step_scaling: str = "none",
        l2_init: str = "image",
        unit: str = "pixel",
        seed: int | None = None,
        generator: torch.Generator | None = None,
        record_iterates: bool = False,
        record_format: str = "delta",
        autocast: Autocast | None = None,
        channels_last: bool = False,
    ) -> None:
        self.models = as_model_list(model)
        self.model = combine(self.models)
        self.norm = build_norm(norm, **({"init": l2_init} if str(norm).lower() in ("l2", "2") else {}))
        check_choice(unit, "unit", tuple(UNITS))
        given_eps, given_step = eps, step_size
        eps, step_size = parse_fraction(eps, "eps"), parse_fraction(step_size, "step_size")
        check_positive(eps, "eps", allow_zero=True)
        check_positive(step_size, "step_size")
        check_int(steps, "steps", minimum=1)
        check_choice(loss, "loss", LOSSES)
        if not isinstance(targeted, bool):
            raise TypeError(f"targeted must be a bool; got {targeted!r}")
        if random_start is not None and not isinstance(random_start, bool):
            raise TypeError(f"random_start must be a bool or None (auto); got {random_start!r}")
        check_choice(eps_scaling, "eps_scaling", SCALINGS)
        check_choice(step_scaling, "step_scaling", SCALINGS)
        if self.norm.name != "l2" and "sqrt_dim" in (eps_scaling, step_scaling):
            raise ValueError("eps_scaling/step_scaling 'sqrt_dim' only applies to the l2 norm")
        if seed is not None:
            check_int(seed, "seed", minimum=0)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator; got {type(generator).__name__}")
        if seed is not None and generator is not None:
            raise ValueError("give either seed or generator, not both")
        if not isinstance(record_iterates, bool):
            raise TypeError(f"record_iterates must be a bool; got {record_iterates!r}")
        check_choice(record_format, "record_format", RECORD_FORMATS)
        check_autocast(autocast)
        check_channels_last(channels_last)

        self.unit = unit
        self.eps = float(eps) / UNITS[unit]  # division: eps=16 in "1/255" is exactly the float 16/255
        self.step_size = float(step_size) / UNITS[unit]
        self._given = {"eps": given_eps, "step_size": given_step}
        self.steps = steps
        self.loss = loss
        self.targeted = targeted
        self.random_start = random_start
        self.transforms = _as_list(transforms, Transform, "transforms")
        self.loss_terms = _as_list(loss_terms, LossTerm, "loss_terms")
        self.eps_scaling = eps_scaling
        self.step_scaling = step_scaling
        self.seed = seed
        self.generator = generator
        self.record_iterates = record_iterates
        self.record_format = record_format
        self.autocast = autocast
        self.channels_last = channels_last
        for part in [*self.transforms, *self.loss_terms]:
            part.check_model(self.models)
        # L∞ radii (and √n-scaled L2 ones) can be checked now; unscaled L2 ones at call time
        self._check_radii(None)
        self.resolved_eps: float | None = None if eps_scaling == "sqrt_dim" else self.eps
        self.resolved_step_size: float | None = None if step_scaling == "sqrt_dim" else self.step_size

    def _check_radii(self, numel: int | None) -> None:
        for name, value, scaling in (
            ("eps", self.eps, self.eps_scaling),
            ("step_size", self.step_size, self.step_scaling),
        ):
            given = repr(self._given[name]) + ("" if self.unit == "pixel" else f" × 1/255 = {value:.6g}")
            check_radius(value, name, self.norm.name, numel, given=given, sqrt_dim=scaling == "sqrt_dim")

    # ----------------------------------------------------------------------------------------
    @property
    def uses_random_start(self) -> bool:
        if self.random_start is not None:
            return self.random_start
        return not any(term.prefers_zero_start for term in self.loss_terms)

    def effective_eps(self, x: torch.Tensor) -> float:
        """ε in pixel units for images shaped like ``x`` (×√(C·H·W) with ``eps_scaling="sqrt_dim"``)."""
        return self.eps * math.sqrt(x[0].numel()) if self.eps_scaling == "sqrt_dim" else self.eps

    def effective_step_size(self, x: torch.Tensor) -> float:
        """α for images shaped like ``x`` (×√(C·H·W) with ``step_scaling="sqrt_dim"``)."""
        return self.step_size * math.sqrt(x[0].numel()) if self.step_scaling == "sqrt_dim" else self.step_size

    def __call__(self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """Adversarial images (B, C, H, W) in [0, 1] for clean images ``x`` with labels ``y``."""
        return self.run(x, y, target).x_adv

    def run(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None = None,
        *,
        record_iterates: bool | None = None,
        callback: Callable[[int, torch.Tensor], None] | None = None,
    ) -> AttackResult:
        """Run the attack.

        Args:
            x: clean images (B, C, H, W) in [0, 1], B >= 1 (cast to the model's dtype).
            y: true labels (B,).
            target: target labels (B,), required iff ``targeted``.
            record_iterates: override the constructor's ``record_iterates``.
            callback: called as ``callback(t, x_t)`` with the detached candidate
                x_t = clip(x + δ_t) before each update t = 0..T−1 (e.g. to score every step
                on target models without storing the iterates).
        """
        self._check_inputs(x, y, target)
        record = self.record_iterates if record_iterates is None else record_iterates
        # the model's forwards under the resolved precision; an ambient autocast region covers nothing else
        model = PrecisionModel(self.model, resolve_autocast(self.autocast, x.device), self.channels_last)
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.inference_mode(False))
            stack.enter_context(torch.enable_grad())
            stack.enter_context(autocast_context("none", x.device))
            stack.enter_context(eval_mode(self.models))
            x = as_model_dtype(x.detach(), self.models).clone()
            y = y.detach().to(x.device).clone()
            labels = y
            if self.targeted:
                target = target.detach().to(x.device).clone()
                labels = target
            with torch.no_grad():
                num_classes = model(x).shape[1]
            check_labels(y, x.shape[0], num_classes, "y")
            if self.targeted:
                check_labels(target, x.shape[0], num_classes, "target")
            return self._iterate(model, x, y, labels, record, callback)

    # ----------------------------------------------------------------------------------------
    def _check_inputs(self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> None:
        check_images(x, "x", allow_empty=False)
        self._check_radii(x[0].numel())
        check_labels(y, x.shape[0], None, "y")
        if self.targeted and target is None:
            raise ValueError("a targeted attack needs target labels: call attack(x, y, target)")
        if not self.targeted and target is not None:
            raise ValueError("target labels were given to an untargeted attack; build it with targeted=True")
        if target is not None:
            check_labels(target, x.shape[0], None, "target")
        for i, model in enumerate(self.models):
            param = next(model.parameters(), None)
            if param is not None and param.device != x.device:
                raise ValueError(f"model[{i}] is on {param.device} but x is on {x.device}; move them to one device")

    def _base_seed(self) -> int:
        return self.seed if self.seed is not None else draw_base_seed(self.generator)

    def _start_components(self, x: torch.Tensor, base_seed: int) -> None:
        counts: dict[str, int] = {}
        for part in [*self.transforms, *self.loss_terms]:
            kind = type(part).__name__
            index = counts.get(kind, 0)
            counts[kind] = index + 1
            part.start(x, make_generator(base_seed, f"{kind}#{index}", x.device))

    def _iterate(self, model, x, y, labels, record, callback) -> AttackResult:
        base_seed = self._base_seed()
        self._start_components(x, base_seed)
        eps, alpha = self.effective_eps(x), self.effective_step_size(x)
        self.resolved_eps, self.resolved_step_size = eps, alpha
        if self.uses_random_start:
            delta = self.norm.random_init(x, eps, make_generator(base_seed, "random_start", x.device))
        else:
            delta = torch.zeros_like(x)

        iterates, history = [], {}
        for t in range(self.steps):
            if record:
                iterates.append(self._snapshot(x, delta))
            if callback is not None:
                callback(t, (x + delta).clamp(0.0, 1.0).detach())
            grad, logs = self._gradient(model, x, delta, y, labels)
            for name, values in logs.items():
                history.setdefault(name, []).append(values)
            for transform in self.transforms:
                grad = transform.transform_gradient(grad)
            grad = l1_normalize(grad)
            for transform in self.transforms:
                grad = transform.update_direction(grad)
            delta = self.norm.project(self.norm.step(delta, grad, alpha), x, eps).detach()

        return AttackResult(
            x_adv=(x + delta).clamp(0.0, 1.0).detach(),
            iterates=torch.stack(iterates) if record else None,
            losses={name: torch.stack(values).cpu() for name, values in history.items()},
        )

    def _snapshot(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        if self.record_format == "uint8":
            return torch.round((x + delta).clamp(0.0, 1.0) * 255).to(torch.uint8).cpu()
        return delta.detach().cpu().clone()

    def _gradient(self, model, x, delta, y, labels) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """∇_δ of the summed per-image objective, and the per-image values logged for this step (``model``:
        the attacked model under the attack's precision, :class:`~lit_advgame.utils.precision.PrecisionModel`)."""
        batch = x.shape[0]
        delta = delta.detach().requires_grad_(True)
        logs: dict[str, torch.Tensor] = {}
        with contextlib.ExitStack() as stack:
            for transform in self.transforms:
                stack.enter_context(transform.model_context(self.models))
            objective = torch.zeros(batch, device=x.device, dtype=x.dtype)
            shared = None  # the logits at the untransformed x + δ, reused by terms with uses_logits
            if not any(term.replaces_classification_loss for term in self.loss_terms):
                perturbed = x + delta
                inputs = perturbed
                for transform in self.transforms:
                    inputs = transform.transform_input(inputs)
                copies = inputs.shape[0] // batch
                logits = model(inputs)
                if inputs is perturbed:
                    shared = logits
                rows = classification_loss(logits, labels.repeat(copies), self.loss, self.targeted)
                per_image = rows.view(copies, batch).sum(dim=0)
                for transform in self.transforms:
                    per_image = transform.reduce_copies(per_image)
                objective = per_image
                logs["classification"] = per_image.detach()
            for term in self.loss_terms:
                extra = {"logits": shared} if term.uses_logits else {}
                contribution, term_logs = term(model, x, delta, y, **extra)
                objective = objective + contribution
                logs.update(term_logs)
            logs["objective"] = objective.detach()
            (grad,) = torch.autograd.grad(objective.sum(), delta)
        return grad, logs

    def __repr__(self) -> str:
        parts = [
            f"norm={self.norm.name!r}",
            f"eps={self.eps:.6g}" + (" (×√n)" if self.eps_scaling == "sqrt_dim" else ""),
            f"step_size={self.step_size:.6g}" + (" (×√n)" if self.step_scaling == "sqrt_dim" else ""),
            f"steps={self.steps}",
            f"loss={self.loss!r}",
            f"targeted={self.targeted}",
            f"random_start={self.uses_random_start}",
            f"transforms={self.transforms}",
            f"loss_terms={self.loss_terms}",
        ]
        if self.autocast is not None or self.channels_last:
            parts += [f"autocast={self.autocast!r}", f"channels_last={self.channels_last}"]
        return f"Attack({', '.join(parts)})"
