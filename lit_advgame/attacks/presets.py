"""Named attacks of the IR paper's tables, as flat, YAML-friendly configurations.

``build_attack("mi+ir", model, steps=50)`` builds the MI+IR attack with 50 steps. Every preset is
the base configuration :data:`DEFAULTS` (plus the norm's defaults :data:`NORM_DEFAULTS`) with a few
keys changed; any key can be overridden, and a component is switched on by giving its key a value
(e.g. ``build_attack("pgd", model, momentum=1.0)`` is MI). HybridIR is MI + VR + SGM + IR, a
configuration rather than a class. Names are case-insensitive; ``-``, ``_`` and spaces read as ``+``.

Paper defaults (Wang et al., ICLR 2021, Section 5): ε = 16/255 (L∞) or 16/255·√n (L2), step 2/255
for L∞ and 2.0 for L2 (the official code; the paper's text says 2/255, which cannot reach the L2
ball in 100 steps), 100 steps, a 16×16 grid with 32 samples of 32 cells, λ = 1 for ResNet sources
and 2 otherwise (``"auto"``), MI μ = 1 (the MI paper's value; the IR paper prints none),
VR K = 20 copies of σ = 15/255 (VR+IR: K = 5 and 50 steps, paper App. M.1), SGM γ = 0.2 for
ResNets and 0.5 for DenseNets (``"auto"``, SGM paper), TI kernel 15 (TI paper), DI p = 0.5 with
resize rate 1.1 (DI paper / TransferAttack). For HybridIR the paper gives no VR setting; we use
K = 5 (as VR+IR) with 100 steps.

Units and the L2 radius: ``eps``/``step_size`` are in pixel units (images in [0, 1]); strings such
as ``"16/255"`` are read as fractions, and ``unit: "1/255"`` gives both in 0–255 intensity levels.
An L∞ value above 1 (L2: above √n) is an error (see :mod:`.base`). The paper's √n scaling of the L2
radius belongs to the L2 *default* only: ``norm="l2"`` without ``eps`` attacks with ε = 16/255·√n
(``eps_scaling="sqrt_dim"``), while a given ``eps`` is the L2 radius as given (``eps_scaling``
defaults to ``"none"`` then; pass ``eps_scaling="sqrt_dim"`` explicitly to scale it). The resolved
radius is logged once per distinct configuration and kept as ``attack.resolved_eps``.

One naming scheme for Python and YAML: a component's option is ``<component>_<keyword>`` after the
keyword of its class (``vr_copies`` is ``VarianceReduction(copies=)``, ``ir_lambda`` is
``InteractionLoss(lambda_=)``, ``ir_grid``/``ir_form``/``ir_num_samples``/``ir_group_size``/``ir_value``/``ir_scale``
are the fields of :class:`~lit_advgame.interactions.perturbation_spec.PerturbationInteraction`, whose official-code
setting ``PerturbationInteraction.ir_code()`` gives their defaults); MI's one option is ``momentum`` in both
(``Momentum(momentum=)``). Deprecated for one release (``DeprecationWarning``): ``ir_samples`` (use
``ir_num_samples``), ``InteractionLoss(lam=)`` (``lambda_``) and ``Momentum(mu=)`` (``momentum``).

Options must have an effect: options of a component that is off (e.g. ``ir_grid`` on ``"pgd"``,
whose IR is off because ``ir_lambda`` is unset; ``vr_sigma`` without ``vr_copies``; ``di_mode``
without ``di_prob``; ``ti_nsig`` without ``ti_kernel_size``; ``l2_init`` with the L∞ norm) are
errors naming the option, the preset and the options the configuration uses.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from typing import Any

from pytorch_lightning.utilities import rank_zero_info
from torch import nn

from lit_advgame.attacks.base import Attack
from lit_advgame.attacks.ensemble import as_model_list
from lit_advgame.attacks.interaction_loss import InteractionLoss
from lit_advgame.attacks.transforms import (
    DiverseInputs,
    Momentum,
    SkipGradient,
    TranslationInvariance,
    VarianceReduction,
)
from lit_advgame.attacks.transforms.skip_gradient import is_skip_block
from lit_advgame.interactions.perturbation_spec import FIELDS as SPEC_FIELDS
from lit_advgame.interactions.perturbation_spec import PerturbationInteraction
from lit_advgame.utils.checks import parse_fraction
from lit_advgame.vocabulary import Autocast

#: every configuration key and its base value (``None`` = component off / norm default)
DEFAULTS: dict[str, Any] = {
    "norm": "linf",
    "eps": None,
    "step_size": None,
    "steps": 100,
    "loss": "ce",
    "targeted": False,
    "random_start": None,
    "eps_scaling": None,
    "step_scaling": None,
    "l2_init": "image",
    "unit": "pixel",
    "seed": None,
    "record_iterates": False,
    "record_format": "delta",
    "momentum": None,
    "vr_copies": None,
    "vr_sigma": 15 / 255,
    "vr_reduction": "sum",
    "di_prob": None,
    "di_resize_rate": 1.1,
    "di_mode": "bilinear",
    "ti_kernel_size": None,
    "ti_nsig": 3.0,
    "sgm_gamma": None,
    "ir_lambda": None,
    # the perturbation-interaction specification, one key per field: ir_grid, ir_form, ir_num_samples, ...
    **{f"ir_{key}": value for key, value in PerturbationInteraction.ir_code().engine_kwargs().items()},
    "ir_batch_size": None,
}
#: the IR options that are fields of :class:`~lit_advgame.interactions.perturbation_spec.PerturbationInteraction`
IR_SPEC_KEYS = tuple(f"ir_{key}" for key in SPEC_FIELDS)
#: deprecated option names (one release) and their replacements
DEPRECATED_KEYS = {"ir_samples": "ir_num_samples"}

#: defaults that depend on the norm (filled in where the configuration leaves ``None``); the L2
#: ``eps_scaling="sqrt_dim"`` goes with the default ε only (a given ``eps`` is used as given)
NORM_DEFAULTS: dict[str, dict[str, Any]] = {
    "linf": {"eps": 16 / 255, "step_size": 2 / 255, "eps_scaling": "none", "step_scaling": "none"},
    "l2": {"eps": 16 / 255, "step_size": 2.0, "eps_scaling": "sqrt_dim", "step_scaling": "none"},
}

#: the key that switches a component on (``None`` = off) and the options only that component uses
COMPONENT_OPTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "IR": ("ir_lambda", (*IR_SPEC_KEYS, "ir_batch_size")),
    "VR": ("vr_copies", ("vr_sigma", "vr_reduction")),
    "DI": ("di_prob", ("di_resize_rate", "di_mode")),
    "TI": ("ti_kernel_size", ("ti_nsig",)),
}

_MI = {"momentum": 1.0}
_IR = {"ir_lambda": "auto"}
_SGM = {"sgm_gamma": "auto"}

PRESETS: dict[str, dict[str, Any]] = {
    "pgd": {},
    "pgd+ir": {**_IR},
    "mi": {**_MI},
    "mi+ir": {**_MI, **_IR},
    "vr": {"vr_copies": 20},
    "vr+ir": {"vr_copies": 5, "steps": 50, **_IR},
    "sgm": {**_SGM},
    "sgm+ir": {**_SGM, **_IR},
    "ti": {"ti_kernel_size": 15},
    "ti+ir": {"ti_kernel_size": 15, **_IR},
    "di": {"di_prob": 0.5},
    "hybridir": {**_MI, "vr_copies": 5, **_SGM, **_IR},
}

_SCALED = {"eps_scaling": "eps", "step_scaling": "step_size"}
#: the configuration keys that are keyword arguments of :class:`Attack` itself
_ATTACK_KEYS = (
    "norm",
    "eps",
    "step_size",
    "steps",
    "loss",
    "targeted",
    "random_start",
    "eps_scaling",
    "step_scaling",
    "l2_init",
    "unit",
    "seed",
    "record_iterates",
    "record_format",
)
_ALIASES = {"ir": "pgd+ir", "hybrid": "hybridir", "hybrid+ir": "hybridir"}
_NUMBER_KEYS = ("eps", "step_size", "vr_sigma", "di_prob", "di_resize_rate", "ti_nsig", "momentum")


def available_presets() -> list[str]:
    """Names of the presets (aliases: ``ir`` = ``pgd+ir``, ``hybrid`` = ``hybridir``)."""
    return list(PRESETS)


def canonical_name(preset: str) -> str:
    """The preset key for ``preset`` (case-insensitive; ``-``, ``_`` and spaces read as ``+``)."""
    if not isinstance(preset, str):
        raise TypeError(f"preset must be a string; got {type(preset).__name__}")
    key = re.sub(r"[\s_\-]+", "+", preset.strip().lower())
    key = _ALIASES.get(key, key)
    if key not in PRESETS:
        raise ValueError(f"unknown attack preset {preset!r}; choose one of: {', '.join(available_presets())}")
    return key


def _parse_number(value: Any, key: str) -> Any:
    """Accept YAML strings such as ``"16/255"`` for numeric keys."""
    return parse_fraction(value, key) if key in _NUMBER_KEYS else value


def renamed_options(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with deprecated keys (:data:`DEPRECATED_KEYS`) renamed, each with a ``DeprecationWarning``."""
    out = dict(options)
    for old, new in DEPRECATED_KEYS.items():
        if old in out:
            warnings.warn(f"attack option {old!r} is deprecated; use {new!r}", DeprecationWarning, stacklevel=3)
            if new in out:
                raise ValueError(f"give {new!r} or its deprecated alias {old!r}, not both")
            out[new] = out.pop(old)
    return out


def _ignored_options(config: dict[str, Any], keys: Sequence[str]) -> dict[str, str]:
    """Of ``keys``, those ``config`` ignores, each with the reason (its component is off)."""
    ignored = {}
    for component, (switch, options) in COMPONENT_OPTIONS.items():
        if config.get(switch) is None:
            for key in options:
                if key in keys:
                    ignored[key] = f"{component} is off ({switch} is not set)"
    if config.get("norm") == "linf" and "l2_init" in keys:
        ignored["l2_init"] = "the norm is linf"
    return ignored


def _check_no_ignored_options(config: dict[str, Any], keys: Sequence[str], preset: str) -> None:
    ignored = _ignored_options(config, keys)
    if ignored:
        used = [key for key in DEFAULTS if key not in _ignored_options(config, list(DEFAULTS))]
        reasons = "; ".join(f"{key}: {why}" for key, why in ignored.items())
        raise ValueError(
            f"option(s) {sorted(ignored)} have no effect in attack {preset!r} ({reasons}); switch the component on "
            f"(e.g. ir_lambda=1 or an IR preset such as 'pgd+ir') or drop them. "
            f"Options this attack uses: {', '.join(used)}"
        )


def preset_config(preset: str, **overrides: Any) -> dict[str, Any]:
    """The flat configuration of ``preset`` with ``overrides`` applied and norm defaults filled in.

    ``"auto"`` values of ``ir_lambda``/``sgm_gamma`` stay unresolved (they depend on the model).
    Overrides the configuration ignores (options of a component that is off) are errors; a given L2
    ``eps`` is not scaled by √n unless ``eps_scaling="sqrt_dim"`` is given too.
    """
    overrides = renamed_options(overrides)
    unknown = sorted(set(overrides) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown attack option(s) {unknown}; allowed: {', '.join(DEFAULTS)}")
    name = canonical_name(preset)
    config = {**DEFAULTS, **PRESETS[name], **overrides}
    config = {key: _parse_number(value, key) for key, value in config.items()}
    norm = str(config["norm"]).lower()
    if norm not in NORM_DEFAULTS:
        raise ValueError(f"unknown norm {config['norm']!r}; choose one of: {', '.join(NORM_DEFAULTS)}")
    config["norm"] = norm
    _check_no_ignored_options(config, list(overrides), name)
    given = {key for key in ("eps", "step_size") if config[key] is not None}
    for key, value in NORM_DEFAULTS[norm].items():
        if config[key] is None:
            # the paper's √n scaling is part of the default radius, not of a user-given one
            config[key] = "none" if _SCALED.get(key) in given else value
    return config


def source_family(models: Sequence[nn.Module]) -> str:
    """``"resnet"``, ``"densenet"`` or ``"other"``: the architecture family of all source models.

    A model is a DenseNet if it has a dense layer (torchvision ``_DenseLayer`` or a skip block
    whose class name contains "dense"), a ResNet if it has any other skip block.
    """
    families = set()
    for model in models:
        kinds = {
            "densenet" if "dense" in type(m).__name__.lower() else "resnet" for m in model.modules() if is_skip_block(m)
        }
        families.add("densenet" if "densenet" in kinds else "resnet" if kinds else "other")
    return families.pop() if len(families) == 1 else "other"


def resolve_auto(config: dict[str, Any], models: Sequence[nn.Module]) -> dict[str, Any]:
    """Replace ``"auto"`` λ (1 for ResNets, 2 otherwise) and γ (0.5 for DenseNets, 0.2 otherwise)."""
    config = dict(config)
    family = source_family(models)
    if config["ir_lambda"] == "auto":
        config["ir_lambda"] = 1.0 if family == "resnet" else 2.0
    if config["sgm_gamma"] == "auto":
        config["sgm_gamma"] = 0.5 if family == "densenet" else 0.2
    return config


def attack_from_config(
    config: dict[str, Any],
    model: nn.Module | Sequence[nn.Module],
    *,
    autocast: Autocast | None = None,
    channels_last: bool = False,
) -> Attack:
    """Build an :class:`Attack` from a flat configuration (see :data:`DEFAULTS`).

    ``autocast``/``channels_last``: the precision and memory format of the model's forwards
    (:class:`~lit_advgame.attacks.Attack`'s; how the attack runs, not part of the configuration).

    Options of a component that is off must keep their default values (else ``ValueError``).
    The resolved radius is logged (``rank_zero_info``) once per distinct description.
    """
    config = renamed_options(config)
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown attack option(s) {unknown}; allowed: {', '.join(DEFAULTS)}")
    models = as_model_list(model)
    c = {**DEFAULTS, **config}
    changed = [key for key in DEFAULTS if key in config and key != "norm" and config[key] != DEFAULTS[key]]
    _check_no_ignored_options({**c, "norm": str(c["norm"]).lower()}, changed, "configuration")
    c = resolve_auto(c, models)
    transforms = []
    if c["sgm_gamma"] is not None:
        transforms.append(SkipGradient(c["sgm_gamma"]))
    if c["vr_copies"] is not None:
        transforms.append(VarianceReduction(c["vr_copies"], c["vr_sigma"], c["vr_reduction"]))
    if c["di_prob"] is not None:
        transforms.append(DiverseInputs(c["di_prob"], c["di_resize_rate"], c["di_mode"]))
    if c["ti_kernel_size"] is not None:
        transforms.append(TranslationInvariance(c["ti_kernel_size"], c["ti_nsig"]))
    if c["momentum"] is not None:
        transforms.append(Momentum(c["momentum"]))
    loss_terms = []
    if c["ir_lambda"] is not None:
        spec = {key[len("ir_") :]: c[key] for key in IR_SPEC_KEYS}
        loss_terms.append(InteractionLoss(c["ir_lambda"], spec, batch_size=c["ir_batch_size"]))
    precision = {"autocast": autocast, "channels_last": channels_last}
    attack = Attack(
        models, transforms=transforms, loss_terms=loss_terms, **precision, **{key: c[key] for key in _ATTACK_KEYS}
    )
    _log_once(describe_radius(attack))
    return attack


_LOGGED: set[str] = set()


def _log_once(message: str) -> None:
    if message not in _LOGGED:
        _LOGGED.add(message)
        rank_zero_info(message)


def describe_radius(attack: Attack) -> str:
    """One line with the attack's pixel-space radius and step (√n factors written out when unresolved)."""

    def fmt(value: float, scaling: str) -> str:
        return f"{value:.6g}·√n (n = C·H·W of one image)" if scaling == "sqrt_dim" else f"{value:.6g}"

    return (
        f"attack: {attack.norm.name} ε = {fmt(attack.eps, attack.eps_scaling)}, "
        f"step α = {fmt(attack.step_size, attack.step_scaling)}, {attack.steps} steps (pixel units, images in [0, 1])"
    )


def build_attack(
    preset: str,
    model: nn.Module | Sequence[nn.Module],
    *,
    autocast: Autocast | None = None,
    channels_last: bool = False,
    **overrides: Any,
) -> Attack:
    """Build the attack named ``preset`` (see :func:`available_presets`) with ``overrides``.

    ``model`` is a pixel-space classifier (or a list of them, attacked through their mean logits); any key of
    :data:`DEFAULTS` can be overridden, and the attack maps images in [0, 1] and labels to ``x_adv``.
    ``autocast`` (``"bf16"``, ``"fp16"``, ``"none"``; ``None``: the ambient ``torch.autocast`` state) and
    ``channels_last`` set the precision and memory format of the model's forwards (:class:`Attack`).

    Example (MI+IR on a tiny linear model, 3 steps on a 4×4 interaction grid):

    >>> import torch
    >>> from torch import nn
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    >>> x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    >>> attack = build_attack("mi+ir", model, steps=3, ir_grid=4, ir_num_samples=2, ir_group_size=4, seed=0)
    >>> attack.transforms, attack.resolved_eps == 16 / 255
    ([Momentum(momentum=1.0)], True)
    >>> x_adv = attack(x, y)
    >>> x_adv.shape, round((x_adv - x).abs().max().item() * 255, 3)  # 3 steps of 2/255
    (torch.Size([4, 3, 8, 8]), 6.0)
    """
    return attack_from_config(preset_config(preset, **overrides), model, autocast=autocast, channels_last=channels_last)
