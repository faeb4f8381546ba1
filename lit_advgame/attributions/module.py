"""``AttributionAnalysis``: regional attributions and perturbation components of attacks as a ``trainer.predict`` job.

The analyses of Wang et al. (ICCV 2021) at scale: ``predict_step`` takes a batch of images and labels and, for each
model of a list of model specs (anything :func:`lit_advgame.classifiers.load_classifier` loads), per image whose
clean image the model classifies correctly (target class ``t = (y + target_shift) mod num_classes``):

* ``regional`` (:class:`RegionalSettings`, Sec. 3.1, Eq. 3–4): for every norm (``l2``, ``linf``) the regional
  Shapley attributions ``φ_uv`` of the cost of the targeted attack restricted to coalitions of the ``L × L`` regions
  (:class:`~lit_advgame.attributions.regional.CostGame`; estimator ``exact``, ``stratified`` or ``permutation``, with
  standard errors), ``cost(∅)``, ``cost(Λ)``, the efficiency residual, the failures of the restricted attacks, the
  regional magnitudes of the unrestricted perturbation and, with both norms, the IoU of the L2 and L∞ importance maps
  ``−φ`` and of the magnitudes (the paper's Table 1). An image whose border-only attack fails (``cost(∅)``
  undefined) is counted (``regional_<norm>_border_ok`` false) and not analysed, unless ``cap_cost`` is given;
* ``components`` (:class:`ComponentAnalysisSettings`, Sec. 3.2, supplement C): the perturbation of a targeted attack
  (by default L2 PGD with the margin loss), its components (:func:`~lit_advgame.attributions.extract_components`),
  the effect of each (:func:`~lit_advgame.attributions.component_effects`: mainly decreasing the true class or
  increasing the target) and its share of foreground pixels (for digits/MNIST: pixels of the clean image above
  ``foreground_threshold``). Images whose attack does not reach the target are counted and not analysed.

Seeding: each image is processed alone, its random streams derived from the base ``seed`` and its dataset index
(:func:`~lit_advgame.analysis.image_seed`: ``"regional"`` for the sampled coalitions -- the same for every norm and
model --, ``"attack"`` for the components' attack, ``"components"`` for the extraction's removal orders and
splits), so the results of an image do not depend on the batch size, the DDP rank or world size, or on resuming.

Before the work starts the job prints its cost (restricted attacks × gradient steps, masked inputs) and refuses a
plan over its budgets (``max_attacks`` of the regional estimator, ``max_masked_inputs`` of the components), per
image and model.

Records (one shard per batch, :class:`~lit_advgame.attributions.writer.AttributionWriter`), ``K`` models, ``n = L²``
regions, ``P`` players of the components game, ``M = P // q``: ``index``, ``label``, ``target``, ``x``, ``x_adv``
``(B, K, C, H, W)`` (the components' perturbation, else the unrestricted attack of the first norm), ``clean_correct``
``(B, K)``; regional, per norm: ``regional_<norm>_importance`` / ``_importance_stderr`` / ``_magnitude`` ``(B, K,
n)`` float64 (``−φ`` in region order ``u·L + v``, NaN where not analysed), ``_cost_empty``, ``_cost_full``,
``_efficiency_residual``, ``_failure_rate`` ``(B, K)`` float64, ``_num_failed``, ``_num_attempted``,
``_num_dropped``, ``_num_attacks``, ``_num_steps`` int64, ``_border_ok`` bool; ``regional_analyzed``,
``regional_iou_attributions``, ``regional_iou_magnitudes`` (NaN with one norm); components: ``components_analyzed``,
``components_attack_success``, ``components_delta_norm`` (in the attack's norm), ``components_map`` ``(B, K, P)``
(component id per player, ``-1``: none), ``components_count``, ``components_delta_true``,
``components_delta_target``, ``components_foreground`` ``(B, K, M)`` float64 (per component, NaN-padded),
``components_num_forward_passes``.

The attacks need gradients: configs set ``trainer.inference_mode: false``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from typing_extensions import override

from lit_advgame.analysis.module import image_seed
from lit_advgame.attacks.base import Attack
from lit_advgame.attacks.norms import build_norm
from lit_advgame.attacks.pgd_settings import PGDSettings
from lit_advgame.attributions.components import (
    ComponentSettings,
    check_fraction,
    component_effects,
    extract_components,
    first_step_cost,
    foreground_mask_from_image,
    foreground_share,
)
from lit_advgame.attributions.cost import L2CostAttack, LinfCostAttack, RestrictedAttack
from lit_advgame.attributions.pixel_interactions import DEFAULT_SUPERPIXEL, TaylorRewardApproximator, superpixel_game
from lit_advgame.attributions.regional import (
    ESTIMATORS,
    REFERENCE_BETA,
    CostGame,
    RegionGrid,
    attribution_iou,
    check_attack_budget,
    regional_magnitudes,
)
from lit_advgame.callbacks.game_settings import settings_argument
from lit_advgame.interactions import DEFAULT_BATCH_SIZE
from lit_advgame.predict.models import describe
from lit_advgame.predict.progress import report
from lit_advgame.predict.sharded import ShardedPredictModule, image_indices, load_checked_models
from lit_advgame.utils.checks import check_choice, check_int, check_positive
from lit_advgame.vocabulary import (
    FAILURE_POLICIES,
    LOSSES,
    NORMS,
    REGIONAL_ESTIMATORS,
    FailurePolicy,
    Loss,
    Norm,
    RegionalEstimator,
)


def _padded(values: torch.Tensor, size: int) -> torch.Tensor:
    """``values`` (float64) followed by NaN up to ``size`` entries."""
    out = torch.full((size,), math.nan, dtype=torch.float64)
    out[: values.numel()] = values.detach().double().cpu()
    return out


@dataclass
class RegionalSettings:
    """The regional attributions of an :class:`AttributionAnalysis` (Wang et al., ICCV 2021, Sec. 3.1, Eq. 3–4).

    Args:
        norms: the costs attributed (``"l2"``, ``"linf"``; both give the IoU of Table 1).
        num_regions, beta: the :class:`~lit_advgame.attributions.RegionGrid` (``L``, the relative border width).
        estimator: ``"exact"`` (``2^(L²)`` attacks per image), ``"stratified"`` (the reference) or ``"permutation"``.
        estimator_options: the estimator's own options (``samples_per_size``, ``chain_sizes``, ``num_permutations``,
            ``max_attacks``: the per-image budget); its ``random_state`` is set per image.
        on_failure, cap_cost, max_resamples: failed restricted attacks (:class:`~lit_advgame.attributions.CostGame`).
        l2, linf: the restricted attacks (:class:`~lit_advgame.attributions.L2CostAttack`,
            :class:`~lit_advgame.attributions.LinfCostAttack`; in YAML a mapping of their options).
    """

    norms: list[Norm] = field(default_factory=lambda: ["l2", "linf"])
    num_regions: int = 8
    beta: float = REFERENCE_BETA
    estimator: RegionalEstimator = "stratified"
    estimator_options: dict[str, Any] = field(default_factory=dict)
    on_failure: FailurePolicy = "cap"
    cap_cost: float | None = None
    max_resamples: int = 3
    l2: L2CostAttack = field(default_factory=L2CostAttack)
    linf: LinfCostAttack = field(default_factory=LinfCostAttack)

    def __post_init__(self) -> None:
        self.norms = list(self.norms) if isinstance(self.norms, (list, tuple)) else self.norms
        if not isinstance(self.norms, list) or not self.norms or len(set(self.norms)) != len(self.norms):
            raise ValueError(
                f"regional.norms must be a non-empty list of distinct norms (l2, linf); got {self.norms!r}"
            )
        for norm in self.norms:
            check_choice(norm, "regional.norms", NORMS)
        check_int(self.num_regions, "regional.num_regions", minimum=2)
        if isinstance(self.beta, bool) or not isinstance(self.beta, (int, float)) or not 0 <= self.beta < math.inf:
            raise ValueError(
                f"regional.beta (the relative border width) must be a finite number >= 0; got {self.beta!r}"
            )
        check_choice(self.estimator, "regional.estimator", REGIONAL_ESTIMATORS)
        check_choice(self.on_failure, "regional.on_failure", FAILURE_POLICIES)
        check_int(self.max_resamples, "regional.max_resamples", minimum=0)
        if self.cap_cost is not None:
            check_positive(self.cap_cost, "regional.cap_cost", allow_zero=True)
        if self.estimator == "exact" and self.on_failure != "cap":
            raise ValueError(
                f"regional.estimator 'exact' uses every coalition: on_failure must be 'cap'; got {self.on_failure!r}"
            )
        self.l2 = settings_argument(L2CostAttack, self.l2, {}, "RegionalSettings", "l2")
        self.linf = settings_argument(LinfCostAttack, self.linf, {}, "RegionalSettings", "linf")
        options = dict(self.estimator_options or {})
        if "random_state" in options:
            raise ValueError("regional.estimator_options may not set random_state: it is derived per image from seed")
        self.estimator_options = options
        self.estimator_for(0)  # the options are the estimator's

    def estimator_for(self, seed: int) -> Any:
        """The estimator with its options, seeded with ``seed`` (the exact one has no random state)."""
        cls = ESTIMATORS[self.estimator]
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(self.estimator_options) - names)
        if unknown:
            allowed = ", ".join(sorted(names - {"random_state"}))
            raise ValueError(
                f"regional.estimator_options: unknown option(s) {unknown} of {self.estimator!r}; allowed: {allowed}"
            )
        seeded = {"random_state": seed} if "random_state" in names else {}
        return cls(**self.estimator_options, **seeded)

    def attack(self, norm: str) -> RestrictedAttack:
        """The restricted attack of ``norm``."""
        return self.l2 if norm == "l2" else self.linf

    def grid(self, height: int, width: int) -> RegionGrid:
        """The region grid of ``height × width`` images (an error names a bad ``num_regions``/``beta``)."""
        return RegionGrid(height, width, self.num_regions, self.beta)

    def planned_attacks(self) -> int:
        """Restricted attacks per image and norm, at most: the estimator's plus the unrestricted attack."""
        rounds = self.max_resamples if self.on_failure == "resample" else 0
        return self.estimator_for(0).planned_attacks(self.num_regions**2, rounds) + 1

    def check_budget(self) -> None:
        """The plan of one image within the estimator's ``max_attacks`` (before any work)."""
        estimator = self.estimator_for(0)
        what = f"regional attributions ({self.estimator}, L={self.num_regions}) of one image"
        check_attack_budget(self.planned_attacks() - 1, estimator.max_attacks, what)


@dataclass
class ComponentAnalysisSettings:
    """The perturbation components of an :class:`AttributionAnalysis` (Wang et al., ICCV 2021, Sec. 3.2, supp. C).

    Args:
        attack: the targeted attack whose perturbation is decomposed (a
            :class:`~lit_advgame.attacks.pgd_settings.PGDSettings`; default L2, ε = 3, 100 steps of 0.15, as
            ``scripts/components_standard_vs_at.py``; the paper uses C&W L2); ``loss``: its loss.
        superpixel: side of the square players (1: pixels; the reference's 4 on 224×224 images).
        extraction: the :class:`~lit_advgame.attributions.ComponentSettings` (the reference's defaults; its
            ``random_state`` is set per image).
        foreground_threshold: the foreground of an image is its pixels whose channel mean exceeds it (digits,
            MNIST); ``None``: no foreground share.
        max_masked_inputs: budget of the extraction's first step per image and model (``None``: no cap).
    """

    attack: PGDSettings = field(default_factory=lambda: PGDSettings(norm="l2", eps=3.0, steps=100, step_size=0.15))
    loss: Loss = "margin"
    superpixel: int = DEFAULT_SUPERPIXEL
    extraction: ComponentSettings = field(default_factory=ComponentSettings)
    foreground_threshold: float | None = 0.5
    max_masked_inputs: int | None = None

    def __post_init__(self) -> None:
        self.attack = PGDSettings.coerce(self.attack, "components.attack").resolved()
        check_choice(self.loss, "components.loss", LOSSES)
        check_int(self.superpixel, "components.superpixel", minimum=1)
        if isinstance(self.extraction, Mapping) and isinstance(self.extraction.get("estimator"), Mapping):
            estimator = settings_argument(
                TaylorRewardApproximator, self.extraction["estimator"], {}, "components.extraction", "estimator"
            )
            self.extraction = {**self.extraction, "estimator": estimator}
        self.extraction = settings_argument(ComponentSettings, self.extraction, {}, "components", "extraction")
        if self.extraction.random_state is not None:
            raise ValueError("components.extraction.random_state must be unset: it is derived per image from seed")
        if self.foreground_threshold is not None:
            check_fraction(self.foreground_threshold, "components.foreground_threshold")
        if self.max_masked_inputs is not None:
            check_int(self.max_masked_inputs, "components.max_masked_inputs", minimum=1)

    def player_grid(self, height: int, width: int) -> tuple[int, int]:
        """Players per side of ``height × width`` images."""
        if height % self.superpixel or width % self.superpixel:
            raise ValueError(
                f"components.superpixel={self.superpixel} must divide the image sides ({height}x{width} pixels)"
            )
        return height // self.superpixel, width // self.superpixel

    def planned_masked_inputs(self, height: int, width: int) -> int:
        """Masked inputs (forward + backward) of the extraction's first step on one image (later steps cost less)."""
        return first_step_cost(self.player_grid(height, width), self.extraction)

    def check_budget(self, height: int, width: int) -> None:
        planned = self.planned_masked_inputs(height, width)
        if self.max_masked_inputs is not None and planned > self.max_masked_inputs:
            raise ValueError(
                f"the component extraction needs about {planned:,} masked inputs per image and model in its first "
                f"step, more than components.max_masked_inputs={self.max_masked_inputs:,}; use larger superpixels, "
                "fewer patches (extraction.patch_grid) or raise max_masked_inputs"
            )


class AttributionAnalysis(ShardedPredictModule):
    """Per-image regional attributions and perturbation components for several models (module docstring).

    Args:
        models: a model spec or a list of them (paths of classifier files or Lightning checkpoints, dicts such as
            ``{path: checkpoints/digits_small_cnn.pt, name: standard}``); each is analysed under its ``name``.
        regional: :class:`RegionalSettings` (in YAML a mapping of its fields), or ``None``.
        components: :class:`ComponentAnalysisSettings` (a mapping), or ``None``. At least one of the two.
        target_shift: the target class is ``(y + target_shift) mod num_classes`` (1 to num_classes − 1).
        name: label of this run in reports.
        seed: base seed of the per-image random streams (>= 0).
        masked_batch_size: masked inputs per forward pass of the components game.
        num_classes, input_shape, mean, std: linked from the DataModule by the CLI; checked against the models.
    """

    writer_class_path = "lit_advgame.attributions.AttributionWriter"
    per_image_results = True
    progress_description = "Computing attributions"
    work_verb = "analyse"

    def __init__(
        self,
        models: str | dict[str, Any] | list[str | dict[str, Any]],
        regional: RegionalSettings | None = None,
        components: ComponentAnalysisSettings | None = None,
        target_shift: int = 1,
        name: str | None = None,
        seed: int = 0,
        masked_batch_size: int = DEFAULT_BATCH_SIZE,
        num_classes: int | None = None,
        input_shape: Sequence[int] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        if regional is None and components is None:
            raise ValueError("AttributionAnalysis needs regional settings, components settings or both; got neither")
        for value, what, least in (
            (target_shift, "target_shift", 1),
            (seed, "seed", 0),
            (masked_batch_size, "masked_batch_size", 1),
        ):
            check_int(value, what, minimum=least)
        super().__init__()
        owner = type(self).__name__
        self.regional = (
            None if regional is None else settings_argument(RegionalSettings, regional, {}, owner, "regional")
        )
        self.components = (
            None
            if components is None
            else settings_argument(ComponentAnalysisSettings, components, {}, owner, "components")
        )
        # the seed is in run_metadata (meta.json), as InteractionAnalysis (a logger merging hparams would clash)
        self.save_hyperparameters(ignore=["seed"])
        loaded = load_checked_models(models, num_classes=num_classes, input_shape=input_shape, mean=mean, std=std)
        self.models = nn.ModuleList([m.model for m in loaded])
        self.model_names = [m.name for m in loaded]
        self.model_specs = describe(loaded)
        self.num_classes = num_classes
        if num_classes is not None and target_shift >= num_classes:
            raise ValueError(f"target_shift must be in 1..num_classes-1 = 1..{num_classes - 1}; got {target_shift}")
        self.target_shift = int(target_shift)
        self.seed = int(seed)
        self.masked_batch_size = int(masked_batch_size)
        kinds = [k for k, s in (("regional", self.regional), ("components", self.components)) if s is not None]
        self.run_name = name or f"{' vs '.join(self.model_names)}/{'+'.join(kinds)}"
        self.image_size: tuple[int, int] | None = None
        if input_shape is not None:
            self.check_plan(int(input_shape[-2]), int(input_shape[-1]))

    # ------------------------------------------------------------------ plan and bookkeeping
    def check_plan(self, height: int, width: int) -> None:
        """The settings fit ``height × width`` images and one image's plan fits the budgets (before any work)."""
        if self.regional is not None:
            self.regional.grid(height, width)
            self.regional.check_budget()
        if self.components is not None:
            self.components.check_budget(height, width)
        self.image_size = (height, width)

    def cost_line(self, num_images: int | None) -> str:
        """The announced cost of the run (restricted attacks × steps, masked inputs)."""
        images = "?" if num_images is None else f"{num_images:,}"
        parts = [f"{type(self).__name__}: {images} image(s) x {len(self.models)} model(s)"]
        total = 0
        if self.regional is not None:
            attacks = self.regional.planned_attacks()
            per_norm = [(n, attacks * self.regional.attack(n).steps_per_row()) for n in self.regional.norms]
            steps = sum(s for _, s in per_norm)
            detail = ", ".join(
                f"{n}: {attacks:,} x {self.regional.attack(n).steps_per_row():,} steps" for n, _ in per_norm
            )
            parts.append(
                f"regional, per image and model: up to {attacks:,} restricted attacks per norm ({detail}) = "
                f"{steps:,} gradient steps"
            )
            total += steps
        if self.components is not None and self.image_size is not None:
            masked = self.components.planned_masked_inputs(*self.image_size)
            steps = self.components.attack.steps
            parts.append(
                f"components, per image and model: a {steps}-step targeted attack + about {masked:,} masked inputs "
                "(forward + backward) in the extraction's first step (later steps cost less)"
            )
            total += steps + masked
        if num_images is not None:
            parts.append(f"whole run: up to about {num_images * len(self.models) * total:,} forward + backward passes")
        return "; ".join(parts)

    @override
    def run_metadata(self) -> dict[str, Any]:
        """JSON-able description of this analysis (written next to the shards, checked on resume)."""
        return {
            "name": self.run_name,
            "kind": "attribution_analysis",
            "models": self.model_names,
            "model_specs": self.model_specs,
            "regional": None if self.regional is None else dataclasses.asdict(self.regional),
            "components": None if self.components is None else dataclasses.asdict(self.components),
            "target_shift": self.target_shift,
            "seed": self.seed,
            "seeding": "per image: derive_seed(seed, 'regional' | 'attack' | 'components', <dataset index>)",
            "masked_batch_size": self.masked_batch_size,
        }

    @override
    def on_predict_start(self) -> None:
        super().on_predict_start()
        batches = self.planned_batches()  # the images no earlier run saved (per image, see per_image_results)
        todo = None if batches is None else sum(int(i) not in self._finished for batch in batches for i in batch)
        report(self.trainer, self.cost_line(todo))

    # ------------------------------------------------------------------ records
    def templates(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The per-image, per-model records with their values for an image that is not analysed."""
        nan = math.nan
        out: dict[str, torch.Tensor] = {
            "x_adv": x[0].detach().float().cpu().clone(),
            "clean_correct": torch.tensor(False),
        }
        if self.regional is not None:
            n = self.regional.num_regions**2
            out["regional_analyzed"] = torch.tensor(False)
            for norm in self.regional.norms:
                for key in ("importance", "importance_stderr", "magnitude"):
                    out[f"regional_{norm}_{key}"] = torch.full((n,), nan, dtype=torch.float64)
                for key in ("cost_empty", "cost_full", "efficiency_residual", "failure_rate"):
                    out[f"regional_{norm}_{key}"] = torch.tensor(nan, dtype=torch.float64)
                for key in ("num_failed", "num_attempted", "num_dropped", "num_attacks", "num_steps"):
                    out[f"regional_{norm}_{key}"] = torch.tensor(0, dtype=torch.int64)
                out[f"regional_{norm}_border_ok"] = torch.tensor(False)
            for key in ("iou_attributions", "iou_magnitudes"):
                out[f"regional_{key}"] = torch.tensor(nan, dtype=torch.float64)
        if self.components is not None:
            rows, cols = self.components.player_grid(x.shape[-2], x.shape[-1])
            players = rows * cols
            most = players // self.components.extraction.q
            out["components_analyzed"] = torch.tensor(False)
            out["components_attack_success"] = torch.tensor(False)
            out["components_delta_norm"] = torch.tensor(nan, dtype=torch.float64)
            out["components_map"] = torch.full((players,), -1, dtype=torch.int64)
            out["components_count"] = torch.tensor(0, dtype=torch.int64)
            for key in ("delta_true", "delta_target", "foreground"):
                out[f"components_{key}"] = torch.full((most,), nan, dtype=torch.float64)
            out["components_num_forward_passes"] = torch.tensor(0, dtype=torch.int64)
        return out

    # ------------------------------------------------------------------ the analyses of one image
    def regional_image(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, index: int) -> dict[str, Any]:
        """The regional records of one correctly classified image ``x`` ``(1, C, H, W)`` (module docstring)."""
        settings = self.regional
        assert settings is not None
        grid = settings.grid(x.shape[-2], x.shape[-1])
        games, out = {}, {}
        for norm in settings.norms:
            game = CostGame(
                model,
                x,
                target,
                settings.attack(norm),
                grid=grid,
                on_failure=settings.on_failure,
                cap_cost=settings.cap_cost,
                max_resamples=settings.max_resamples,
            )
            ok = settings.cap_cost is not None or bool(torch.isfinite(game.cost_of(False)).all())
            out[f"regional_{norm}_border_ok"] = ok
            games[norm] = game
        if not all(out.values()):  # cost(∅) undefined for some norm: counted, not analysed
            for norm, game in games.items():
                out[f"regional_{norm}_num_attacks"], out[f"regional_{norm}_num_steps"] = (
                    game.num_attacks,
                    game.num_steps,
                )
            return out
        importance, magnitudes = {}, {}
        full_mask = torch.ones(1, 1, *x.shape[-2:], dtype=torch.bool, device=x.device)
        for norm, game in games.items():
            result = settings.estimator_for(image_seed(self.seed, "regional", index)).approximate(game)
            unrestricted = game.attack(model, x, target, full_mask, return_perturbation=True)
            delta = unrestricted.perturbation[:, 0]
            importance[norm] = result.importance
            magnitudes[norm] = regional_magnitudes(delta, grid)
            prefix = f"regional_{norm}_"
            out.update(
                {
                    prefix + "importance": result.importance.flatten(1)[0],
                    prefix + "importance_stderr": result.per_image_stderr[0],
                    prefix + "magnitude": magnitudes[norm].flatten(1)[0],
                    prefix + "cost_empty": result.cost_empty[0],
                    prefix + "cost_full": result.cost_full[0],
                    prefix + "efficiency_residual": result.efficiency_residual[0],
                    prefix + "failure_rate": result.failure_rate[0],
                    prefix + "num_failed": game.failed[0],
                    prefix + "num_attempted": game.attempted[0],
                    prefix + "num_dropped": result.num_dropped[0],
                    prefix + "num_attacks": game.num_attacks + 1,
                    prefix + "num_steps": game.num_steps + unrestricted.num_steps,
                }
            )
            if norm == settings.norms[0]:
                out["x_adv"] = (x + delta)[0]
        if set(settings.norms) == {"l2", "linf"}:
            out["regional_iou_attributions"] = attribution_iou(importance["l2"], importance["linf"])[0]
            out["regional_iou_magnitudes"] = attribution_iou(magnitudes["l2"], magnitudes["linf"])[0]
        out["regional_analyzed"] = True
        return out

    def components_image(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor, index: int
    ) -> dict[str, Any]:
        """The component records of one correctly classified image ``x`` ``(1, C, H, W)`` (module docstring)."""
        settings = self.components
        assert settings is not None
        pgd = settings.attack
        attack = Attack(
            model,
            pgd.norm,
            pgd.eps,
            pgd.step_size,
            pgd.steps,
            loss=settings.loss,
            targeted=True,
            random_start=pgd.random_start,
            seed=image_seed(self.seed, "attack", index),
        )
        x_adv = attack(x, y, target).detach()
        delta = x_adv - x
        with torch.no_grad():
            success = bool(model(x_adv).argmax(dim=1) == target)
        out: dict[str, Any] = {
            "x_adv": x_adv[0],
            "components_attack_success": success,
            "components_delta_norm": float(build_norm(pgd.norm).norms(delta)[0]),
        }
        if not success:
            return out
        game = superpixel_game(
            model, x, delta, y, target, superpixel=settings.superpixel, batch_size=self.masked_batch_size
        )
        extraction = dataclasses.replace(settings.extraction, random_state=image_seed(self.seed, "components", index))
        result = extract_components(game, extraction)
        effects = component_effects(game, result.component_map)
        count = int(result.component_map[0].max()) + 1
        out.update(
            {
                "components_analyzed": True,
                "components_map": result.component_map[0],
                "components_count": count,
                "components_num_forward_passes": result.num_forward_passes,
            }
        )
        most = result.component_map.shape[1] // settings.extraction.q
        out["components_delta_true"] = _padded(effects.delta_true[0], most)
        out["components_delta_target"] = _padded(effects.delta_target[0], most)
        if settings.foreground_threshold is not None:
            foreground = foreground_mask_from_image(x, settings.foreground_threshold)
            share = foreground_share(result.component_map, game.player_map, foreground)[0]
            out["components_foreground"] = _padded(share, most)
        return out

    def image_records(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor, index: int
    ) -> dict[str, torch.Tensor]:
        """Every record of one image ``(1, C, H, W)`` and one model."""
        record = self.templates(x)
        with torch.no_grad():
            correct = bool(model(x).argmax(dim=1) == y)
        found: dict[str, Any] = {"clean_correct": correct}
        if correct:  # as the reference: only correctly classified images are attacked
            with torch.inference_mode(False), torch.enable_grad():  # predict runs under no_grad
                found.update(self.analyze_image(model, x, y, target, index))
        for key, value in found.items():
            record[key] = torch.as_tensor(value).detach().cpu().to(record[key].dtype)
        return record

    def analyze_image(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor, index: int
    ) -> dict[str, Any]:
        """The analyses of one correctly classified image (gradients enabled)."""
        found: dict[str, Any] = {}
        if self.regional is not None:
            found.update(self.regional_image(model, x, target, index))
        if self.components is not None:
            found.update(self.components_image(model, x, y, target, index))
        return found

    def analyze_batch(
        self, x: torch.Tensor, y: torch.Tensor, indices: Sequence[int] | torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Analyse images ``x`` with labels ``y`` and dataset ``indices`` with every model; returns the records."""
        indices = image_indices(x, indices)
        if self.image_size != tuple(x.shape[-2:]):
            self.check_plan(x.shape[-2], x.shape[-1])
        y = y.long()
        with torch.no_grad():
            classes = self.num_classes or self.models[0](x[:1]).shape[1]
        if self.target_shift % classes == 0:
            raise ValueError(f"target_shift must be in 1..num_classes-1 = 1..{classes - 1}; got {self.target_shift}")
        target = (y + self.target_shift) % classes
        rows = [
            [self.image_records(m, x[b : b + 1], y[b : b + 1], target[b : b + 1], i) for m in self.models]
            for b, i in enumerate(indices)
        ]
        records = {
            "index": torch.tensor(indices, dtype=torch.int64),
            "label": y.detach().cpu(),
            "target": target.detach().cpu(),
            "x": x.detach().float().cpu(),
        }
        for key in rows[0][0]:
            records[key] = torch.stack([torch.stack([rec[key] for rec in row]) for row in rows])
        return records

    # ------------------------------------------------------------------ Lightning hooks
    @override
    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        claimed = self.claim_images(batch, batch_idx)
        return claimed if isinstance(claimed, dict) else self.analyze_batch(*claimed)
