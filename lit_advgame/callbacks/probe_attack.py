"""The attack a callback runs on its probe set, chosen by name in the config.

* ``"strength"``: the strength-controlled attack of Ren et al. (NeurIPS 2021; reference code),
  :class:`~lit_advgame.attacks.strength.StrengthControlledAttack`: every example lowers
  the true-class logit by about ``threshold``. Options: its keyword arguments (``threshold``,
  ``tolerance``, ``eps``, ``step_size``, ``steps``, ``min_step_size``, ``init_std``,
  ``require_misclassification``).
* any attack preset of :func:`lit_advgame.attacks.build_attack` (``"pgd"``, ``"mi"``, ...), with
  its options (``eps``, ``step_size``, ``steps``, ...).

Numeric options may be written as fractions such as ``"16/255"`` in YAML.

As the reference, only probes the model classifies correctly are attacked. The attack is seeded
(the callback's ``seed`` unless the options give one), so an epoch's adversarial examples depend
only on the model's weights.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import torch
from torch import nn

from lit_advgame.attacks import build_attack, preset_config
from lit_advgame.attacks.strength import DEFAULT_STEPS, StrengthControlledAttack
from lit_advgame.callbacks.probes import batched_logits
from lit_advgame.utils.checks import check_int
from lit_advgame.utils.tensorboard import Chart, exact

STRENGTH = "strength"
_NUMBER_KEYS = ("threshold", "tolerance", "eps", "step_size", "min_step_size", "init_std")


def _parse_number(value: Any, key: str) -> Any:
    """Accept YAML fractions such as ``"64/255"`` for the strength attack's numeric options."""
    if isinstance(value, str) and key in _NUMBER_KEYS:
        try:
            return float(Fraction(value.replace(" ", "")))
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"{key} must be a number or a fraction such as '64/255'; got {value!r}") from None
    return value


@dataclass
class AttackOutcome:
    """Adversarial examples of the correctly classified probes.

    Attributes:
        x, y: the attacked probes (those the model classifies correctly), ``(K, C, H, W)`` / ``(K,)``.
        x_adv: their adversarial examples.
        reached: ``(K,)`` bool; the strength attack's window was reached (all True for presets).
        stats: scalars to log: ``clean_accuracy`` (on the whole probe set), ``success_rate``
            (misclassified after the attack), ``logit_drop`` (mean ``h_y(x) - h_y(x_adv)``),
            ``linf`` (mean ``‖x_adv - x‖∞``) and, for the strength attack, ``reached_fraction``.
    """

    x: torch.Tensor
    y: torch.Tensor
    x_adv: torch.Tensor
    reached: torch.Tensor
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def num_attacked(self) -> int:
        return int(self.x.shape[0])


class ProbeAttack:
    """An attack given by name and options (see the module docstring), validated at construction.

    Args:
        name: ``"strength"`` or an attack preset name.
        options: keyword arguments of that attack.
        seed: seed used when ``options`` gives none.
    """

    def __init__(self, name: str = STRENGTH, options: Mapping[str, Any] | None = None, seed: int = 0) -> None:
        if not isinstance(name, str):
            raise TypeError(f"attack must be 'strength' or an attack preset name; got {name!r}")
        if options is not None and not isinstance(options, Mapping):
            raise TypeError(f"attack_kwargs must be a mapping of attack options; got {type(options).__name__}")
        check_int(seed, "seed", minimum=0)
        self.name = name
        self.options = dict(options or {})
        self.options.setdefault("seed", seed)
        if name == STRENGTH:
            self.options = {key: _parse_number(value, key) for key, value in self.options.items()}
            allowed = [
                p for p in inspect.signature(StrengthControlledAttack.__init__).parameters if p not in ("self", "model")
            ]
            unknown = sorted(set(self.options) - set(allowed))
            if unknown:
                raise ValueError(f"unknown option(s) {unknown} of the 'strength' attack; allowed: {', '.join(allowed)}")
            StrengthControlledAttack(nn.Identity(), **self.options)  # validates the values
        else:
            preset_config(name, **self.options)  # unknown preset or option -> ValueError naming it

    @property
    def steps(self) -> int:
        """The attack's number of gradient steps (the strength attack's maximum)."""
        if self.name == STRENGTH:
            return int(self.options.get("steps", DEFAULT_STEPS))
        return int(preset_config(self.name, **self.options)["steps"])

    def describe(self) -> str:
        """``"the 'pgd' attack (10 steps per probe)"``: for the callbacks' cost announcement."""
        bound = "up to " if self.name == STRENGTH else ""
        return f"the {self.name!r} attack ({bound}{self.steps} steps per probe)"

    def charts(self, prefix: str) -> list[Chart]:
        """Multi-line charts of the statistics :meth:`run` returns, logged as ``<prefix>/attack/<statistic>``."""
        rates = ("clean_accuracy", "success_rate") + (("reached_fraction",) if self.name == STRENGTH else ())
        return [
            Chart(f"{self.name} attack: {', '.join(rates)}", tuple(exact(f"{prefix}/attack/{k}") for k in rates)),
            Chart(f"{self.name} attack: mean drop of the true-class logit", (exact(f"{prefix}/attack/logit_drop"),)),
            Chart(f"{self.name} attack: mean L-inf norm of the perturbation", (exact(f"{prefix}/attack/linf"),)),
        ]

    def build(self, model: nn.Module, seed: int | None = None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The attack on ``model`` as a callable ``(x, y) -> x_adv`` (``seed`` overrides the configured one)."""
        options = dict(self.options)
        if seed is not None:
            options["seed"] = seed
        if self.name == STRENGTH:
            return StrengthControlledAttack(model, **options)
        return build_attack(self.name, model, **options)

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> AttackOutcome:
        """Attack the probes ``(x, y)`` that ``model`` classifies correctly (``batch_size`` images per forward)."""
        clean_logits = batched_logits(model, x, batch_size)
        correct = clean_logits.argmax(dim=1) == y
        stats = {"clean_accuracy": float(correct.float().mean())}
        xs, ys = x[correct], y[correct]
        if xs.shape[0] == 0:
            empty = torch.zeros(0, dtype=torch.bool, device=x.device)
            return AttackOutcome(xs, ys, xs.clone(), empty, stats)
        reference = clean_logits[correct].gather(1, ys[:, None]).squeeze(1)
        attack = self.build(model)
        if self.name == STRENGTH:
            results = [
                attack.run(xs[s : s + batch_size], ys[s : s + batch_size]) for s in range(0, xs.shape[0], batch_size)
            ]
            x_adv = torch.cat([r.x_adv for r in results])
            reached = torch.cat([r.reached for r in results])
            stats["reached_fraction"] = float(reached.float().mean())
        else:
            x_adv = torch.cat(
                [attack(xs[s : s + batch_size], ys[s : s + batch_size]) for s in range(0, xs.shape[0], batch_size)]
            )
            reached = torch.ones(xs.shape[0], dtype=torch.bool, device=x.device)
        adv_logits = batched_logits(model, x_adv, batch_size)
        stats["success_rate"] = float((adv_logits.argmax(dim=1) != ys).float().mean())
        stats["logit_drop"] = float((reference - adv_logits.gather(1, ys[:, None]).squeeze(1)).mean())
        stats["linf"] = float((x_adv - xs).flatten(1).abs().amax(dim=1).mean())
        return AttackOutcome(xs, ys, x_adv, reached, stats)

    def __repr__(self) -> str:
        return f"ProbeAttack({self.name!r}, {self.options})"
