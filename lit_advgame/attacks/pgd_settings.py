"""The settings of a PGD attack inside training or robust validation, defined once with their defaults.

PGD (Madry et al., ICLR 2018, Sec. 2.1): a random start in the ε-ball, ``steps`` projected ascent steps of size
α, under the L∞ (sign steps) or L2 (normalised-gradient steps) norm. The training modules take these settings as
injected objects (LightningCLI: a nested ``attack:`` / ``eval_attack:`` mapping, e.g. ``attack: {eps: 0.1,
steps: 5}``; Python: ``PGDSettings(eps=0.1, steps=5)`` or the same dict):

* :class:`~lit_advgame.training.AdversarialTraining`: ``attack`` (the inner maximisation) and ``eval_attack``
  (robust validation/test, whose ``norm`` and ``eps`` default to the training attack's);
* :class:`~lit_advgame.training.Ensemble`: ``attack`` (adversarial training against the ensemble output).

Defaults (one value per concept): L∞, ε = 8/255 (the CIFAR-10 threat model of Madry et al. and of the ensemble
papers), 10 steps, α = 2.5·ε/steps (Madry et al.'s rule: the attack can walk 2.5 radii), random start.
The transfer attacks of :mod:`lit_advgame.attacks.presets` are another concept (the IR paper's 100-step attacks
at 16/255) with their own defaults.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from lit_advgame.attacks.base import Attack
from lit_advgame.attacks.loss_term import LossTerm
from lit_advgame.attacks.norms import Norm
from lit_advgame.utils.checks import check_choice, check_int, check_positive
from lit_advgame.vocabulary import NORMS
from lit_advgame.vocabulary import Norm as NormName

NORM_NAMES = NORMS
DEFAULT_NORM = "linf"
#: ε of a training attack that does not give one: 8/255 in pixel units (images in [0, 1])
DEFAULT_EPS = 8 / 255
DEFAULT_STEPS = 10
#: α = STEP_SIZE_FACTOR·ε/steps when ``step_size`` is not given (Madry et al. 2018)
STEP_SIZE_FACTOR = 2.5


@dataclass(frozen=True)
class PGDSettings:
    """Norm, radius and steps of a PGD attack (Madry et al., ICLR 2018, Sec. 2.1).

    Args:
        norm: ``"linf"`` or ``"l2"``; ``None``: inherited (an evaluation attack: the training attack's norm;
            otherwise ``"linf"``).
        eps: radius ε >= 0 in pixel units; ``None``: inherited (an evaluation attack: the training attack's ε;
            otherwise :data:`DEFAULT_EPS` = 8/255). ε = 0: no perturbation.
        steps: ascent steps (>= 1; an evaluation attack may set 0 to switch it off).
        step_size: α > 0; ``None``: 2.5·ε/steps (Madry et al.'s rule).
        random_start: start uniformly in the ε-ball (else at δ = 0).

    :meth:`resolved` fills in the inherited values:

    >>> train = PGDSettings(eps=0.1, steps=5).resolved()
    >>> train
    PGDSettings(norm='linf', eps=0.1, steps=5, step_size=0.05, random_start=True)
    >>> PGDSettings(steps=20).resolved(inherit=train).eps     # an evaluation attack at the training radius
    0.1
    >>> PGDSettings().resolved().eps == 8 / 255
    True
    """

    norm: NormName | None = None
    eps: float | None = None
    steps: int = DEFAULT_STEPS
    step_size: float | None = None
    random_start: bool = True

    def __post_init__(self) -> None:
        if self.norm is not None:
            check_choice(self.norm, "norm", NORM_NAMES)
        if self.eps is not None:
            check_positive(self.eps, "eps", allow_zero=True)
        check_int(self.steps, "steps", minimum=0)
        if self.step_size is not None:
            check_positive(self.step_size, "step_size")
        if not isinstance(self.random_start, bool):
            raise TypeError(f"random_start must be true or false; got {self.random_start!r}")

    @classmethod
    def coerce(cls, value: PGDSettings | Mapping[str, Any], name: str) -> PGDSettings:
        """``value`` as settings: a :class:`PGDSettings` or a mapping of its fields (YAML, a checkpoint's
        hyper-parameters); errors name the argument ``name``."""
        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping):
            raise TypeError(f"{name} must be PGD settings (a mapping of {', '.join(cls.fields())}); got {value!r}")
        unknown = sorted(set(value) - set(cls.fields()))
        if unknown:
            raise TypeError(f"{name}: unknown PGD setting(s) {unknown}; the settings are: {', '.join(cls.fields())}")
        try:
            return cls(**value)
        except (TypeError, ValueError) as err:
            raise type(err)(f"{name}: {err}") from None

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def resolved(self, inherit: PGDSettings | None = None) -> PGDSettings:
        """Concrete settings: ``norm``/``eps`` left ``None`` come from ``inherit`` (or the defaults), a missing
        ``step_size`` is 2.5·ε/steps (1.0, unused, when ε or steps is 0)."""
        norm = self.norm if self.norm is not None else (inherit.norm if inherit is not None else None)
        eps = self.eps if self.eps is not None else (inherit.eps if inherit is not None else None)
        norm = DEFAULT_NORM if norm is None else norm
        eps = DEFAULT_EPS if eps is None else float(eps)
        step_size = self.step_size
        if step_size is None:
            step_size = STEP_SIZE_FACTOR * eps / self.steps if eps > 0 and self.steps > 0 else 1.0
        return dataclasses.replace(self, norm=norm, eps=float(eps), step_size=float(step_size))

    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (what a checkpoint's hyper-parameters hold)."""
        return dataclasses.asdict(self)

    def build(
        self,
        model: nn.Module,
        *,
        eps: float | None = None,
        norm: Norm | None = None,
        loss_terms: Sequence[LossTerm] = (),
        random_start: bool | None = None,
        seed: int | None = None,
    ) -> Attack:
        """The :class:`~lit_advgame.attacks.Attack` of these (resolved) settings on ``model``.

        ``eps`` overrides the radius and scales the step with it (α·eps/ε, e.g. during an ε warm-up);
        ``norm`` replaces the norm object (e.g. TRADES' Gaussian start); ``loss_terms`` replace or add to the
        CE loss; ``random_start`` overrides the setting."""
        settings = self.resolved()
        radius, step = settings.eps, settings.step_size
        if eps is not None:
            radius = float(eps)
            step = step * radius / settings.eps if settings.eps > 0 and radius > 0 else step
        return Attack(
            model,
            settings.norm if norm is None else norm,
            radius,
            step,
            settings.steps,
            loss="ce",
            random_start=settings.random_start if random_start is None else random_start,
            loss_terms=loss_terms,
            seed=seed,
        )


PGD_DEFAULTS = PGDSettings()
"""The default settings (every field at its default): a training attack's, and an evaluation attack's that
inherits the training norm and ε."""


def settings_from_deprecated(
    kwargs: dict[str, Any],
    settings: PGDSettings | Mapping[str, Any] | None,
    name: str,
    keywords: Mapping[str, str],
    legacy_defaults: Mapping[str, Any] | None = None,
) -> PGDSettings | Mapping[str, Any] | None:
    """Pop the deprecated flat ``keywords`` from ``kwargs`` (warning once per keyword, naming the new
    ``<name>.<setting>``) and merge them into ``settings``; ``legacy_defaults`` fill what the old keywords
    left out, as before. Given both, a flat keyword and the ``name`` argument are an error."""
    given = {new: kwargs.pop(old) for old, new in keywords.items() if old in kwargs}
    if not given:
        return settings
    old_names = [old for old, new in keywords.items() if new in given]
    for old in old_names:
        warnings.warn(
            f"{old} is deprecated; use {name}.{keywords[old]} (e.g. `{name}: {{{keywords[old]}: ...}}`)",
            DeprecationWarning,
            stacklevel=3,
        )
    if settings is not None and PGDSettings.coerce(settings, name) != PGD_DEFAULTS:
        raise ValueError(f"give either {name} or the deprecated {', '.join(old_names)}, not both")
    return PGDSettings.coerce({**(legacy_defaults or {}), **given}, f"{name} (given as {', '.join(old_names)})")
