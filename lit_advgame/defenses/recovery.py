"""Recoverability of adversarial examples (Ren et al., NeurIPS 2021, §4.3 and supplement I.10, Table 4).

An untargeted attack takes a correctly labelled image ``x`` to ``x_adv`` (``max_{‖x_adv − x‖ ≤ ε} ℓ(x_adv, y)``);
a targeted attack with the **same parameters** then inverts it back to the true label,
``min_{δ'} ℓ(x_adv + δ', y)`` with ``‖δ'‖ ≤ ε`` -- the recovery ball is centred at ``x_adv`` (the paper writes
the recovered sample as ``x̂ = x_adv + δ'``). The adversarial example is *recoverable* when
``‖x̂ − x‖₂ ≤ ‖x_adv − x‖₂``. Supplement I.10 runs both attacks as L∞ PGD with ε = 16/255, 10 steps of
2/255 (the defaults here) and reports ``E‖x − x_adv‖₂`` and ``E‖x − x̂‖₂`` for standard and adversarially
trained networks (Table 4: adversarially trained networks recover closer than their attack went; standard
ones do not).

Both attacks come from the attack library (:func:`~lit_advgame.attacks.build_attack`), so any preset and
option applies to them alike; the recovery's random start draws from its own stream of ``seed``. Distances
are L2 norms in pixel units (images in [0, 1]), per image; the summaries are means over images with the
standard error of the mean (images iid), also over the images the attack fooled only (``subset="fooled"``).

>>> import torch
>>> from torch import nn
>>> _ = torch.manual_seed(0)
>>> model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
>>> x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
>>> result = recoverability(model, x, y, steps=3)
>>> tuple(result.adversarial_distance.shape), result.num_forward_passes
((4,), 32)
>>> bool(((result.x_recovered - result.x_adv).abs().amax() <= 16 / 255 + 1e-6))  # the ball around x_adv
True
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lit_advgame.attacks.base import Attack
from lit_advgame.attacks.presets import build_attack
from lit_advgame.interactions.stats import mean_and_stderr
from lit_advgame.utils.checks import check_choice, check_images, check_int, check_labels, check_module
from lit_advgame.utils.modes import eval_mode
from lit_advgame.utils.seeding import derive_seed
from lit_advgame.vocabulary import RECOVERY_SUBSETS, Norm, RecoverySubset


def l2_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image ``‖a − b‖₂`` (float64, shape ``(B,)``) of two image batches, in pixel units."""
    return (a.double() - b.double()).flatten(1).norm(p=2, dim=1)


@dataclass
class RecoveryResult:
    """Per-image outcome of :meth:`Recoverability.evaluate` (supplement I.10).

    Attributes:
        x_adv, x_recovered: ``(B, C, H, W)`` the untargeted adversarial examples and the recovered samples
            ``x̂ = x_adv + δ'`` (``‖δ'‖ ≤ ε``, in [0, 1]).
        adversarial_distance, recovered_distance: ``(B,)`` ``‖x_adv − x‖₂`` and ``‖x̂ − x‖₂`` (float64).
        fooled: ``(B,)`` the attack changed the prediction away from ``y``.
        restored: ``(B,)`` ``x̂`` is classified as ``y`` again.
        num_forward_passes: model forwards of both attacks (each with a backward pass), all images.
    """

    x_adv: torch.Tensor
    x_recovered: torch.Tensor
    adversarial_distance: torch.Tensor
    recovered_distance: torch.Tensor
    fooled: torch.Tensor
    restored: torch.Tensor
    num_forward_passes: int

    @property
    def closer(self) -> torch.Tensor:
        """``(B,)`` recovered at least as close as the attack went: ``‖x̂ − x‖₂ ≤ ‖x_adv − x‖₂`` (the paper's test)."""
        return self.recovered_distance <= self.adversarial_distance

    def _mask(self, subset: RecoverySubset) -> torch.Tensor:
        check_choice(subset, "subset", RECOVERY_SUBSETS)
        if subset == "all":
            return torch.ones_like(self.fooled, dtype=torch.bool)
        return self.fooled.bool()

    def summary(self, subset: RecoverySubset = "all") -> dict[str, float]:
        """Means over the images of ``subset`` (``"all"`` or ``"fooled"``) with standard errors (``_stderr``).

        ``adversarial_distance`` (``E‖x − x_adv‖₂``), ``recovered_distance`` (``E‖x − x̂‖₂``), ``gain`` (their paired
        difference ``E[‖x − x_adv‖₂ − ‖x − x̂‖₂]``, > 0: recovered closer), ``closer`` (the fraction recovered
        closer), ``restored`` (the fraction classified as ``y`` again), plus ``fooled`` (the attack's success rate
        over all images) and ``num_images`` (in the subset). An empty subset gives NaN; one image a NaN error.
        """
        mask = self._mask(subset)
        per_image = {**self.summary_terms(), "restored": self.restored.double()}
        out: dict[str, float] = {}
        for name, values in per_image.items():
            selected = values[mask.to(values.device)]
            if selected.numel() == 0:
                mean = stderr = torch.tensor(float("nan"))
            else:
                mean, stderr = mean_and_stderr(selected, dim=0)
            out[name], out[f"{name}_stderr"] = float(mean), float(stderr)
        out["fooled"] = float(self.fooled.double().mean())
        out["num_images"] = float(mask.sum())
        return out

    def to_dict(self, prefix: str = "recovery", subset: RecoverySubset = "all") -> dict[str, float]:
        """:meth:`summary` as ``{prefix}/{name}`` scalars, plus ``{prefix}/num_forward_passes``."""
        out = {f"{prefix}/{name}": value for name, value in self.summary(subset).items()}
        out[f"{prefix}/num_forward_passes"] = float(self.num_forward_passes)
        return out

    def difference(self, other: RecoveryResult, subset: RecoverySubset = "all") -> dict[str, float]:
        """Paired per-image differences ``self − other`` on the same images (e.g. AT model − standard model).

        ``closer``, ``gain``, ``adversarial_distance`` and ``recovered_distance`` with standard errors of the
        paired differences (the images are shared, so the image-to-image variation cancels). With
        ``subset="fooled"`` only images fooled on both models count.
        """
        if self.adversarial_distance.shape != other.adversarial_distance.shape:
            raise ValueError(
                "difference() compares results on the same images; got "
                f"{self.adversarial_distance.numel()} and {other.adversarial_distance.numel()} images"
            )
        mask = self._mask(subset) & other._mask(subset)
        mine, theirs = self.summary_terms(), other.summary_terms()
        out: dict[str, float] = {}
        for name in mine:
            diff = (mine[name] - theirs[name])[mask]
            mean, stderr = mean_and_stderr(diff, dim=0) if diff.numel() else (torch.tensor(float("nan")),) * 2
            out[name], out[f"{name}_stderr"] = float(mean), float(stderr)
        out["num_images"] = float(mask.sum())
        return out

    def summary_terms(self) -> dict[str, torch.Tensor]:
        """The per-image quantities :meth:`difference` compares (float64, ``(B,)``)."""
        return {
            "adversarial_distance": self.adversarial_distance,
            "recovered_distance": self.recovered_distance,
            "gain": self.adversarial_distance - self.recovered_distance,
            "closer": self.closer.double(),
        }


@dataclass
class Recoverability:
    """Settings of the recoverability test (Ren et al., NeurIPS 2021, supplement I.10): both attacks alike.

    Args:
        attack: attack preset of both attacks (:func:`~lit_advgame.attacks.available_presets`; the paper: PGD).
        norm: ``"linf"`` (the paper) or ``"l2"``.
        eps, step_size: radius and step in pixel units, numbers or fractions such as ``"16/255"`` (the paper:
            16/255 and 2/255).
        steps: iterations of each attack (the paper: 10).
        seed: base seed; the attack uses it, the recovery a stream derived from it (``derive_seed(seed,
            "recovery")``), so both random starts are reproducible and independent.
        attack_kwargs: further options of :func:`~lit_advgame.attacks.build_attack` for both attacks
            (``targeted`` is set here and may not be given).
    """

    attack: str = "pgd"
    norm: Norm = "linf"
    eps: float | str = 16 / 255
    step_size: float | str = 2 / 255
    steps: int = 10
    seed: int = 0
    attack_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_int(self.steps, "steps", minimum=1)
        check_int(self.seed, "seed", minimum=0)
        if not isinstance(self.attack_kwargs, Mapping):
            raise TypeError(f"attack_kwargs must be a mapping of attack options; got {type(self.attack_kwargs)}")
        fixed = sorted({"targeted", "seed", "norm", "eps", "step_size", "steps"} & set(self.attack_kwargs))
        if fixed:
            raise ValueError(f"attack_kwargs may not set {fixed}: they are Recoverability's own settings")

    def attacks(self, model: nn.Module) -> tuple[Attack, Attack]:
        """The untargeted attack and the targeted recovery on ``model``, with the same parameters."""
        common = {"norm": self.norm, "eps": self.eps, "step_size": self.step_size, "steps": self.steps}
        attack = build_attack(self.attack, model, seed=self.seed, **common, **self.attack_kwargs)
        recovery = build_attack(
            self.attack,
            model,
            targeted=True,
            seed=derive_seed(self.seed, "recovery"),
            **common,
            **self.attack_kwargs,
        )
        return attack, recovery

    def num_forward_passes(self, num_images: int) -> int:
        """The cost of :meth:`evaluate`: ``2 · steps`` forward-backward passes per image plus 2 predictions."""
        return num_images * 2 * (self.steps + 1)

    def evaluate(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> RecoveryResult:
        """Attack ``x`` (labels ``y``), recover towards ``y`` from ``x_adv`` and measure the distances (I.10)."""
        check_module(model, "model")
        check_images(x, "x", allow_empty=False)
        check_labels(y, x.shape[0], None, "y")
        y = y.to(x.device)
        attack, recovery = self.attacks(model)
        x_adv = attack(x, y)
        x_hat = recovery(x_adv, y, target=y)
        with torch.no_grad(), eval_mode(model):
            fooled = model(x_adv).argmax(dim=1) != y
            restored = model(x_hat).argmax(dim=1) == y
        return RecoveryResult(
            x_adv=x_adv,
            x_recovered=x_hat,
            adversarial_distance=l2_distance(x_adv, x).cpu(),
            recovered_distance=l2_distance(x_hat, x).cpu(),
            fooled=fooled.cpu(),
            restored=restored.cpu(),
            num_forward_passes=self.num_forward_passes(x.shape[0]),
        )

    def compare(self, models: Mapping[str, nn.Module], x: torch.Tensor, y: torch.Tensor) -> dict[str, RecoveryResult]:
        """:meth:`evaluate` for each named model (e.g. ``{"standard": ..., "adversarial": ...}``) on the same images."""
        if not isinstance(models, Mapping) or not models:
            raise ValueError("models must be a non-empty mapping {name: model}")
        return {name: self.evaluate(model, x, y) for name, model in models.items()}


def recoverability(model: nn.Module, x: torch.Tensor, y: torch.Tensor, **settings: Any) -> RecoveryResult:
    """The recoverability test of supplement I.10 on one model: :class:`Recoverability` ``(**settings)``."""
    return Recoverability(**settings).evaluate(model, x, y)


def compare_recoverability(
    models: Mapping[str, nn.Module], x: torch.Tensor, y: torch.Tensor, **settings: Any
) -> dict[str, RecoveryResult]:
    """The recoverability test on several models and the same images (Table 4: standard vs adversarially trained)."""
    return Recoverability(**settings).compare(models, x, y)


def recoverability_table(results: Mapping[str, RecoveryResult], subset: RecoverySubset = "all") -> str:
    """A Markdown table of Table 4's columns per model: ``E‖x − x_adv‖₂``, ``E‖x − x̂‖₂``, the fraction
    recovered closer and the fraction restored to ``y``, each ± one standard error (``–`` where the subset is
    empty, no error for a single image)."""
    lines = [
        "| model | images | fooled | E‖x − x_adv‖₂ | E‖x − x̂‖₂ | recovered closer | restored to y |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        s = result.summary(subset)
        cells = [_mean_pm(s[key], s[f"{key}_stderr"]) for key in ("adversarial_distance", "recovered_distance")]
        cells += [_mean_pm(s[key], s[f"{key}_stderr"]) for key in ("closer", "restored")]
        lines.append(f"| {name} | {int(s['num_images'])} | {s['fooled']:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _mean_pm(mean: float, stderr: float) -> str:
    """``"mean ± SE"``; ``"–"`` for an empty subset (NaN mean), the mean alone for one image (NaN SE)."""
    if math.isnan(mean):
        return "–"
    return f"{mean:.3f}" if math.isnan(stderr) else f"{mean:.3f} ± {stderr:.3f}"
