"""White-box robust accuracy the field trusts: PGD-k beside AutoAttack (Croce & Hein, ICML 2020).

:func:`robust_accuracy` attacks any pixel-space classifier (the classifier contract: an ``nn.Module`` mapping images
in [0, 1] to logits; a model spec or a :class:`~lit_advgame.classifiers.LoadedModel` from
:func:`~lit_advgame.classifiers.load_classifier`; a training module's ``classifier``: an AT/TRADES network, the
output of a TRS/GAL/ADP ensemble, the *base* classifier of randomized smoothing) and returns a
:class:`RobustnessResult`: clean accuracy, the accuracy under each attack, the worst case over them, AutoAttack's
accuracy after each of its components, the number of images and the time. The callback
:class:`~lit_advgame.callbacks.RobustAccuracy` runs the same evaluation inside ``lit-advgame test``.

Robust accuracy counts an image as robust when it is classified correctly clean *and* after every attack attempt
(the convention of AutoAttack and RobustBench): attacks only run on images still robust, and a clean-misclassified
image is never robust (its adversarial example is the clean image, δ = 0). So robust accuracy ≤ clean accuracy
always, and "worst case" (robust against all attacks) ≤ each attack's.

* **PGD-k**: this package's attack (:class:`~lit_advgame.attacks.pgd_settings.PGDSettings`: CE loss, random start,
  ``steps`` projected steps of α = 2.5·ε/steps unless given; Madry et al., ICLR 2018, Sec. 2.1), run ``restarts``
  times, each restart on the images the previous ones did not break.
* **AutoAttack** (Croce & Hein, ICML 2020, Sec. 4 and the official ``autoattack.AutoAttack.set_version``):
  ``"standard"`` runs APGD-CE, APGD-T (9 target classes), FAB-T (9 target classes), each 100 iterations and one
  restart, then Square (5,000 queries, ``p_init`` 0.8, no schedule rescaling), each on the images the previous
  ones left robust; ``"plus"`` and ``"rand"`` follow the same function. The attacks are the maintained
  implementations of the ``torchattacks`` package (the optional extra ``pip install -e ".[eval]"``), configured
  here with the official settings: torchattacks' own ``AutoAttack`` class runs its white-box attacks for 10
  iterations only (torchattacks issue #196), which overestimates robustness.

Reproducibility: each batch's attacks draw their seeds from ``seed`` and the batch's key
(:func:`~lit_advgame.utils.seeding.derive_seed`); torchattacks reseeds torch's global generator, so the evaluation
runs inside :func:`torch.random.fork_rng` and leaves the caller's random state as it was. Models run in eval mode
(each module's mode restored after), with gradients enabled even under ``torch.inference_mode()`` /
``torch.no_grad()`` (Lightning's test loop).

>>> import torch
>>> from torch import nn
>>> _ = torch.manual_seed(0)
>>> model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
>>> x = torch.rand(8, 3, 8, 8)
>>> y = model(x).argmax(dim=1)  # every image is classified correctly
>>> result = robust_accuracy(model, (x, y), eps=2 / 255, attacks=["pgd"], pgd={"steps": 5})
>>> result.num_images, result.clean_accuracy, result.accuracy["pgd"] <= result.clean_accuracy
(8, 1.0, True)
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lit_advgame.attacks.base import check_radius
from lit_advgame.attacks.pgd_settings import PGDSettings
from lit_advgame.evaluation.report import _pct
from lit_advgame.utils.checks import check_choice, check_images, check_int, check_labels, parse_fraction
from lit_advgame.utils.errors import MissingExtraError
from lit_advgame.utils.io import atomic_write_text
from lit_advgame.utils.modes import eval_mode
from lit_advgame.utils.seeding import derive_seed
from lit_advgame.vocabulary import (
    AUTOATTACK_VERSIONS,
    NORMS,
    ROBUSTNESS_ATTACKS,
    AutoAttackVersion,
    Norm,
    RobustnessAttack,
)

#: the command that installs the optional AutoAttack dependency
EVAL_EXTRA_INSTALL = 'pip install -e ".[eval]"'

#: AutoAttack's components per version, in the order they run (official ``AutoAttack.set_version``)
AUTOATTACK_COMPONENTS: dict[str, tuple[str, ...]] = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
    "rand": ("apgd-ce", "apgd-dlr"),
}
#: iterations of APGD, APGD-T and FAB; Square's queries; target classes of APGD-T and FAB-T (official values)
AUTOATTACK_ITERATIONS = 100
SQUARE_QUERIES = 5000
TARGET_CLASSES = 9
#: the classes a component needs: the DLR losses divide by gaps between the largest logits (Croce & Hein, Eq. 5-6)
MIN_CLASSES = {"apgd-dlr": 3, "apgd-t": 4}
#: the torchattacks name of each norm
_TORCHATTACKS_NORMS = {"linf": "Linf", "l2": "L2"}
#: display names of the components
_COMPONENT_TITLES = {
    "apgd-ce": "APGD-CE",
    "apgd-dlr": "APGD-DLR",
    "apgd-t": "APGD-T",
    "fab": "FAB",
    "fab-t": "FAB-T",
    "square": "Square",
}

#: the default PGD of an evaluation: 20 steps (norm and ε are the evaluation's)
DEFAULT_PGD = PGDSettings(steps=20)


def require_torchattacks() -> Any:
    """The ``torchattacks`` module, or :class:`~lit_advgame.utils.errors.MissingExtraError` with the install
    command when the optional extra is not installed."""
    try:
        import torchattacks
    except ImportError as err:
        raise MissingExtraError(
            f"AutoAttack needs the optional package torchattacks, which is not installed: run `{EVAL_EXTRA_INSTALL}` "
            "(or drop 'autoattack' from attacks to evaluate with PGD only)"
        ) from err
    return torchattacks


@dataclass(frozen=True)
class RobustnessSettings:
    """The threat model and attacks of a robust-accuracy evaluation (see the module docstring).

    Args:
        norm: ``"linf"`` or ``"l2"``.
        eps: radius ε > 0 in pixel units (images in [0, 1]); a fraction string such as ``"8/255"`` (YAML: ``8/255``)
            is read as that number.
        attacks: the attacks, of ``"pgd"`` and ``"autoattack"`` (at least one, each once).
        pgd: the PGD-k settings (:class:`~lit_advgame.attacks.pgd_settings.PGDSettings`, in YAML a mapping such as
            ``{steps: 50, step_size: 0.01}``); its norm and ε are the evaluation's (leave them unset).
        restarts: PGD restarts (>= 1).
        autoattack_version: ``"standard"`` (APGD-CE, APGD-T, FAB-T, Square), ``"plus"`` or ``"rand"``.
        seed: base seed of every attack's random draws.

    >>> RobustnessSettings(eps="8/255").eps == 8 / 255
    True
    >>> RobustnessSettings(eps=0.1).pgd_attack().step_size  # 2.5·ε/steps
    0.0125
    """

    norm: Norm = "linf"
    eps: float | str = 8 / 255
    attacks: tuple[RobustnessAttack, ...] = ("pgd", "autoattack")
    pgd: PGDSettings = DEFAULT_PGD
    restarts: int = 1
    autoattack_version: AutoAttackVersion = "standard"
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice(self.norm, "norm", NORMS)
        eps = float(parse_fraction(self.eps, "eps"))
        if not eps > 0:
            raise ValueError(f"eps must be > 0 (a radius in pixel units, e.g. 8/255); got {self.eps!r}")
        check_radius(eps, "eps", self.norm, None)
        object.__setattr__(self, "eps", eps)
        attacks = (self.attacks,) if isinstance(self.attacks, str) else tuple(self.attacks)
        if not attacks:
            raise ValueError(f"attacks must name at least one attack of: {', '.join(ROBUSTNESS_ATTACKS)}")
        for name in attacks:
            check_choice(name, "attacks", ROBUSTNESS_ATTACKS)
        if len(set(attacks)) < len(attacks):
            raise ValueError(f"attacks must name each attack once; got {list(attacks)}")
        object.__setattr__(self, "attacks", attacks)
        pgd = PGDSettings.coerce(self.pgd, "pgd")
        for key, own in (("norm", self.norm), ("eps", eps)):
            given = getattr(pgd, key)
            if given is not None and given != own:
                raise ValueError(
                    f"pgd.{key} = {given!r} differs from the evaluation's {key} = {own!r}: all attacks of one "
                    f"evaluation use one threat model; leave pgd.{key} unset"
                )
        if pgd.steps < 1:
            raise ValueError(f"pgd.steps must be >= 1 (drop 'pgd' from attacks to skip PGD); got {pgd.steps}")
        object.__setattr__(self, "pgd", pgd)
        check_int(self.restarts, "restarts", minimum=1)
        check_choice(self.autoattack_version, "autoattack_version", AUTOATTACK_VERSIONS)
        check_int(self.seed, "seed", minimum=0)

    def pgd_attack(self) -> PGDSettings:
        """The resolved PGD settings at the evaluation's norm and ε."""
        return self.pgd.resolved(inherit=PGDSettings(norm=self.norm, eps=self.eps))

    @property
    def components(self) -> tuple[str, ...]:
        """AutoAttack's components in this version (empty when AutoAttack is not among the attacks)."""
        return AUTOATTACK_COMPONENTS[self.autoattack_version] if "autoattack" in self.attacks else ()

    def accuracy_keys(self) -> list[str]:
        """The accuracies an evaluation reports: ``clean``, each attack, ``worst_case`` (with more than one attack)
        and ``autoattack/<component>`` (robust accuracy after each AutoAttack component)."""
        keys = ["clean", *self.attacks]
        if len(self.attacks) > 1:
            keys.append("worst_case")
        return keys + [f"autoattack/{name}" for name in self.components]

    def describe(self, attack: str) -> str:
        """A display name: ``"PGD-20 (α = 0.0125, 1 restart)"`` or ``"AutoAttack standard (APGD-CE, ...)"``."""
        if attack == "pgd":
            pgd = self.pgd_attack()
            restarts = f"{self.restarts} restart{'s' if self.restarts > 1 else ''}"
            return f"PGD-{pgd.steps} (α = {pgd.step_size:.4g}, {restarts})"
        if attack == "autoattack":
            parts = ", ".join(_COMPONENT_TITLES[name] for name in self.components)
            return f"AutoAttack {self.autoattack_version} ({parts})"
        return {"clean": "clean", "worst_case": "worst case over the attacks"}.get(attack, attack)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able settings (the PGD settings resolved)."""
        out = dataclasses.asdict(self)
        out["attacks"] = list(self.attacks)
        out["pgd"] = self.pgd_attack().as_dict()
        return out


DEFAULT_ROBUSTNESS = RobustnessSettings()


def build_autoattack_component(
    torchattacks: Any, name: str, model: nn.Module, settings: RobustnessSettings, num_classes: int, seed: int
) -> Any:
    """The torchattacks attack of AutoAttack's component ``name`` with the official settings of
    ``settings.autoattack_version`` (Croce & Hein, ICML 2020, Sec. 4; official ``AutoAttack.__init__`` and
    ``set_version``): 100 iterations, ``rho`` 0.75, at most 9 target classes, Square with 5,000 queries."""
    version = settings.autoattack_version
    common = {"norm": _TORCHATTACKS_NORMS[settings.norm], "eps": settings.eps, "seed": seed}
    restarts = 5 if version == "plus" and name in ("apgd-ce", "apgd-dlr", "fab") else 1
    targets = max(1, min(TARGET_CLASSES, num_classes - 1))
    if name in ("apgd-ce", "apgd-dlr"):
        eot_iter = 20 if version == "rand" else 1
        return torchattacks.APGD(
            model,
            steps=AUTOATTACK_ITERATIONS,
            n_restarts=restarts,
            loss=name[5:],
            eot_iter=eot_iter,
            rho=0.75,
            **common,
        )
    if name == "apgd-t":
        attack = torchattacks.APGDT(
            model, steps=AUTOATTACK_ITERATIONS, n_restarts=1, n_classes=num_classes, rho=0.75, **common
        )
    elif name in ("fab", "fab-t"):
        attack = torchattacks.FAB(
            model,
            steps=AUTOATTACK_ITERATIONS,
            n_restarts=restarts,
            multi_targeted=name == "fab-t",
            n_classes=num_classes,
            **common,
        )
    elif name == "square":
        return torchattacks.Square(
            model, n_queries=SQUARE_QUERIES, n_restarts=1, p_init=0.8, loss="margin", resc_schedule=False, **common
        )
    else:
        raise ValueError(f"unknown AutoAttack component {name!r}; choose one of: {', '.join(_COMPONENT_TITLES)}")
    attack.n_target_classes = targets
    return attack


# ------------------------------------------------------------------------------------------------ one batch
def _predictions(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(dim=1)


def _cascade(
    model: nn.Module, attacks: Iterable[tuple[str, Any]], x: torch.Tensor, y: torch.Tensor, robust: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], dict[str, float]]:
    """Run ``attacks`` (name, callable ``attack(x, y) -> x_adv``) one after the other, each on the images still
    robust: the robust mask at the end, the adversarial images (the clean image where no attack succeeded), the
    robust mask after each named attack and its seconds (AutoAttack's ``run_standard_evaluation`` loop)."""
    robust, x_adv, after, seconds = robust.clone(), x.clone(), {}, {}
    for name, attack in attacks:
        start = time.perf_counter()
        index = robust.nonzero().flatten()
        if index.numel():
            adv = attack(x[index], y[index]).detach()
            fooled = _predictions(model, adv) != y[index]
            x_adv[index[fooled]] = adv[fooled].to(x_adv.dtype)
            robust[index[fooled]] = False
        after[name] = robust.clone()
        seconds[name] = time.perf_counter() - start
    return robust, x_adv, after, seconds


@dataclass
class BatchOutcome:
    """One batch of an evaluation: per image, whether it is robust under each key of
    :meth:`RobustnessSettings.accuracy_keys` (CPU bool tensors), the adversarial images of each attack (on the
    images' device, when kept) and the seconds each attack (and AutoAttack component) took."""

    correct: dict[str, torch.Tensor]
    x_adv: dict[str, torch.Tensor]
    seconds: dict[str, float]


class RobustnessEvaluator:
    """Accumulates a robust-accuracy evaluation batch by batch (used by :func:`robust_accuracy` and the
    :class:`~lit_advgame.callbacks.RobustAccuracy` callback).

    Args:
        model: the pixel-space classifier (its device is the images' device).
        settings: the evaluation's :class:`RobustnessSettings`.
        max_images: stop after this many images (``None``: every image given).
        keep_adversarial: keep the adversarial images and per-image masks (for :attr:`RobustnessResult.x_adv`).
    """

    def __init__(
        self,
        model: nn.Module,
        settings: RobustnessSettings = DEFAULT_ROBUSTNESS,
        *,
        max_images: int | None = None,
        keep_adversarial: bool = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a pixel-space classifier (an nn.Module); got {type(model).__name__}")
        if max_images is not None:
            check_int(max_images, "max_images", minimum=1)
        self.model = model
        self.settings = settings
        self.max_images = max_images
        self.keep_adversarial = keep_adversarial
        self.torchattacks = require_torchattacks() if "autoattack" in settings.attacks else None
        self.keys = settings.accuracy_keys()
        self.counts = dict.fromkeys(self.keys, 0)
        self.seconds = dict.fromkeys([*settings.attacks, *(f"autoattack/{name}" for name in settings.components)], 0.0)
        self.num_images = 0
        self.batches = 0
        self.kept: list[BatchOutcome] = []

    @property
    def full(self) -> bool:
        """Whether ``max_images`` images have been evaluated."""
        return self.max_images is not None and self.num_images >= self.max_images

    def update(self, x: torch.Tensor, y: torch.Tensor, key: Sequence[int] | None = None) -> BatchOutcome | None:
        """Evaluate one batch (images in [0, 1] on the model's device, labels); ``key`` (integers) names the batch
        for its seeds (default: its position). The batch is cut to what ``max_images`` leaves; ``None`` when full."""
        if self.full:
            return None
        if self.max_images is not None:
            x, y = x[: self.max_images - self.num_images], y[: self.max_images - self.num_images]
        key = (self.batches,) if key is None else tuple(key)
        with torch.inference_mode(False), torch.enable_grad(), eval_mode(self.model):
            outcome = self._evaluate(x.detach().clone(), y.detach().clone(), key)
        self.batches += 1
        self.num_images += int(x.shape[0])
        for name, mask in outcome.correct.items():
            self.counts[name] += int(mask.sum())
        for name, seconds in outcome.seconds.items():
            self.seconds[name] += seconds
        if self.keep_adversarial:
            self.kept.append(outcome)
        return outcome

    def _evaluate(self, x: torch.Tensor, y: torch.Tensor, key: tuple[int, ...]) -> BatchOutcome:
        check_images(x, "x", allow_empty=False)
        check_labels(y, x.shape[0], None, "y")
        y = y.to(x.device)
        with torch.no_grad():
            logits = self.model(x)
        check_labels(y, x.shape[0], logits.shape[1], "y")
        clean = logits.argmax(dim=1) == y
        masks, x_adv, seconds = {"clean": clean}, {}, {}
        for attack in self.settings.attacks:
            start = time.perf_counter()
            if attack == "pgd":
                masks["pgd"], x_adv["pgd"], _, _ = _cascade(self.model, self._pgd_restarts(key), x, y, clean)
            else:
                robust, x_adv["autoattack"], after, times = self._autoattack(x, y, clean, logits.shape[1], key)
                masks["autoattack"] = robust
                masks.update({f"autoattack/{name}": mask for name, mask in after.items()})
                seconds.update({f"autoattack/{name}": value for name, value in times.items()})
            seconds[attack] = time.perf_counter() - start
        if len(self.settings.attacks) > 1:
            masks["worst_case"] = torch.stack([masks[attack] for attack in self.settings.attacks]).all(dim=0)
        return BatchOutcome({name: masks[name].cpu() for name in self.keys}, x_adv, seconds)

    def _pgd_restarts(self, key: tuple[int, ...]) -> Iterator[tuple[str, Any]]:
        pgd = self.settings.pgd_attack()
        for restart in range(self.settings.restarts):
            yield f"restart{restart}", pgd.build(self.model, seed=derive_seed(self.settings.seed, "pgd", *key, restart))

    def _autoattack(
        self, x: torch.Tensor, y: torch.Tensor, clean: torch.Tensor, num_classes: int, key: tuple[int, ...]
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], dict[str, float]]:
        needed = max(MIN_CLASSES.get(name, 2) for name in self.settings.components)
        if num_classes < needed:
            raise ValueError(
                f"AutoAttack {self.settings.autoattack_version} needs a classifier with at least {needed} classes "
                f"(the DLR loss of APGD-DLR uses the 3 largest logits, the targeted DLR of APGD-T the 4 largest); "
                f"the model has {num_classes}: evaluate with attacks=['pgd']"
            )
        seed = derive_seed(self.settings.seed, "autoattack", *key)
        attacks = [
            (name, build_autoattack_component(self.torchattacks, name, self.model, self.settings, num_classes, seed))
            for name in self.settings.components
        ]
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # torchattacks reseeds torch's global generator
            return _cascade(self.model, attacks, x, y, clean)

    def result(
        self,
        counts: Mapping[str, int] | None = None,
        num_images: int | None = None,
        seconds: Mapping[str, float] | None = None,
        model_name: str | None = None,
    ) -> RobustnessResult:
        """The :class:`RobustnessResult` of the batches so far; ``counts``/``num_images``/``seconds`` replace this
        evaluator's (e.g. summed over the processes of a distributed run)."""
        counts = dict(self.counts if counts is None else counts)
        num_images = self.num_images if num_images is None else int(num_images)
        if num_images == 0:
            raise ValueError("no image was evaluated: give at least one batch (check max_images and the data)")
        seconds = dict(self.seconds if seconds is None else seconds)
        versions = {"torch": torch.__version__}
        if self.torchattacks is not None:
            versions["torchattacks"] = str(getattr(self.torchattacks, "__version__", "unknown"))
        x_adv = correct = None
        if self.kept:
            x_adv = {name: torch.cat([o.x_adv[name] for o in self.kept]) for name in self.settings.attacks}
            correct = {name: torch.cat([o.correct[name] for o in self.kept]) for name in self.keys}
        return RobustnessResult(
            settings=self.settings,
            num_images=num_images,
            accuracy={name: counts[name] / num_images for name in self.keys},
            seconds={**seconds, "total": sum(seconds[attack] for attack in self.settings.attacks)},
            versions=versions,
            model=model_name,
            x_adv=x_adv,
            correct=correct,
        )


# ------------------------------------------------------------------------------------------------ the result
@dataclass
class RobustnessResult:
    """The outcome of :func:`robust_accuracy` (accuracies are fractions in [0, 1]).

    Attributes:
        settings: the evaluation's :class:`RobustnessSettings`.
        num_images: images evaluated.
        accuracy: ``clean``, each attack (``pgd``, ``autoattack``), ``worst_case`` (robust against every attack;
            with more than one) and ``autoattack/<component>``, the robust accuracy after each AutoAttack component
            (cumulative: the last one equals ``autoattack``).
        seconds: wall-clock seconds of each attack (and of each AutoAttack component, ``autoattack/<component>``)
            and their ``total``.
        versions: the versions of torch and (with AutoAttack) torchattacks.
        model: a display name of the model (or ``None``).
        x_adv: with ``return_adversarial``, each attack's adversarial images (the clean image where it failed).
        correct: with ``return_adversarial``, per image and key of ``accuracy``, whether it is robust.
    """

    settings: RobustnessSettings
    num_images: int
    accuracy: dict[str, float]
    seconds: dict[str, float]
    versions: dict[str, str]
    model: str | None = None
    x_adv: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    correct: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    @property
    def clean_accuracy(self) -> float:
        return self.accuracy["clean"]

    def metrics(self, prefix: str = "robustness") -> dict[str, float]:
        """Scalars to log: ``<prefix>/<key>_acc`` for each key of :attr:`accuracy` (e.g. ``robustness/pgd_acc``,
        ``robustness/autoattack/apgd-ce_acc``), ``<prefix>/num_images`` and ``<prefix>/cost/seconds``."""
        out = {f"{prefix}/{key}_acc": value for key, value in self.accuracy.items()}
        out[f"{prefix}/num_images"] = float(self.num_images)
        out[f"{prefix}/cost/seconds"] = self.seconds["total"]
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: settings, number of images, accuracies, attack descriptions, seconds, versions, model."""
        return {
            "model": self.model,
            "num_images": self.num_images,
            "norm": self.settings.norm,
            "eps": self.settings.eps,
            "accuracy": dict(self.accuracy),
            "attacks": {attack: self.settings.describe(attack) for attack in self.settings.attacks},
            "seconds": dict(self.seconds),
            "settings": self.settings.as_dict(),
            "versions": dict(self.versions),
        }

    def to_markdown(self) -> str:
        """A Markdown table: accuracy (%) ± its binomial standard error, and seconds, per row."""
        s = self.settings
        radius = f"{'L∞' if s.norm == 'linf' else 'L2'} ε = {s.eps:.6g}"
        versions = ", ".join(f"{name} {version}" for name, version in self.versions.items())
        lines = [
            f"# Robust accuracy{f' of {self.model}' if self.model else ''}",
            "",
            f"{radius} (pixel units, images in [0, 1]); {self.num_images} images; seed {s.seed}; {versions}.",
            "",
            "| attack | accuracy (%) | seconds |",
            "|---|---:|---:|",
        ]
        for key, value in self.accuracy.items():
            if key.startswith("autoattack/"):
                label = f"↳ after {_COMPONENT_TITLES[key.split('/', 1)[1]]}"
            else:
                label = s.describe(key)
            seconds = self.seconds.get(key)
            lines.append(
                f"| {label} | {_pct(value, self.num_images)} | {'' if seconds is None else f'{seconds:.1f}'} |"
            )
        return "\n".join(lines) + "\n"

    def save(self, folder: str | Path, name: str = "robustness") -> tuple[Path, Path]:
        """Write ``<name>.json`` and ``<name>.md`` into ``folder`` (atomically); return their paths."""
        folder = Path(folder)
        json_path = atomic_write_text(
            folder / f"{name}.json", json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"
        )
        md_path = atomic_write_text(folder / f"{name}.md", self.to_markdown())
        return json_path, md_path


# ------------------------------------------------------------------------------------------------ entry point
def _classifier(classifier: Any) -> tuple[nn.Module, str | None]:
    """The pixel-space classifier of ``classifier`` and its display name: a model spec (path or dict) or a
    ``LoadedModel`` through :func:`~lit_advgame.classifiers.load_classifier`, a training module's ``classifier``,
    or an ``nn.Module`` as it is."""
    from lit_advgame.classifiers import LoadedModel, load_classifier

    if isinstance(classifier, (str, Path, Mapping)):
        classifier = load_classifier(classifier)
    if isinstance(classifier, LoadedModel):
        return classifier.model, classifier.name
    inner = getattr(classifier, "classifier", None)
    if isinstance(inner, nn.Module):
        return inner, type(classifier).__name__
    if isinstance(classifier, nn.Module):
        return classifier, None
    raise TypeError(
        "classifier must be a pixel-space classifier (nn.Module), a training module, a LoadedModel or a model spec "
        f"(a checkpoint/classifier path or a dict); got {type(classifier).__name__}"
    )


def iterate_batches(data: Any, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(x, y)`` batches of ``data``: a pair of tensors (cut into ``batch_size`` images) or an iterable of
    ``(x, y, ...)`` batches (a ``DataLoader``)."""
    check_int(batch_size, "batch_size", minimum=1)
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
        for start in range(0, x.shape[0], batch_size):
            yield x[start : start + batch_size], y[start : start + batch_size]
        return
    if not isinstance(data, Iterable):
        raise TypeError(f"data must be a pair (x, y) of tensors or an iterable of (x, y) batches; got {data!r}")
    for batch in data:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise TypeError(f"each batch of data must be (x, y, ...); got {type(batch).__name__}")
        yield batch[0], batch[1]


def robust_accuracy(
    classifier: Any,
    data: Any,
    settings: RobustnessSettings | Mapping[str, Any] | None = None,
    *,
    max_images: int | None = None,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    return_adversarial: bool = False,
    **options: Any,
) -> RobustnessResult:
    """Clean, PGD-k and AutoAttack accuracy of ``classifier`` on ``data`` (see the module docstring).

    Args:
        classifier: a pixel-space classifier (``nn.Module``), a training module (its ``classifier``), a
            :class:`~lit_advgame.classifiers.LoadedModel` or a model spec for
            :func:`~lit_advgame.classifiers.load_classifier` (a checkpoint or classifier file, a dict).
        data: ``(x, y)`` tensors (images in [0, 1]) or an iterable of ``(x, y)`` batches (a ``DataLoader``).
        settings: a :class:`RobustnessSettings` or a mapping of its fields; ``**options`` (its fields, e.g.
            ``eps=8/255, norm="linf", attacks=["pgd", "autoattack"], pgd={"steps": 50}, restarts=5``) change it.
        max_images: evaluate at most this many images (the first ones).
        batch_size: images per attack call when ``data`` is a pair of tensors.
        device: move the classifier there first (a model loaded from a spec is on the CPU); batches follow the
            classifier's device.
        return_adversarial: keep the adversarial images and per-image masks in the result.

    Raises:
        MissingExtraError: AutoAttack is asked for and ``torchattacks`` is not installed (the message gives
            ``pip install -e ".[eval]"``).
    """
    if settings is None:
        settings = DEFAULT_ROBUSTNESS
    elif isinstance(settings, Mapping):
        settings = RobustnessSettings(**settings)
    elif not isinstance(settings, RobustnessSettings):
        raise TypeError(f"settings must be RobustnessSettings or a mapping of its fields; got {settings!r}")
    unknown = sorted(set(options) - {f.name for f in dataclasses.fields(RobustnessSettings)})
    if unknown:
        names = ", ".join(f.name for f in dataclasses.fields(RobustnessSettings))
        raise TypeError(f"robust_accuracy: unknown option(s) {unknown}; the settings are: {names}")
    if options:
        settings = dataclasses.replace(settings, **options)
    model, name = _classifier(classifier)
    if device is not None:
        model = model.to(device)
    evaluator = RobustnessEvaluator(model, settings, max_images=max_images, keep_adversarial=return_adversarial)
    target = next((p.device for p in model.parameters()), torch.device("cpu"))
    for x, y in iterate_batches(data, batch_size):
        if evaluator.update(x.to(target), y.to(target)) is None:
            break
    return evaluator.result(model_name=name)
