"""``DefenseAnalysis``: the defenses of Ren et al. (NeurIPS 2021, §4.3, supplement G-I) as a ``trainer.predict`` job.

An :class:`~lit_advgame.analysis.InteractionAnalysis` (same models, game settings, attack, seeding, shards, DDP and
resuming) that, per image and model, adds each of these analyses (each switched off by ``null``; settings are
injected dataclasses):

* ``interactions`` (bool): the base job's ``I^(m)`` of ``x`` and ``x_adv``, ``ΔI^(m)``, ``ΔJ^(m)`` (§4.1; with a
  smoothed model, supplement I's interactions of the base classifier under noise);
* ``detection`` (:class:`DetectionSettings`, supplement G): the scores of the detectors ``ml_loo``, ``shapley``
  and ``interaction`` (:class:`~lit_advgame.defenses.AttributionDetector`) on ``ml_loo_game(model, x)`` and
  ``ml_loo_game(model, x_adv)``; the writer's aggregate is the ROC-AUC per detector and order (Figure 6 left);
* ``dropout`` (:class:`DropoutSettings`, Table 1, supplement H): an early-stopped attack
  (:class:`~lit_advgame.defenses.EarlyStoppedAttack`) and, per transform (:class:`~lit_advgame.defenses.PixelDropout`
  at each rate, :class:`~lit_advgame.defenses.Cutout`), whether the misclassified adversarial example is
  corrected, and whether the same transform breaks the clean image (a control);
* ``recovery`` (:class:`~lit_advgame.defenses.Recoverability`, supplement I.10, Table 4): ``‖x − x_adv‖₂``,
  ``‖x − x̂‖₂``, fooled, restored;
* ``rank`` (:class:`RankSettings`, Figure 6 right): the paired changes of ``I^(m)`` of ``x`` and ``x_adv`` under
  SVD rank reduction to each fraction of the full rank (``k/4``, ``k/16``) and their difference.

Which images: ``interactions``, ``detection`` and ``rank`` need the job's adversarial example; they run on the
*analysed* images -- correctly classified, the strength attack's window reached (``only_reached``) and, with
``only_fooled`` (default), ``x_adv`` misclassified (the adversarial set of a detector). ``dropout`` and
``recovery`` run their own attacks on every correctly classified image.

Smoothed models (supplement I): ``smoothed: {<model name>: {sigma: 0.25, num_draws: 16}}`` analyses that model as
its base classifier under Gaussian noise (:class:`~lit_advgame.defenses.NoisyLogProbabilities`: log-probabilities
averaged over ``num_draws`` fixed draws): the attacks, classifications and games all see the noisy model, and its
games value ``E_ε[log p(y | x_S + ε)]`` (the value ``log_prob`` becomes ``logit`` on the log-probabilities).
``sigma: null`` takes σ from a ``RandomizedSmoothing`` Lightning checkpoint's hyper-parameters.

Seeding: every random stream of an image is ``derive_seed(seed, <stream>, <dataset index>)`` (streams ``attack``,
``game``, ``detection``, ``rank``, ``dropout_attack``, ``dropout:<transform>``, ``recovery``), so the results do
not depend on the batch size, the DDP rank or world size, or on resuming.

Records (besides the base job's, ``K`` models): ``detection_clean``, ``detection_adversarial`` ``(B, K, D)``
float64 (one column per detector and order, ``meta["detection_columns"]``); ``dropout_fooled``, ``dropout_steps``
``(B, K)`` and ``dropout_corrected``, ``dropout_clean_broken`` ``(B, K, T)`` (``meta["dropout_transforms"]``);
``recovery_evaluated``, ``recovery_fooled``, ``recovery_restored``, ``recovery_adversarial_distance``,
``recovery_recovered_distance`` ``(B, K)``; ``rank_<k4|k16>_<normal_change|adversarial_change|difference>`` with
``_stderr`` ``(B, K, O)`` (aggregated per order like ``delta``); ``<analysis>_forward_passes`` ``(B, K)``.

    lit-advgame predict --config configs/defenses_digits.yaml
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import lightning_utilities.core.rank_zero as rank_zero_module
import torch
from torch import nn
from typing_extensions import override

from lit_advgame.analysis.module import ORDER_QUANTITIES, InteractionAnalysis, image_seed
from lit_advgame.attacks.presets import build_attack, preset_config
from lit_advgame.callbacks.game_settings import settings_argument
from lit_advgame.defenses.detection import AttributionDetector, ml_loo_game
from lit_advgame.defenses.dropout import Cutout, EarlyStoppedAttack, PixelDropout, check_dropout_rate, correction_ratio
from lit_advgame.defenses.rank import PAPER_FRACTIONS, check_fraction, rank_reduction_interactions
from lit_advgame.defenses.recovery import Recoverability
from lit_advgame.defenses.smoothed import NoisyLogProbabilities
from lit_advgame.interactions import InputGame, check_budget
from lit_advgame.interactions.players import grid_shape
from lit_advgame.models.weights import read_checkpoint
from lit_advgame.predict.progress import report
from lit_advgame.utils.checks import check_choice, check_int
from lit_advgame.utils.io import json_safe
from lit_advgame.utils.modes import eval_mode
from lit_advgame.vocabulary import (
    DEFENSE_ANALYSES,
    DETECTOR_KINDS,
    IMAGE_VALUES,
    RANK_ROUNDINGS,
    SMOOTHED_OUTPUTS,
    DetectorKind,
    ImageValue,
    Norm,
    RankRounding,
    SmoothedOutput,
)

#: the parts of a rank-reduction record, per fraction
RANK_PARTS = ("normal_change", "adversarial_change", "difference")


@contextlib.contextmanager
def _quiet_per_image_announcements() -> Iterator[None]:
    """Silence ``rank_zero_info`` inside the block: the detectors and attacks announce their cost per call, the job
    announces it once for the whole run (``rank_zero_info`` logs to ``lightning_utilities``' module logger, which
    Lightning points at its own)."""
    logger = rank_zero_module.log
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def _check_positive_or_none(value: int | None, name: str) -> None:
    if value is not None:
        check_int(value, name, minimum=1)


@dataclass(frozen=True)
class DetectionSettings:
    """Detectors of adversarial examples from attributions (Ren et al., NeurIPS 2021, supplement G).

    Args:
        detectors: the detector kinds scored (``ml_loo``: the IQR of ``φ^(n-1)(i)``; ``shapley``: the IQR of
            ``φ^(m)(i)``; ``interaction``: the mean of ``I^(m)_ij``).
        orders: the orders of ``shapley`` and ``interaction`` (``None``: the job's game orders).
        num_pairs, num_contexts: pairs and contexts of the sampled detectors (``None``: the job's game settings).
        grid: the players of the detection games (``None``: the job's game grid).
        value: the output compared (ML-LOO: the predicted class's; ``log_prob`` the paper's ``v``).
    """

    detectors: tuple[DetectorKind, ...] = DETECTOR_KINDS
    orders: str | list[int] | list[float] | None = None
    num_pairs: int | None = None
    num_contexts: int | None = None
    grid: int | tuple[int, int] | None = None
    value: ImageValue = "log_prob"

    def __post_init__(self) -> None:
        kinds = (self.detectors,) if isinstance(self.detectors, str) else tuple(self.detectors)
        if not kinds:
            raise ValueError(f"detection.detectors must name at least one of {', '.join(DETECTOR_KINDS)}")
        for kind in kinds:
            check_choice(kind, "detection.detectors", DETECTOR_KINDS)
        if len(set(kinds)) != len(kinds):
            raise ValueError(f"detection.detectors lists a detector twice: {list(kinds)}")
        object.__setattr__(self, "detectors", kinds)
        _check_positive_or_none(self.num_pairs, "detection.num_pairs")
        _check_positive_or_none(self.num_contexts, "detection.num_contexts")
        check_choice(self.value, "detection.value", IMAGE_VALUES)


@dataclass(frozen=True)
class DropoutSettings:
    """Dropout and cutout on early-stopped adversarial examples (Ren et al., NeurIPS 2021, Table 1, supplement H).

    Args:
        rates: the pixel-dropout rates α, each in ``[0, 1)`` (the paper: 0.1, 0.2, 0.3).
        cutout: also apply cutout (one square of ``cutout_size`` pixels, default half the side: 25 %).
        cutout_size, cutout_fill: as :class:`~lit_advgame.defenses.Cutout` (``size``, ``fill``).
        attack, norm, eps, step_size, steps, attack_kwargs: the attack stopped per image at its first success
            (the paper: untargeted L∞ PGD); ``eps``/``step_size`` may be fractions such as ``"16/255"``.
    """

    rates: tuple[float, ...] = (0.1, 0.2, 0.3)
    cutout: bool = True
    cutout_size: int | None = None
    cutout_fill: str | list[float] = "mean"
    attack: str = "pgd"
    norm: Norm = "linf"
    eps: float | str = "16/255"
    step_size: float | str = "2/255"
    steps: int = 20
    attack_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        rates = (self.rates,) if isinstance(self.rates, (int, float)) else tuple(self.rates)
        object.__setattr__(self, "rates", tuple(check_dropout_rate(r, "dropout.rates") for r in rates))
        if not isinstance(self.cutout, bool):
            raise TypeError(f"dropout.cutout must be a bool; got {self.cutout!r}")
        if not self.rates and not self.cutout:
            raise ValueError("dropout needs at least one transform: give rates or set cutout: true")
        Cutout(self.cutout_size, self.cutout_fill)  # validates the size
        check_int(self.steps, "dropout.steps", minimum=1)
        fixed = sorted({"targeted", "seed", "norm", "eps", "step_size", "steps"} & set(self.attack_kwargs))
        if fixed:
            raise ValueError(f"dropout.attack_kwargs may not set {fixed}: they are DropoutSettings' own settings")
        try:
            preset_config(self.attack, **self.attack_options())
        except (TypeError, ValueError, KeyError) as err:
            raise ValueError(f"dropout attack: {err}") from err

    def attack_options(self) -> dict[str, Any]:
        """The attack's options (without its seed, which is set per image)."""
        common = {"norm": self.norm, "eps": self.eps, "step_size": self.step_size, "steps": self.steps}
        return {**common, **self.attack_kwargs}

    @property
    def labels(self) -> tuple[str, ...]:
        """The transforms' names: ``dropout0.1``, ..., ``cutout``."""
        return tuple(f"dropout{r:g}" for r in self.rates) + (("cutout",) if self.cutout else ())

    def planned_forward_passes(self) -> int:
        """Per image: the early-stopped attack's (at most ``2·steps + 2``: the class check, a forward-backward per
        update, a forward per checked iterate) and 3 per transform (``x_adv`` and ``x_adv`` transformed, the clean
        image transformed)."""
        return 2 * self.steps + 2 + 3 * len(self.labels)


@dataclass(frozen=True)
class RankSettings:
    """SVD rank reduction of ``x`` and ``x_adv`` (Ren et al., NeurIPS 2021, Figure 6 right), on the job's game.

    Args:
        fractions: rank fractions in ``(0, 1]`` of the full rank ``k = min(H, W)`` (the paper: 1/4, 1/16).
        rounding, clamp: as :func:`~lit_advgame.defenses.svd_rank_reduce`.
    """

    fractions: tuple[float, ...] = PAPER_FRACTIONS
    rounding: RankRounding = "round"
    clamp: bool = True

    def __post_init__(self) -> None:
        fractions = (self.fractions,) if isinstance(self.fractions, (int, float)) else tuple(self.fractions)
        if not fractions:
            raise ValueError("rank.fractions must hold at least one rank fraction in (0, 1]")
        object.__setattr__(self, "fractions", tuple(check_fraction(f, "rank.fractions") for f in fractions))
        check_choice(self.rounding, "rank.rounding", RANK_ROUNDINGS)
        if not isinstance(self.clamp, bool):
            raise TypeError(f"rank.clamp must be a bool; got {self.clamp!r}")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"rank.fractions lists a fraction twice: {list(self.fractions)}")

    @property
    def labels(self) -> tuple[str, ...]:
        """``k4`` for 1/4, ``k16`` for 1/16 (``f0.3`` for a fraction that is no unit fraction)."""
        out = []
        for f in self.fractions:
            inverse = 1.0 / f
            out.append(f"k{round(inverse)}" if abs(inverse - round(inverse)) < 1e-9 else f"f{f:g}")
        return tuple(out)

    def record_names(self) -> tuple[str, ...]:
        """``rank_<label>_<part>`` and its ``_stderr`` for every fraction and part."""
        names = (f"rank_{label}_{part}" for label in self.labels for part in RANK_PARTS)
        return tuple(n for name in names for n in (name, f"{name}_stderr"))


@dataclass(frozen=True)
class SmoothedSettings:
    """A model analysed as its base classifier under Gaussian noise (Ren et al., NeurIPS 2021, supplement I).

    Args:
        sigma: the noise std σ > 0 in pixel units (``None``: the ``sigma`` of a ``RandomizedSmoothing`` Lightning
            checkpoint given as the model's ``path``).
        num_draws, seed, output: as :class:`~lit_advgame.defenses.NoisyLogProbabilities`.
    """

    sigma: float | None = None
    num_draws: int = 16
    seed: int = 0
    output: SmoothedOutput = "expected_log_prob"

    def __post_init__(self) -> None:
        check_int(self.num_draws, "smoothed.num_draws", minimum=1)
        check_int(self.seed, "smoothed.seed", minimum=0)
        check_choice(self.output, "smoothed.output", SMOOTHED_OUTPUTS)


DEFAULT_DETECTION = DetectionSettings()
DEFAULT_DROPOUT = DropoutSettings()
DEFAULT_RECOVERY = Recoverability()
DEFAULT_RANK = RankSettings()


def _settings(cls: type, given: Any, name: str) -> Any:
    """``given`` as a ``cls`` (a mapping of its fields is converted), or ``None``."""
    return None if given is None else settings_argument(cls, given, {}, "DefenseAnalysis", name)


def _checkpoint_sigma(spec: Mapping[str, Any], name: str) -> float:
    path = spec.get("path")
    hparams = {}
    if path is not None and str(path).endswith(".ckpt"):
        hparams = read_checkpoint(path, what="smoothing checkpoint").get("hyper_parameters") or {}
    if "sigma" not in hparams:
        raise ValueError(
            f"smoothed[{name!r}].sigma is null but model {name!r} is no RandomizedSmoothing Lightning checkpoint "
            "(.ckpt with a 'sigma' hyper-parameter); give sigma"
        )
    return float(hparams["sigma"])


class DefenseAnalysis(InteractionAnalysis):
    """Detection, dropout/cutout, recoverability and rank reduction per image and model (module docstring).

    Args:
        models: as :class:`~lit_advgame.analysis.InteractionAnalysis` (e.g. the standard, the adversarially trained
            and a randomized-smoothing model).
        smoothed: ``{model name: SmoothedSettings}``: models analysed as their base classifier under noise.
        interactions: estimate the base job's ``I^(m)``, ``ΔI^(m)``, ``ΔJ^(m)`` too.
        detection, dropout, recovery, rank: the analyses' settings (``None``/``null``: off).
        only_fooled: analyse (interactions, detection, rank) only images whose ``x_adv`` is misclassified.
        **kwargs: the other arguments of :class:`~lit_advgame.analysis.InteractionAnalysis` (``game``, ``attack``,
            ``attack_kwargs``, ``only_reached``, ``seed``, ``masked_batch_size``, ``name``, the data's
            ``num_classes``, ``input_shape``, ``mean``, ``std``).
    """

    writer_class_path = "lit_advgame.defenses.DefenseWriter"
    progress_description = "Explaining defenses"

    def __init__(
        self,
        models: str | dict[str, Any] | list[str | dict[str, Any]],
        smoothed: dict[str, SmoothedSettings] | None = None,
        interactions: bool = True,
        detection: DetectionSettings | None = DEFAULT_DETECTION,
        dropout: DropoutSettings | None = DEFAULT_DROPOUT,
        recovery: Recoverability | None = DEFAULT_RECOVERY,
        rank: RankSettings | None = DEFAULT_RANK,
        only_fooled: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(models, **kwargs)
        for flag, name in ((interactions, "interactions"), (only_fooled, "only_fooled")):
            if not isinstance(flag, bool):
                raise TypeError(f"DefenseAnalysis: {name} must be a bool; got {flag!r}")
        self.interactions = interactions
        self.only_fooled = only_fooled
        self.detection: DetectionSettings | None = _settings(DetectionSettings, detection, "detection")
        self.dropout: DropoutSettings | None = _settings(DropoutSettings, dropout, "dropout")
        self.recovery: Recoverability | None = _settings(Recoverability, recovery, "recovery")
        self.rank: RankSettings | None = _settings(RankSettings, rank, "rank")
        if self.recovery is not None and self.recovery.seed != 0:
            raise ValueError(
                "DefenseAnalysis: recovery.seed may not be set: each image's recovery seed comes from seed= and "
                "its index"
            )
        if not (interactions or any(s is not None for s in (self.detection, self.dropout, self.recovery, self.rank))):
            raise ValueError(f"DefenseAnalysis: every analysis is off; switch on at least one of {DEFENSE_ANALYSES}")
        shape = kwargs.get("input_shape")
        if self.dropout is not None and self.dropout.cutout and shape is not None:
            try:
                Cutout(self.dropout.cutout_size).side(int(shape[-2]), int(shape[-1]))
            except ValueError as err:
                raise ValueError(f"DefenseAnalysis: dropout.cutout_size: {err}") from err
        self.smoothed = self._wrap_smoothed(smoothed or {})
        self._noisy_settings = dataclasses.replace(self.settings, value="logit")
        self.detectors = self._detectors()
        base = tuple(name for q in ORDER_QUANTITIES for name in (q, f"{q}_stderr")) if interactions else ()
        self.order_records = base + (self.rank.record_names() if self.rank is not None else ())

    # ------------------------------------------------------------------ set-up
    def _wrap_smoothed(self, smoothed: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        if not isinstance(smoothed, Mapping):
            raise TypeError(f"DefenseAnalysis: smoothed must map model names to noise settings; got {smoothed!r}")
        resolved = {}
        for name, given in smoothed.items():
            if name not in self.model_names:
                raise ValueError(f"smoothed names model {name!r}, which is not among the models {self.model_names}")
            settings = _settings(SmoothedSettings, given if given is not None else {}, f"smoothed[{name!r}]")
            k = self.model_names.index(name)
            sigma = settings.sigma if settings.sigma is not None else _checkpoint_sigma(self.model_specs[k], name)
            self.models[k] = NoisyLogProbabilities(
                self.models[k], sigma, settings.num_draws, settings.seed, settings.output
            )
            resolved[name] = {**dataclasses.asdict(settings), "sigma": float(sigma)}
        return resolved

    def _detectors(self) -> list[AttributionDetector]:
        if self.detection is None:
            return []
        d, game = self.detection, self.settings
        common = {
            "num_contexts": d.num_contexts or game.num_contexts,
            "num_pairs": d.num_pairs or game.num_pairs,
            "pairs": game.pairs,
            "max_forward_passes": game.max_forward_passes,
        }
        orders = d.orders if d.orders is not None else game.orders
        detectors = [
            AttributionDetector(kind, orders=None if kind == "ml_loo" else orders, **common) for kind in d.detectors
        ]
        n = self.detection_players
        for detector in detectors:
            try:
                detector.resolve_orders(n)
            except ValueError as err:
                raise ValueError(f"detection ({detector.name}, n = {n} players): {err}") from err
        return detectors

    @property
    def detection_players(self) -> int:
        """The number of players of the detection games."""
        if self.detection is None or self.detection.grid is None:
            return self.settings.num_players
        rows, cols = grid_shape(self.detection.grid, min_players=2)
        return rows * cols

    def detection_columns(self) -> list[dict[str, Any]]:
        """One entry per column of the detection records: detector, statistic, order ``m`` and its label."""
        n = self.detection_players
        columns = []
        for detector in self.detectors:
            orders = detector.resolve_orders(n)
            for m, label in zip(orders.orders, orders.labels, strict=True):
                columns.append({"detector": detector.kind, "statistic": detector.statistic, "order": m, "label": label})
        return columns

    @override
    def run_metadata(self) -> dict[str, Any]:
        meta = super().run_metadata()

        def describe(settings: Any) -> Any:
            return None if settings is None else dataclasses.asdict(settings)

        meta.update(
            kind="defense_analysis",
            interactions=self.interactions,
            only_fooled=self.only_fooled,
            smoothed=self.smoothed,
            detection=describe(self.detection),
            detection_columns=self.detection_columns(),
            detection_players=self.detection_players,
            dropout=describe(self.dropout),
            dropout_transforms=list(self.dropout.labels) if self.dropout is not None else [],
            recovery=describe(self.recovery),
            rank=describe(self.rank),
            rank_labels=list(self.rank.labels) if self.rank is not None else [],
            seeding="per image: derive_seed(seed, <stream>, <dataset index>)",
        )
        return json_safe(meta)

    # ------------------------------------------------------------------ costs
    def planned_costs(self) -> dict[str, int]:
        """Forward passes per image and model of each analysis (upper bounds; masked inputs for the games), before
        a smoothed model's ``num_draws``."""
        game = self.settings
        costs: dict[str, int] = {"attack": 2 * self.attack.steps + 2}
        if self.interactions:
            costs["interactions"] = game.planned_forward_passes(1, 2)
        if self.detection is not None:
            n = self.detection_players
            costs["detection"] = sum(2 * d.planned_forward_passes(1, n) for d in self.detectors)
        if self.dropout is not None:
            costs["dropout"] = self.dropout.planned_forward_passes()
        if self.recovery is not None:
            costs["recovery"] = self.recovery.num_forward_passes(1)
        if self.rank is not None:
            costs["rank"] = game.planned_forward_passes(1, 2 * (1 + len(self.rank.fractions)))
        return costs

    def check_budgets(self) -> None:
        """Refuse, before any work, an analysis whose games need more than ``game.max_forward_passes`` per image."""
        budget, n = self.settings.max_forward_passes, self.detection_players
        for detector in self.detectors:
            check_budget(detector.planned_forward_passes(1, n), budget, f"detection: {detector.describe_plan(1, n)}")
        if self.rank is not None:
            games = 2 * (1 + len(self.rank.fractions))
            what = f"rank reduction ({self.settings.describe_plan(1, games)})"
            check_budget(self.settings.planned_forward_passes(1, games), budget, what)

    def describe_costs(self, num_images: int | None) -> str:
        """The announcement of the run's forward passes (printed when predict starts)."""
        costs = self.planned_costs()
        draws = [getattr(m, "forward_multiplier", 1) for m in self.models]
        per_image = sum(costs.values())
        parts = ", ".join(f"{name} {value:,}" for name, value in costs.items())
        noisy = f"; x{max(draws)} base-classifier passes each for the smoothed model(s)" if max(draws) > 1 else ""
        line = f"{self.job_name}: up to {per_image:,} forward passes per image and model ({parts}){noisy}"
        if num_images is not None:
            total = num_images * sum(per_image * d for d in draws)
            line += f"; up to {total:,} for {num_images} images x {len(self.models)} models"
        return line

    @override
    def on_predict_start(self) -> None:
        super().on_predict_start()
        self.check_budgets()
        planned = self.planned_batches()
        todo = None if planned is None else sum(len(b) for b in planned if not self.batch_finished(b))
        report(self.trainer, self.describe_costs(todo))

    # ------------------------------------------------------------------ the analyses
    @override
    def analyze_batch(
        self, x: torch.Tensor, y: torch.Tensor, indices: Sequence[int] | torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """:meth:`InteractionAnalysis.analyze_batch` without the per-call cost lines of the detectors and attacks
        (the job announced the run's cost when predict started)."""
        with _quiet_per_image_announcements():
            return super().analyze_batch(x, y, indices)

    def game_value(self, model: nn.Module, value: str) -> str:
        """The value on a smoothed model: its outputs are log-probabilities, so ``log_prob`` is ``logit``."""
        return "logit" if isinstance(model, NoisyLogProbabilities) and value == "log_prob" else value

    @override
    def model_game(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> InputGame:
        settings = self.settings
        if isinstance(model, NoisyLogProbabilities) and settings.value == "log_prob":
            settings = self._noisy_settings
        return settings.game(model, x, y, self.masked_batch_size)

    @override
    def selects(self, record: Mapping[str, Any]) -> bool:
        return super().selects(record) and (record["adv_misclassified"] or not self.only_fooled)

    @override
    def extra_records(self) -> dict[str, torch.Tensor]:
        nan, false, zero = torch.tensor(math.nan, dtype=torch.float64), torch.tensor(False), torch.tensor(0)
        out: dict[str, torch.Tensor] = {}
        if self.detection is not None:
            columns = torch.full((len(self.detection_columns()),), math.nan, dtype=torch.float64)
            out.update(detection_clean=columns, detection_adversarial=columns, detection_forward_passes=zero)
        if self.dropout is not None:
            transforms = torch.zeros(len(self.dropout.labels), dtype=torch.bool)
            out.update(dict.fromkeys(("dropout_corrected", "dropout_clean_broken"), transforms))
            out.update(dropout_fooled=false, dropout_steps=zero, dropout_forward_passes=zero)
        if self.recovery is not None:
            out.update(dict.fromkeys(("recovery_evaluated", "recovery_fooled", "recovery_restored"), false))
            out.update(dict.fromkeys(("recovery_adversarial_distance", "recovery_recovered_distance"), nan))
            out["recovery_forward_passes"] = zero
        if self.rank is not None:
            out.update(rank_forward_passes=zero)
        return out

    @override
    def analyze_image(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor, index: int
    ) -> dict[str, torch.Tensor]:
        """The base job's quantities (``interactions``), the detectors' scores and the rank-reduction changes of one
        analysed image (``(1, ...)`` each)."""
        out = super().analyze_image(model, x, y, x_adv, index) if self.interactions else {"num_forward_passes": 0}
        if self.detection is not None:
            out.update(self.detect_image(model, x, x_adv, index))
        if self.rank is not None:
            out.update(self.rank_image(model, x, y, x_adv, index))
        return out

    def detect_image(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, index: int) -> dict[str, Any]:
        """Scores of every detector on ``ml_loo_game`` of ``x`` and of ``x_adv`` (the same pairs and contexts:
        the detectors' ``random_state`` is the image's ``detection`` seed)."""
        assert self.detection is not None
        options = {
            "grid": self.detection.grid if self.detection.grid is not None else self.settings.grid,
            "value": self.game_value(model, self.detection.value),
            "batch_size": self.masked_batch_size,
        }
        seed = image_seed(self.seed, "detection", index)
        scores: dict[str, list[torch.Tensor]] = {"clean": [], "adversarial": []}
        passes = 0
        for detector in self.detectors:
            detector = dataclasses.replace(detector, random_state=seed)
            for key, image in (("clean", x), ("adversarial", x_adv)):
                result = detector.scores(ml_loo_game(model, image, **options))
                scores[key].append(result.scores.cpu())
                passes += result.num_forward_passes
        return {
            "detection_clean": torch.cat(scores["clean"], dim=1),
            "detection_adversarial": torch.cat(scores["adversarial"], dim=1),
            "detection_forward_passes": torch.tensor([passes]),
        }

    def rank_image(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor, index: int
    ) -> dict[str, Any]:
        """The paired changes of ``I^(m)`` of ``x`` and ``x_adv`` under rank reduction, and their difference."""
        assert self.rank is not None
        result = rank_reduction_interactions(
            self.model_game(model, x, y),
            self.model_game(model, x_adv, y),
            fractions=self.rank.fractions,
            rounding=self.rank.rounding,
            clamp=self.rank.clamp,
            **self.settings.estimator_kwargs(image_seed(self.seed, "rank", index)),
        )
        out: dict[str, Any] = {"rank_forward_passes": torch.tensor([result.num_forward_passes])}
        for f, label in enumerate(self.rank.labels):
            for part in RANK_PARTS:
                summary = getattr(result, part)[f]
                out[f"rank_{label}_{part}"] = summary.per_image
                out[f"rank_{label}_{part}_stderr"] = summary.per_image_stderr
        return out

    @override
    def analyze_correct_image(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, index: int
    ) -> dict[str, torch.Tensor]:
        """Dropout/cutout on the early-stopped adversarial example and the recoverability test."""
        out: dict[str, torch.Tensor] = {}
        with torch.inference_mode(False), torch.enable_grad():
            if self.dropout is not None:
                out.update(self.dropout_image(model, x, y, index))
            if self.recovery is not None:
                out.update(self.recover_image(model, x, y, index))
        return out

    def dropout_transforms(self, model: nn.Module, index: int) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        """The image's transforms, one per label of :attr:`DropoutSettings.labels`, each seeded by the image."""
        assert self.dropout is not None
        s = self.dropout
        seeds = [image_seed(self.seed, f"dropout:{label}", index) for label in s.labels]
        transforms: list[Callable[[torch.Tensor], torch.Tensor]] = [
            PixelDropout(rate, seed=seed) for rate, seed in zip(s.rates, seeds, strict=False)
        ]
        if s.cutout:
            transforms.append(functools.partial(Cutout(s.cutout_size, s.cutout_fill, seed=seeds[-1]), model=model))
        return transforms

    def dropout_image(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, index: int) -> dict[str, Any]:
        """The early-stopped attack on one image, then per transform: corrected, and the clean image broken."""
        assert self.dropout is not None
        attack = build_attack(
            self.dropout.attack,
            model,
            seed=image_seed(self.seed, "dropout_attack", index),
            **self.dropout.attack_options(),
        )
        stopped = EarlyStoppedAttack(attack).run(x, y)
        corrected, broken, counted = [], [], torch.zeros(1, dtype=torch.bool)
        transforms = self.dropout_transforms(model, index)
        for transform in transforms:
            result = correction_ratio(model, stopped.x_adv, y, transform)
            counted = result.counted.cpu()
            corrected.append(bool(result.corrected[0]))
            with torch.no_grad(), eval_mode(model):
                broken.append(bool(model(transform(x)).argmax(dim=1)[0] != y[0]))
        return {
            "dropout_fooled": counted[0],
            "dropout_steps": stopped.steps[0].cpu(),
            "dropout_corrected": torch.tensor(corrected, dtype=torch.bool),
            "dropout_clean_broken": torch.tensor(broken, dtype=torch.bool),
            "dropout_forward_passes": torch.tensor(stopped.forward_passes + 3 * len(transforms)),
        }

    def recover_image(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, index: int) -> dict[str, Any]:
        """The recoverability test on one image (supplement I.10), seeded by its index."""
        assert self.recovery is not None
        settings = dataclasses.replace(self.recovery, seed=image_seed(self.seed, "recovery", index))
        result = settings.evaluate(model, x, y)
        return {
            "recovery_evaluated": torch.tensor(True),
            "recovery_fooled": result.fooled[0],
            "recovery_restored": result.restored[0],
            "recovery_adversarial_distance": result.adversarial_distance[0],
            "recovery_recovered_distance": result.recovered_distance[0],
            "recovery_forward_passes": torch.tensor(result.num_forward_passes),
        }


def analyses_of(meta: Mapping[str, Any]) -> list[str]:
    """The analyses a run's metadata switched on, in :data:`~lit_advgame.vocabulary.DEFENSE_ANALYSES` order."""
    on = {"interactions": bool(meta.get("interactions", True))}
    on.update({name: meta.get(name) is not None for name in DEFENSE_ANALYSES if name != "interactions"})
    return [name for name in DEFENSE_ANALYSES if on[name]]


__all__ = [
    "DEFAULT_DETECTION",
    "DEFAULT_DROPOUT",
    "DEFAULT_RANK",
    "DEFAULT_RECOVERY",
    "DefenseAnalysis",
    "DetectionSettings",
    "DropoutSettings",
    "RankSettings",
    "SmoothedSettings",
    "analyses_of",
]
