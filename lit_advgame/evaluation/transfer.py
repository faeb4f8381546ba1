r"""Transfer evaluation of saved adversarial examples on a list of target models (IR paper, Sections 3-5).

For every attack run (a row: one source model or ensemble and one attack) and every target model:

* **success** -- the fraction of examples the target misclassifies, ``max_{k≠y} z_k − z_y > 0``, at
  the last step and, when per-step records exist, at the step chosen by leave-one-out over images
  (Appendix K, :mod:`.loo`; O(N·T) per target);
* **transfer utility** (Section 3.2) -- the mean change of the target's margin,
  ``[max_{y'≠y} h_{y'}(x+δ) − h_y(x+δ)] − [max_{y'≠y} h_{y'}(x) − h_y(x)]``;
* the target's clean accuracy;

and per row, on the source model(s):

* **white-box success** -- the fraction misclassified by the source itself;
* the mean L2 and L∞ norms of the perturbations (interactions are only comparable between
  perturbations of similar magnitude, Section 3.1);
* **interaction** -- the average interaction inside each perturbation ``E_ij[I_ij(δ)]``
  (Eq. 4 / 39) with ``v(S)`` the source's margin at ``x + δ_S``, measured with
  :func:`lit_advgame.interactions.perturbation_interaction_estimate` (by default the paper's form:
  single players, ``margin_max``, the 1/(n−1) factor) on a fixed grid for all rows, seeded.

Each target is evaluated at its own input size: its metadata's ``input_shape`` (a checkpoint or classifier file), or
``input_size`` given in its spec (``{"path": "inc_v3.pt", "input_size": 299}``; a dict spec without it takes the
images' size). When that differs from the images' size, the clean and adversarial images are resized to it before
the target sees them (:class:`ResizedInput`: torchvision's ``resize``, bilinear with antialiasing, on the float
images, clamped to [0, 1]), as the IR paper's official code resizes its saved 8-bit PNGs to each target's resolution
(PIL's bilinear ``resize``, which antialiases when it shrinks; it resizes the 8-bit image, so its result is 8-bit
again, while here the resized images stay float). The report's settings list the resized targets.

Examples are those the source classifies correctly (``subset="source_correct"``, the paper's
protocol: its 1000 images are correctly classified by all sources), or ``"all"``, or
``"both_correct"`` (source and that target). Rates are averaged with torchmetrics ``MeanMetric``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import scipy.stats
import torch
from torch import nn
from torchmetrics.aggregation import MeanMetric
from torchvision.transforms.v2.functional import InterpolationMode, resize
from typing_extensions import override

from lit_advgame.classifiers import (
    LoadedModel,
    ModelSpec,
    check_distinct_names,
    load_classifier,
    load_classifiers,
    with_members,
)
from lit_advgame.evaluation.loo import loo_success_rate
from lit_advgame.evaluation.report import TransferReport
from lit_advgame.evaluation.results import RowResult, TargetResult
from lit_advgame.evaluation.scores import batched_margins, candidate_margins
from lit_advgame.interactions.perturbation_spec import FIELDS as SPEC_FIELDS
from lit_advgame.interactions.perturbation_spec import PerturbationInteraction
from lit_advgame.predict.shards import AdversarialSet, load_adversarial
from lit_advgame.predict.writer import meta_differences
from lit_advgame.utils.checks import check_choice, check_int
from lit_advgame.vocabulary import TRANSFER_SUBSETS

SUBSETS = TRANSFER_SUBSETS
#: options of the interaction measurement: the fields of the one
#: :class:`~lit_advgame.interactions.perturbation_spec.PerturbationInteraction` specification (its defaults: the
#: paper's single-player form, ``margin_max``, the 1/(n−1) factor, a 16x16 grid, 64 players) plus ``seed`` and
#: ``max_images``
INTERACTION_DEFAULTS: dict[str, Any] = {**dataclasses.asdict(PerturbationInteraction()), "seed": 0, "max_images": None}


def _mean(values: torch.Tensor) -> float:
    """Mean through torchmetrics (NaN for no values)."""
    if values.numel() == 0:
        return float("nan")
    metric = MeanMetric(nan_strategy="error")
    metric.update(values.double())
    return float(metric.compute())


def _stderr(values: torch.Tensor) -> float:
    """Standard error of the mean (:func:`scipy.stats.sem`, ddof=1); NaN for fewer than 2 values."""
    if values.numel() < 2:
        return float("nan")
    return float(scipy.stats.sem(values.detach().double().cpu().numpy().ravel(), ddof=1))


#: how images are resized to a target's input size (written to the report's settings)
RESIZE_METHOD = (
    "torchvision.transforms.v2.functional.resize, bilinear, antialias=True, on the float images, clamped to [0, 1] "
    "(the IR official code: PIL bilinear resize of the 8-bit PNGs)"
)


class ResizedInput(nn.Module):
    """``model`` evaluated at ``size`` (H, W): images are resized to it first (see :data:`RESIZE_METHOD`)."""

    def __init__(self, model: nn.Module, size: Sequence[int]) -> None:
        super().__init__()
        self.model = model
        self.size = [int(size[0]), int(size[1])]

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if list(x.shape[-2:]) != self.size:
            x = resize(x, self.size, interpolation=InterpolationMode.BILINEAR, antialias=True).clamp(0.0, 1.0)
        return self.model(x)


def _target_input_size(spec: ModelSpec) -> tuple[ModelSpec, tuple[int, int] | None]:
    """A target spec without its ``input_size`` entry, and that size as (H, W) (``None`` if not given)."""
    if not isinstance(spec, Mapping) or "input_size" not in spec:
        return spec, None
    size = spec["input_size"]
    sizes = [size, size] if isinstance(size, int) else size
    if (
        not isinstance(sizes, (list, tuple))
        or len(sizes) != 2
        or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in sizes)
    ):
        raise ValueError(f"target input_size must be a positive int or [height, width]; got {size!r}")
    return {k: v for k, v in spec.items() if k != "input_size"}, (int(sizes[0]), int(sizes[1]))


def load_targets(targets: ModelSpec | Sequence[ModelSpec], image_shape: Sequence[int]) -> list[LoadedModel]:
    """Load the target models, each with its own input shape (see the module docstring): a file's stored one (checked
    against a spec's ``input_size``), else the spec's ``input_size``, else the images' (``image_shape``, C×H×W).
    Names must be distinct; the number of channels must be the images'."""
    specs = [targets] if isinstance(targets, (str, os.PathLike, Mapping)) else targets
    if not isinstance(specs, (list, tuple)) or len(specs) == 0:
        raise ValueError(f"target models must be a model spec or a non-empty list of them; got {targets!r}")
    loaded = []
    for spec in specs:
        spec, size = _target_input_size(spec)
        is_file = not isinstance(spec, Mapping) or "path" in spec
        # a file stores its input shape (checked against a given size); a dict spec takes the given or images' size
        shape = (image_shape[0], *size) if size is not None else (None if is_file else tuple(image_shape))
        target = load_classifier(spec, input_shape=shape)
        own = tuple(target.input_shape) if target.input_shape is not None else tuple(image_shape)
        if own[0] != image_shape[0]:
            raise ValueError(
                f"target {target.name!r} takes {own[0]}-channel images but the attack run's have {image_shape[0]} "
                "channels; only the image size is adapted to a target"
            )
        loaded.append(dataclasses.replace(target, input_shape=own))
    check_distinct_names(loaded, "target models")
    return loaded


def _resized(targets: Sequence[LoadedModel], image_shape: Sequence[int]) -> list[LoadedModel]:
    """``targets`` whose input size differs from the images' with a :class:`ResizedInput` model."""
    return [
        dataclasses.replace(t, model=ResizedInput(t.model, t.input_shape[1:]))
        if tuple(t.input_shape[1:]) != tuple(image_shape[1:])
        else t
        for t in targets
    ]


#: run metadata that does not change the adversarial examples (ignored when runs share a label)
LABEL_NEUTRAL_META = ("name", "record", "score_models", "score_model_specs")


def check_labels_unambiguous(
    sets: Sequence[AdversarialSet], labels: Sequence[str | None], names: Sequence[str]
) -> None:
    """Runs that share a row label must be the same run: the same dataset indices and the same
    settings (metadata other than the name and what is recorded per step, :data:`LABEL_NEUTRAL_META`);
    otherwise their numbers would be mixed under one label."""
    first: dict[str, int] = {}
    for i, adv in enumerate(sets):
        label = _source_and_method(adv, labels[i])[0]
        if label not in first:
            first[label] = i
            continue
        j = first[label]
        other = sets[j]
        diff = []
        if len(other) != len(adv) or not torch.equal(other.index, adv.index):
            diff.append(f"examples: {len(other)} -> {len(adv)}")
        strip = lambda meta: {k: v for k, v in meta.items() if k not in LABEL_NEUTRAL_META}  # noqa: E731
        diff += meta_differences(strip(other.meta), strip(adv.meta))
        if diff:
            raise ValueError(
                f"attack runs {names[j]} and {names[i]} are both labelled {label!r} but differ "
                f"({'; '.join(diff[:6])}); give each run its own label (labels=... / --labels) or evaluate them "
                "separately"
            )


def _source_and_method(adv: AdversarialSet, label: str | None) -> tuple[str, str, str]:
    names = adv.meta.get("source_names") or []
    source = "+".join(names) if names else "?"
    name = label or adv.meta.get("name") or f"{source}/{adv.meta.get('attack', '?')}"
    method = name[len(source) + 1 :] if name.startswith(source + "/") else name
    return name, source, method


class _ModelCache:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.models: dict[str, nn.Module] = {}

    def get(self, specs: Sequence[Mapping[str, Any]], input_shape: Sequence[int]) -> nn.Module:
        key = json.dumps(list(specs), sort_keys=True, default=str)
        if key not in self.models:
            loaded = load_classifiers(list(specs), "source models", input_shape=input_shape)
            models = [m.model for m in loaded]
            if len(models) == 1:
                model = models[0]
            else:
                from lit_advgame.attacks import EnsembleLogits

                model = EnsembleLogits(models).eval()
            self.models[key] = model.to(self.device)
        return self.models[key]


def measure_interaction(
    model: nn.Module,
    adv: AdversarialSet,
    options: Mapping[str, Any],
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> tuple[float, float, torch.Tensor]:
    """Average interaction inside each perturbation δ = x_adv − x on ``model``: (mean, stderr over images, per image).

    ``E_ij[I_ij(δ)]`` of Wang et al. (ICLR 2021), Eq. 4 / 39, estimated as ``options`` (:data:`INTERACTION_DEFAULTS`)
    specify, with the grid clipped to the image size.
    """
    opts = {**INTERACTION_DEFAULTS, **dict(options)}
    unknown = sorted(set(opts) - set(INTERACTION_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown interaction option(s) {unknown}; allowed: {', '.join(INTERACTION_DEFAULTS)}")
    spec = PerturbationInteraction.of({key: opts[key] for key in SPEC_FIELDS}).fit_grid(*adv.x.shape[-2:])
    n = len(adv) if opts["max_images"] is None else min(len(adv), int(opts["max_images"]))
    generator = torch.Generator(device=device).manual_seed(int(opts["seed"]))
    per_image = []
    chunk = max(1, 8 * batch_size // (2 * spec.num_samples + 2))  # images per engine call
    for start in range(0, n, chunk):
        x = adv.x[start : min(start + chunk, n)].to(device)
        x_adv = adv.x_adv[start : min(start + chunk, n)].to(device)
        y = adv.label[start : min(start + chunk, n)].to(device)
        result = spec.estimate(model, x, x_adv - x, y, generator=generator, batch_size=batch_size)
        per_image.append(result.per_image.double().cpu())
    values = torch.cat(per_image) if per_image else torch.zeros(0, dtype=torch.float64)
    return _mean(values), _stderr(values), values


#: where progress lines go: a function taking one line
Progress = Callable[[str], None]


def print_progress(line: str) -> None:
    """The default progress sink: one line to stderr (stdout keeps the tables), flushed at once."""
    print(line, file=sys.stderr, flush=True)


def _pct_text(value: float) -> str:
    return "–" if math.isnan(value) else f"{100 * value:.1f}%"


def _step_success(
    adv: AdversarialSet, target: LoadedModel, model: nn.Module, batch_size: int, device
) -> torch.Tensor | None:
    names = adv.step_score_names
    # per-step scores recorded at predict time are at the images' size: not those of a resized target
    if "step_scores" in adv.records and target.name in names and not isinstance(model, ResizedInput):
        return adv.records["step_scores"][:, :, names.index(target.name)].float() > 0
    scores = candidate_margins(model, adv, batch_size, device)
    return None if scores is None else scores > 0


def evaluate_row(
    adv: AdversarialSet,
    targets: Sequence[LoadedModel],
    *,
    label: str | None = None,
    subset: str = "source_correct",
    loo: bool = True,
    interaction: Mapping[str, Any] | None = None,
    source_model: nn.Module | None = None,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
    position: str = "",
) -> RowResult:
    """Evaluate one attack run on every target (see the module docstring).

    ``progress`` gets a line when the interaction is measured and after each target (``position`` names the
    run in those lines, e.g. ``"run 1/3 "``), with the seconds it took."""
    name, source, method = _source_and_method(adv, label)
    if "source_margin_clean" in adv.records:
        source_ok = adv.records["source_margin_clean"] < 0
        fooled_source = adv.records["source_margin_adv"] > 0
    elif source_model is not None:
        source_ok = batched_margins(source_model, adv.x, adv.label, batch_size, device) < 0
        fooled_source = batched_margins(source_model, adv.x_adv, adv.label, batch_size, device) > 0
    else:
        raise ValueError(f"{name}: the records hold no source margins and no source model was given")
    row_mask = torch.ones_like(source_ok) if subset == "all" else source_ok
    row = RowResult(
        name=name,
        source=source,
        method=method,
        num_images=int(row_mask.sum()),
        whitebox_success=_mean(fooled_source[row_mask].float()),
        interaction=float("nan"),
        interaction_stderr=float("nan"),
        meta=dict(adv.meta),
    )
    delta = (adv.x_adv - adv.x)[row_mask].flatten(1)  # magnitudes matter when comparing interactions (Sec. 3.1)
    row.perturbation_l2 = _mean(delta.norm(dim=1))
    row.perturbation_linf = _mean(delta.abs().amax(dim=1)) if delta.shape[1] else float("nan")
    if interaction is not None and source_model is not None and row.num_images > 0:
        start = time.perf_counter()
        row.interaction, row.interaction_stderr, _ = measure_interaction(
            source_model, adv.subset(row_mask), interaction, batch_size, device
        )
        if progress is not None:
            progress(
                f"transfer: {position}{name!r}: interaction {row.interaction:.4g} on the source "
                f"({time.perf_counter() - start:.1f}s)"
            )
    for number, target in enumerate(targets, start=1):
        start = time.perf_counter()
        model = target.model
        clean = batched_margins(model, adv.x, adv.label, batch_size, device)
        fooled = batched_margins(model, adv.x_adv, adv.label, batch_size, device)
        mask = row_mask & (clean < 0) if subset == "both_correct" else row_mask
        steps = _step_success(adv, target, model, batch_size, device) if loo else None
        cell = TargetResult(
            num_images=int(mask.sum()),
            success=_mean((fooled[mask] > 0).float()),
            success_loo=loo_success_rate(steps[mask]) if steps is not None and mask.any() else float("nan"),
            utility=_mean((fooled - clean)[mask]),
            utility_stderr=_stderr((fooled - clean)[mask]),
            clean_accuracy=_mean((clean < 0).float()),
            step_success=None if steps is None or not mask.any() else steps[mask].float().mean(0).tolist(),
        )
        row.targets[target.name] = cell
        if progress is not None:
            loo_text = "" if math.isnan(cell.success_loo) else f", LOO {_pct_text(cell.success_loo)}"
            size_text = ""
            if isinstance(model, ResizedInput):
                size_text = f" resized {'×'.join(map(str, adv.x.shape[-2:]))} -> {'×'.join(map(str, model.size))}"
            progress(
                f"transfer: {position}{name!r} -> target {number}/{len(targets)} {target.name!r}: success "
                f"{_pct_text(cell.success)}{loo_text} on {cell.num_images} images{size_text} "
                f"({time.perf_counter() - start:.1f}s)"
            )
    return row


def evaluate_transfer(
    adversarial: str | os.PathLike | AdversarialSet | Sequence[str | os.PathLike | AdversarialSet],
    targets: ModelSpec | Sequence[ModelSpec],
    *,
    members: bool = False,
    labels: Sequence[str] | None = None,
    subset: str = "source_correct",
    loo: bool = True,
    interaction: PerturbationInteraction | Mapping[str, Any] | bool | None = True,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    output_dir: str | os.PathLike | None = None,
    tensorboard: bool = True,
    title: str = "Transfer success rates (%)",
    progress: bool | Progress = False,
) -> TransferReport:
    """Evaluate saved adversarial examples (run folders, merged files or :class:`AdversarialSet`) on ``targets``.

    Args:
        adversarial: one run or a list of runs (rows of the report).
        targets: target model specs: classifier files, Lightning ``.ckpt`` files of any lit_advgame training
            module (ensembles included) or dicts (see :mod:`lit_advgame.classifiers`); a dict may add
            ``input_size`` (int or [H, W]). Each target is evaluated at its own input size, the images resized to
            it where it differs (see the module docstring).
        members: also score each member of an ensemble target, as the targets ``<name>_member<i>`` after it
            (so a report shows both the ensemble and each member).
        labels: row labels (default: each run's ``name``). Runs that share a label must be the same
            run (same examples and settings); runs of different sizes or settings under one label
            are refused.
        subset: ``"source_correct"`` (default), ``"all"`` or ``"both_correct"``.
        loo: compute LOO-selected success where per-step records exist.
        interaction: ``True`` for :data:`INTERACTION_DEFAULTS`, a dict of overrides, a
            :class:`~lit_advgame.interactions.perturbation_spec.PerturbationInteraction`, or ``False``/``None``
            to skip (it needs the source checkpoints named in each run's metadata).
        batch_size, device: evaluation batch size and device (default: CUDA if available).
        output_dir: if given, write ``report.json``, ``report.csv``, ``report.md``, the figure
            ``utility_vs_interaction.png`` and (with ``tensorboard``) TensorBoard events there.
        progress: report progress, a line per run and target with the time it took: ``True`` prints them to
            stderr (:func:`print_progress`; ``lit-advgame-transfer`` does), or a function taking each line.
    """
    check_choice(subset, "subset", SUBSETS)
    check_int(batch_size, "batch_size", minimum=1)
    runs = list(adversarial) if isinstance(adversarial, (list, tuple)) else [adversarial]
    if not runs:
        raise ValueError("adversarial must name at least one attack run")
    if labels is not None and len(labels) != len(runs):
        raise ValueError(f"got {len(labels)} labels for {len(runs)} attack runs")
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    sets = [r if isinstance(r, AdversarialSet) else load_adversarial(r) for r in runs]
    names = [f"#{i} ({str(r)!r})" if not isinstance(r, AdversarialSet) else f"#{i}" for i, r in enumerate(runs)]
    check_labels_unambiguous(sets, list(labels) if labels is not None else [None] * len(sets), names)
    shape = tuple(sets[0].x.shape[1:])
    for s in sets[1:]:
        if tuple(s.x.shape[1:]) != shape:
            raise ValueError(f"attack runs hold images of different shapes: {shape} vs {tuple(s.x.shape[1:])}")
    loaded = load_targets(targets, shape)
    if members:
        loaded = with_members(loaded, "target models")
    loaded = _resized(loaded, shape)
    for target in loaded:
        target.model.to(device)
    options = None
    if interaction is True:
        options = {}
    elif isinstance(interaction, PerturbationInteraction):
        options = dataclasses.asdict(interaction)
    elif isinstance(interaction, Mapping):
        options = dict(interaction)
    elif interaction not in (False, None):
        raise TypeError(f"interaction must be True, False/None or a dict of options; got {interaction!r}")
    if progress is True:
        progress = print_progress
    elif progress is False or progress is None:
        progress = None
    elif not callable(progress):
        raise TypeError(f"progress must be a bool or a function taking a line of text; got {progress!r}")
    if progress is not None:
        progress(f"transfer: {len(sets)} attack run(s) x {len(loaded)} target(s) on {device}")
    started = time.perf_counter()
    cache = _ModelCache(device)
    rows = []
    for i, adv in enumerate(sets):
        source_model = None
        specs = adv.meta.get("sources")
        if specs and (options is not None or "source_margin_clean" not in adv.records):
            source_model = cache.get(specs, shape)
        rows.append(
            evaluate_row(
                adv,
                loaded,
                label=None if labels is None else labels[i],
                subset=subset,
                loo=loo,
                interaction=options,
                source_model=source_model,
                batch_size=batch_size,
                device=device,
                progress=progress,
                position=f"run {i + 1}/{len(sets)} ",
            )
        )
    if progress is not None:
        progress(f"transfer: done in {time.perf_counter() - started:.1f}s")
    settings = {
        "subset": subset,
        "loo": loo,
        "interaction": None if options is None else {**INTERACTION_DEFAULTS, **options},
        "success": "target margin max_{k!=y} z_k - z_y > 0",
        "image_size": list(shape[1:]),
        "resized_targets": {t.name: t.model.size for t in loaded if isinstance(t.model, ResizedInput)},
    }
    if settings["resized_targets"]:
        settings["resize"] = RESIZE_METHOD
    report = TransferReport(rows=rows, targets=[t.name for t in loaded], settings=settings, title=title)
    if output_dir is not None:
        report.save(output_dir, tensorboard=tensorboard)
    return report
