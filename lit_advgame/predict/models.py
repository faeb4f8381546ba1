"""Source and target classifiers of transfer attacks, loaded from local files or model specs.

A *model spec* is one of

* a path to a weights-only classifier file written by :func:`export_classifier` (format
  ``"lit_advgame.classifier"``: a dict of the ``NormalizedModel`` state dict, the architecture
  name and options, ``num_classes``, ``input_shape``, ``mean``/``std`` and the data config;
  loadable with ``torch.load(weights_only=True)``, and also by ``build_model(weights=...)``);
* a path to a Lightning checkpoint (``.ckpt``) of one of lit_advgame's classifier modules
  (:class:`~lit_advgame.training.base.ClassifierModule`: ``hyper_parameters`` name the
  architecture, the weights sit under ``model.``);
* a dict ``{"arch": name, "weights": path or None, "arch_kwargs": {...}, "name": label,
  "mean": [...], "std": [...], "trusted": false}`` for any registry architecture and weights file
  (plain, ``NormalizedModel`` or ``robustness`` state dict). Normalization comes from the spec,
  else from the file, else from the data (``mean``/``std`` passed by the caller);
* a dict ``{"path": file, "name": label}`` to give a file a display name.

Every model returned is a pixel-space classifier (normalization is its first layer), on CPU, in
eval mode, with frozen parameters.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lit_advgame.models import (
    build_model,
    build_net,
    load_weights_into_net,
    read_checkpoint,
)
from lit_advgame.models.normalize import NormalizedModel
from lit_advgame.models.registry import resolve_normalization

CLASSIFIER_FORMAT = "lit_advgame.classifier"
CLASSIFIER_FORMAT_VERSION = 1
SPEC_KEYS = ("arch", "weights", "arch_kwargs", "name", "mean", "std", "trusted", "path", "num_classes")

ModelSpec = str | os.PathLike | Mapping[str, Any]


@dataclass
class LoadedModel:
    """A classifier with its display ``name`` and ``spec``, a JSON-able model spec that loads it again."""

    name: str
    model: nn.Module
    spec: dict[str, Any]
    input_shape: tuple[int, int, int] | None
    num_classes: int


def _freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _check_shape(name: str, stored: Sequence[int] | None, expected: Sequence[int] | None) -> None:
    if stored is None or expected is None:
        return
    if tuple(int(s) for s in stored) != tuple(int(s) for s in expected):
        raise ValueError(
            f"model {name!r} was trained on inputs of shape {tuple(stored)} but the data gives "
            f"{tuple(expected)}; use a model trained on this data (or adapt the data's image_size/channels)"
        )


def _check_classes(name: str, stored: int, expected: int | None) -> None:
    if expected is not None and int(stored) != int(expected):
        raise ValueError(f"model {name!r} has {stored} classes but the data has {expected}")


def is_classifier_file(obj: Any) -> bool:
    """True for a dict written by :func:`export_classifier`."""
    return isinstance(obj, Mapping) and obj.get("format") == CLASSIFIER_FORMAT


def _load_file(
    path: Path, name: str | None, num_classes: int | None, input_shape: Sequence[int] | None
) -> LoadedModel:
    if not path.is_file():
        raise FileNotFoundError(
            f"model checkpoint not found: {str(path)!r} (give a file made by export_classifier / "
            f"scripts/make_checkpoints.sh, a Lightning .ckpt of a lit_advgame classifier, or a dict "
            f"{{'arch': ..., 'weights': ...}})"
        )
    obj = read_checkpoint(path, what="model checkpoint")
    label = name or path.stem
    if is_classifier_file(obj):
        arch, kwargs = obj["arch"], dict(obj.get("arch_kwargs") or {})
        stored_classes, shape = int(obj["num_classes"]), tuple(int(s) for s in obj["input_shape"])
    elif isinstance(obj, Mapping) and isinstance(obj.get("hyper_parameters"), Mapping) and "state_dict" in obj:
        hp = obj["hyper_parameters"]
        if "arch" not in hp or "num_classes" not in hp or "input_shape" not in hp:
            raise ValueError(
                f"Lightning checkpoint {str(path)!r} is not from a lit_advgame classifier module "
                f"(its hyper_parameters lack arch/num_classes/input_shape: {sorted(hp)[:10]}); "
                f"give a dict spec {{'arch': ..., 'weights': {str(path)!r}}} instead"
            )
        arch, kwargs = hp["arch"], dict(hp.get("arch_kwargs") or {})
        stored_classes, shape = int(hp["num_classes"]), tuple(int(s) for s in hp["input_shape"])
    else:
        raise ValueError(
            f"{str(path)!r} is neither a lit_advgame classifier file nor a Lightning checkpoint of a "
            f"lit_advgame classifier; for a plain weights file give a dict spec {{'arch': <name>, 'weights': "
            f"{str(path)!r}}}"
        )
    _check_classes(label, stored_classes, num_classes)
    _check_shape(label, shape, input_shape)
    model = build_model(
        arch, num_classes=stored_classes, in_channels=shape[0], input_size=shape[1:], weights=path, **kwargs
    )
    return LoadedModel(label, _freeze(model), {"path": str(path), "name": label}, shape, stored_classes)


def _load_dict(
    spec: Mapping[str, Any],
    num_classes: int | None,
    input_shape: Sequence[int] | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
) -> LoadedModel:
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise ValueError(f"unknown model spec key(s) {unknown}; allowed: {', '.join(SPEC_KEYS)}")
    if "path" in spec:
        extra = sorted(set(spec) - {"path", "name"})
        if extra:
            raise ValueError(f"a model spec with 'path' takes only 'name' besides; got also {extra}")
        return _load_file(Path(spec["path"]), spec.get("name"), num_classes, input_shape)
    if "arch" not in spec:
        raise ValueError(f"a model spec dict needs 'arch' (a registry name) or 'path'; got keys {sorted(spec)}")
    classes = spec.get("num_classes", num_classes)
    if classes is None:
        raise ValueError(f"model spec {dict(spec)}: num_classes is unknown (give it in the spec or the data)")
    if input_shape is None:
        raise ValueError(f"model spec {dict(spec)}: the input shape is unknown (pass input_shape / a DataModule)")
    shape = tuple(int(s) for s in input_shape)
    arch, kwargs = spec["arch"], dict(spec.get("arch_kwargs") or {})
    net = build_net(arch, int(classes), shape[0], shape[1:], **kwargs)
    file_mean = file_std = None
    weights = spec.get("weights")
    if weights is not None:
        if not Path(weights).is_file():
            raise FileNotFoundError(f"weights file of model spec {spec.get('name') or arch!r} not found: {str(weights)!r}")
        file_mean, file_std = load_weights_into_net(net, weights, int(classes), trusted=bool(spec.get("trusted", False)))
    spec_mean, spec_std = spec.get("mean"), spec.get("std")
    if spec_mean is None and file_mean is None:
        spec_mean, spec_std = mean, std
    mean_l, std_l = resolve_normalization(spec_mean, spec_std, shape[0], file_mean, file_std, source=str(weights))
    label = spec.get("name") or (Path(weights).stem if weights is not None else arch)
    desc = {
        "arch": arch,
        "weights": None if weights is None else str(weights),
        "name": label,
        "num_classes": int(classes),
        "mean": mean_l,
        "std": std_l,
    }
    if kwargs:
        desc["arch_kwargs"] = kwargs
    if spec.get("trusted"):
        desc["trusted"] = True
    return LoadedModel(label, _freeze(NormalizedModel(net, mean_l, std_l)), desc, shape, int(classes))


def load_classifier(
    spec: ModelSpec,
    *,
    num_classes: int | None = None,
    input_shape: Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> LoadedModel:
    """Load one classifier from a model spec (see the module docstring).

    ``num_classes``/``input_shape`` (from the data) are checked against what a checkpoint stores;
    ``mean``/``std`` are used only for dict specs whose weights carry no normalization.
    """
    if isinstance(spec, (str, os.PathLike)):
        return _load_file(Path(spec), None, num_classes, input_shape)
    if isinstance(spec, Mapping):
        return _load_dict(spec, num_classes, input_shape, mean, std)
    raise TypeError(
        f"a model spec must be a path (str) or a dict such as {{'arch': 'small_cnn', 'weights': 'w.pt'}}; "
        f"got {type(spec).__name__}"
    )


def load_classifiers(specs: ModelSpec | Sequence[ModelSpec], what: str = "models", **kwargs: Any) -> list[LoadedModel]:
    """Load a spec or a list of specs; names must be distinct."""
    if isinstance(specs, (str, os.PathLike, Mapping)):
        specs = [specs]
    if not isinstance(specs, (list, tuple)) or len(specs) == 0:
        raise ValueError(f"{what} must be a model spec or a non-empty list of them; got {specs!r}")
    loaded = [load_classifier(s, **kwargs) for s in specs]
    names = [m.name for m in loaded]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{what} have duplicate names {duplicates}; give each a distinct 'name' in its spec")
    return loaded


def export_classifier(
    model: NormalizedModel,
    path: str | os.PathLike,
    *,
    arch: str,
    num_classes: int,
    input_shape: Sequence[int],
    arch_kwargs: Mapping[str, Any] | None = None,
    data: Mapping[str, Any] | None = None,
    metrics: Mapping[str, float] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` as a weights-only classifier file (atomically); see the module docstring."""
    from lit_advgame.utils.io import atomic_torch_save

    if not isinstance(model, NormalizedModel):
        raise TypeError(f"model must be a NormalizedModel (from build_model); got {type(model).__name__}")
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    payload = {
        "format": CLASSIFIER_FORMAT,
        "version": CLASSIFIER_FORMAT_VERSION,
        "arch": str(arch),
        "arch_kwargs": dict(arch_kwargs or {}),
        "num_classes": int(num_classes),
        "input_shape": [int(s) for s in input_shape],
        "mean": model.normalize.mean.flatten().tolist(),
        "std": model.normalize.std.flatten().tolist(),
        "state_dict": state,
        "data": dict(data or {}),
        "metrics": {k: float(v) for k, v in (metrics or {}).items()},
        **dict(extra or {}),
    }
    return atomic_torch_save(payload, path)


def describe(models: Sequence[LoadedModel]) -> list[dict[str, Any]]:
    """JSON-able descriptions of loaded models (for run metadata)."""
    return [dict(m.spec) for m in models]


def margins(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``max_{k≠y} z_k − z_y`` per row (> 0 ⇔ misclassified); the IR paper's v(Ω) and its Section 3.2 utility."""
    label_logit = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return others.max(dim=1).values - label_logit
