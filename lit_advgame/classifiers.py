"""The classifier contract and its one loader: any trained or stored model as a pixel-space classifier.

A *classifier* is an ``nn.Module`` mapping images in [0, 1], shape (B, C, H, W), to logits (B, K), with its
normalization inside (the first layer, :class:`~lit_advgame.models.Normalize`). Every training module exposes one
(``ClassifierModule.classifier``: the network of a standard or adversarially trained model, the *base* classifier of
randomized smoothing, the :class:`~lit_advgame.ensembles.EnsembleModel` of an ensemble, whose output is the log of
the mean member probability). :func:`load_classifier` turns a *model spec* into a :class:`LoadedModel`: that
classifier on CPU, in eval mode, with frozen parameters, and its metadata (architecture, normalization, number of
classes, input shape, the members of an ensemble). Attack sources, transfer targets, score models and the
callbacks' external models all load through it.

A model spec is one of

* a path to a Lightning checkpoint (``.ckpt``) of any lit_advgame training module (``StandardClassifier``,
  ``AdversarialTraining`` incl. TRADES, ``RandomizedSmoothing``, ``Ensemble`` incl. TRS/GAL/ADP): the module is
  instantiated from the checkpoint -- its class path (saved by LightningCLI as ``_class_path``) and
  hyper-parameters, ``load_from_checkpoint`` -- and its ``classifier`` taken. A checkpoint without a class path
  (a ``Trainer`` run outside the CLI) is rebuilt from its hyper-parameters (``arch``, ``num_classes``,
  ``input_shape``, ``arch_kwargs``; an ensemble's ``archs``) and its ``model.*`` weights;
* a path to a weights-only classifier file written by :func:`export_classifier` (format
  ``"lit_advgame.classifier"``: the classifier's state dict, the architecture name(s) and options,
  ``num_classes``, ``input_shape``, ``mean``/``std``, the data config; an ensemble also lists its ``members``;
  loadable with ``torch.load(weights_only=True)``, a single model also by ``build_model(weights=...)``);
* a dict ``{"arch": name, "weights": path, name or None, "arch_kwargs": {...}, "name": label, "mean": [...],
  "std": [...], "normalization": "auto" | "none", "trusted": false, "allow_download": null, "num_classes": K}``
  for any registry or ``torchvision:<name>`` architecture and weights file: a plain, ``NormalizedModel``,
  Lightning or MadryLab ``robustness`` state dict (the latter's stored normalizer is used); for
  ``torchvision:<name>`` also torchvision's weights by name (``{"arch": "torchvision:resnet34", "weights":
  "IMAGENET1K_V1"}`` or ``"DEFAULT"``: their normalization and ``categories`` included, the file from
  torchvision's cache, downloaded only where allowed -- ``allow_download``, else ``LIT_ADVGAME_ALLOW_DOWNLOAD``,
  else only inside the ``lit-advgame`` command; see :mod:`lit_advgame.models.torchvision_models`).
  Normalization comes from the spec, else from the weights, else from the data (``mean``/``std`` passed by the
  caller); weights that store none with no mean/std anywhere are an error unless ``"normalization": "none"``
  (the network takes raw [0, 1] pixels);
* a dict ``{"path": file, "name": label, "member": i}`` to give a file a display name; ``member`` takes member
  ``i`` of an ensemble file (0-based).

Files are read with ``torch.load(weights_only=True)``; a checkpoint's class path is imported only if it names a
``LightningModule`` subclass.
"""

from __future__ import annotations

import contextvars
import dataclasses
import importlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from torch import nn

from lit_advgame.ensembles.model import EnsembleModel, build_ensemble_model
from lit_advgame.models import build_model, find_normalizer, read_checkpoint
from lit_advgame.models.normalize import NormalizedModel
from lit_advgame.models.registry import build_net_with_weights, pretrained_weights, weights_normalization
from lit_advgame.utils.io import atomic_torch_save

CLASSIFIER_FORMAT = "lit_advgame.classifier"
CLASSIFIER_FORMAT_VERSION = 1
#: the ``arch`` of an ensemble classifier (its members' architectures are in ``members``)
ENSEMBLE_ARCH = "ensemble"
SPEC_KEYS = (
    "arch",
    "weights",
    "arch_kwargs",
    "name",
    "mean",
    "std",
    "normalization",
    "trusted",
    "allow_download",
    "path",
    "num_classes",
    "member",
)
PATH_SPEC_KEYS = ("path", "name", "member")

ModelSpec = str | os.PathLike | Mapping[str, Any]


@dataclass
class LoadedModel:
    """A classifier (the contract: images in [0, 1] -> logits, normalization inside; CPU, eval mode, frozen
    parameters) with its display ``name``, ``spec`` (a JSON-able model spec that loads it again) and metadata.

    Attributes:
        arch: registry name of the architecture (``"ensemble"`` for an ensemble; see ``members``).
        arch_kwargs: architecture options (shared by an ensemble's members).
        mean, std: the per-channel normalization inside the classifier (an ensemble's: its members', when they
            all share one; else ``None``).
        members: an ensemble's members, each a :class:`LoadedModel` named ``<name>_member<i>`` whose ``spec``
            loads that member alone; empty for a single model.
        module: class path of the training module a Lightning checkpoint came from (else ``None``).
        categories: the class names of torchvision's pretrained weights (else ``None``).
    """

    name: str
    model: nn.Module
    spec: dict[str, Any]
    input_shape: tuple[int, int, int] | None
    num_classes: int
    arch: str | None = None
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    mean: list[float] | None = None
    std: list[float] | None = None
    members: list[LoadedModel] = field(default_factory=list)
    module: str | None = None
    categories: list[str] | None = None

    @property
    def is_ensemble(self) -> bool:
        return bool(self.members)

    def metadata(self) -> dict[str, Any]:
        """JSON-able metadata: name, arch, arch_kwargs, num_classes, input_shape, mean, std, module and, for an
        ensemble, ``members`` (each member's metadata); ``categories`` for torchvision's pretrained weights."""
        out: dict[str, Any] = {
            "name": self.name,
            "arch": self.arch,
            "arch_kwargs": dict(self.arch_kwargs),
            "num_classes": int(self.num_classes),
            "input_shape": None if self.input_shape is None else list(self.input_shape),
            "mean": self.mean,
            "std": self.std,
            "module": self.module,
        }
        if self.members:
            out["members"] = [m.metadata() for m in self.members]
        if self.categories is not None:
            out["categories"] = list(self.categories)
        return out


def import_class(path: str) -> type:
    """The class named by a dotted ``path`` such as ``lit_advgame.data.DigitsDataModule``."""
    module, _, name = str(path).rpartition(".")
    if not module:
        raise ValueError(f"give a dotted class path such as 'lit_advgame.data.DigitsDataModule'; got {path!r}")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import {path!r}: {err}") from err


def _freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _normalization(model: nn.Module) -> tuple[list[float] | None, list[float] | None]:
    normalize = find_normalizer(model)
    if normalize is None:
        return None, None
    return [float(v) for v in normalize.mean.flatten()], [float(v) for v in normalize.std.flatten()]


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


def is_lightning_checkpoint(obj: Any) -> bool:
    """True for a Lightning checkpoint dict (``hyper_parameters`` and ``state_dict``)."""
    return isinstance(obj, Mapping) and isinstance(obj.get("hyper_parameters"), Mapping) and "state_dict" in obj


def _make_loaded(
    name: str,
    model: nn.Module,
    spec: dict[str, Any],
    shape: tuple[int, int, int] | None,
    num_classes: int,
    arch: str | None,
    arch_kwargs: Mapping[str, Any] | None,
    member_archs: Sequence[str | None] | None = None,
    module: str | None = None,
) -> LoadedModel:
    """Freeze ``model`` and describe it (and, for an :class:`EnsembleModel`, each member) as a :class:`LoadedModel`."""
    model = _freeze(model)
    kwargs = dict(arch_kwargs or {})
    if not isinstance(model, EnsembleModel):
        mean, std = _normalization(model)
        return LoadedModel(name, model, spec, shape, int(num_classes), arch, kwargs, mean, std, module=module)
    archs = list(member_archs) if member_archs is not None else [None] * model.num_members
    members = []
    for i, member in enumerate(model.members):
        member_name = f"{name}_member{i}"
        member_spec = {"path": spec["path"], "name": member_name, "member": i} if "path" in spec else {}
        mean, std = _normalization(member)
        members.append(
            LoadedModel(
                member_name, member, member_spec, shape, int(num_classes), archs[i], kwargs, mean, std, module=module
            )
        )
    shared = {(tuple(m.mean or ()), tuple(m.std or ())) for m in members}
    mean, std = (members[0].mean, members[0].std) if len(shared) == 1 else (None, None)
    return LoadedModel(name, model, spec, shape, int(num_classes), ENSEMBLE_ARCH, kwargs, mean, std, members, module)


# ------------------------------------------------------------------------------------------- Lightning checkpoints
def _member_archs(hp: Mapping[str, Any], count: int) -> list[str | None]:
    archs = hp.get("archs")
    if isinstance(archs, (list, tuple)) and len(archs) == count:
        return [str(a) for a in archs]
    return [hp.get("arch")] * count


def _module_from_checkpoint(path: Path, class_path: str, hp: Mapping[str, Any]) -> pl.LightningModule:
    """Instantiate the training module of a LightningCLI checkpoint (class path + hyper-parameters) with its weights."""
    cls = import_class(class_path)
    if not (isinstance(cls, type) and issubclass(cls, pl.LightningModule)):
        raise ValueError(
            f"Lightning checkpoint {str(path)!r} names {class_path!r} as its module, which is not a LightningModule"
        )
    # the checkpoint's state replaces the network that `weights` would initialise (that file may be gone)
    overrides = {"weights": None} if "weights" in hp else {}
    # in a fresh context: inside LightningCLI's instantiation of another module (an AttackModule loading its
    # sources), save_hyperparameters would otherwise take that module's hyper-parameters for this one's
    try:
        module = contextvars.Context().run(
            cls.load_from_checkpoint, path, map_location="cpu", weights_only=True, **overrides
        )
    except Exception as err:  # noqa: BLE001 - hyper-parameters or weights that no longer fit the class
        raise ValueError(
            f"Lightning checkpoint {str(path)!r}: could not rebuild its {class_path} from the stored hyper-parameters "
            f"and weights: {type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
        ) from err
    if not isinstance(getattr(module, "classifier", None), nn.Module):
        raise ValueError(
            f"Lightning checkpoint {str(path)!r} is of {class_path}, which has no `classifier` (the pixel-space "
            f"nn.Module of lit_advgame's ClassifierModule); give a dict spec {{'arch': ..., 'weights': {str(path)!r}}}"
        )
    return module


def _rebuild_from_hparams(path: Path, obj: Mapping[str, Any], hp: Mapping[str, Any]) -> tuple[nn.Module, list | None]:
    """The classifier of a checkpoint without a class path, built from ``arch``/``archs`` and its ``model.*`` state."""
    shape = tuple(int(s) for s in hp["input_shape"])
    classes, kwargs = int(hp["num_classes"]), dict(hp.get("arch_kwargs") or {})
    state = obj["state_dict"]
    member_ids = {k.split(".")[2] for k in state if k.startswith("model.members.")}
    if not member_ids:
        model = build_model(
            hp["arch"], num_classes=classes, in_channels=shape[0], input_size=shape[1:], weights=path, **kwargs
        )
        return model, None
    archs = _member_archs(hp, len(member_ids))
    model = build_ensemble_model(len(archs), archs, classes, shape, arch_kwargs=kwargs)
    own = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    _load_ensemble_state(model, own, f"Lightning checkpoint {str(path)!r}", archs)
    return model, archs


def _load_ensemble_state(model: EnsembleModel, state: Mapping[str, Any], source: str, archs: Sequence) -> None:
    """Strictly load an ensemble's state dict; a mismatch is a ``ValueError`` naming the file and the members."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(
            f"{source}: its ensemble weights do not match members {list(archs)}: {str(err).splitlines()[0]}"
        ) from err


def _load_lightning_checkpoint(
    path: Path, obj: Mapping[str, Any]
) -> tuple[nn.Module, tuple[int, int, int], int, str | None, dict[str, Any], list | None, str | None]:
    hp = obj["hyper_parameters"]
    if "arch" not in hp or "num_classes" not in hp or "input_shape" not in hp:
        raise ValueError(
            f"Lightning checkpoint {str(path)!r} is not from a lit_advgame classifier module "
            f"(its hyper_parameters lack arch/num_classes/input_shape: {sorted(hp)[:10]}); "
            f"give a dict spec {{'arch': ..., 'weights': {str(path)!r}}} instead"
        )
    shape = tuple(int(s) for s in hp["input_shape"])
    classes, arch, kwargs = int(hp["num_classes"]), hp["arch"], dict(hp.get("arch_kwargs") or {})
    class_path = hp.get("_class_path")
    if class_path:
        module = _module_from_checkpoint(path, str(class_path), hp)
        model = module.classifier
        archs = _member_archs(hp, model.num_members) if isinstance(model, EnsembleModel) else None
        describe = getattr(module, "classifier_metadata", None)
        if callable(describe):  # the module's own description of its classifier, where it has one
            info = describe()
            arch, kwargs = info.get("arch", arch), dict(info.get("arch_kwargs") or kwargs)
            archs = [m.get("arch") for m in info["members"]] if info.get("members") else archs
    else:
        model, archs = _rebuild_from_hparams(path, obj, hp)
    return model, shape, classes, arch, kwargs, archs, class_path


# ------------------------------------------------------------------------------------------- loading
def _load_classifier_file(
    path: Path, obj: Mapping[str, Any]
) -> tuple[nn.Module, tuple[int, int, int], int, str, dict[str, Any], list | None]:
    arch, kwargs = obj["arch"], dict(obj.get("arch_kwargs") or {})
    classes, shape = int(obj["num_classes"]), tuple(int(s) for s in obj["input_shape"])
    if not obj.get("members"):
        model = build_model(
            arch, num_classes=classes, in_channels=shape[0], input_size=shape[1:], weights=path, **kwargs
        )
        return model, shape, classes, arch, kwargs, None
    members = [
        build_model(
            m["arch"],
            num_classes=classes,
            in_channels=shape[0],
            input_size=shape[1:],
            mean=m["mean"],
            std=m["std"],
            **dict(m.get("arch_kwargs") or {}),
        )
        for m in obj["members"]
    ]
    model = EnsembleModel(members)
    archs = [m["arch"] for m in obj["members"]]
    _load_ensemble_state(model, obj["state_dict"], f"classifier file {str(path)!r}", archs)
    return model, shape, classes, arch, kwargs, archs


def default_label(path: Path) -> str:
    """The name of a model loaded from ``path`` without a ``name``: the file's stem, except for a Lightning
    checkpoint inside a run folder (``<run>/<version>/checkpoints/<stem>.ckpt``), named ``<run>_<version>``
    (plus ``_<stem>`` unless the stem is ``last``) so that reports tell runs apart.

    >>> default_label(Path("runs/trs_digits/version_0/checkpoints/last.ckpt"))
    'trs_digits_version_0'
    >>> default_label(Path("runs/trs_digits/version_0/checkpoints/epoch007-val_acc0.91.ckpt"))
    'trs_digits_version_0_epoch007-val_acc0.91'
    >>> default_label(Path("/work/repo/checkpoints/digits_lenet.pt"))
    'digits_lenet'
    """
    if path.suffix == ".ckpt" and path.parent.name == "checkpoints" and len(path.parents) >= 4:
        run = f"{path.parents[2].name}_{path.parents[1].name}"
        return run if path.stem == "last" else f"{run}_{path.stem}"
    return path.stem


def _load_file(
    path: Path,
    name: str | None,
    num_classes: int | None,
    input_shape: Sequence[int] | None,
    member: int | None = None,
) -> LoadedModel:
    if not path.is_file():
        raise FileNotFoundError(
            f"model checkpoint not found: {str(path)!r} (give a file made by export_classifier / "
            f"scripts/make_checkpoints.sh, a Lightning .ckpt of a lit_advgame training module, or a dict "
            f"{{'arch': ..., 'weights': ...}})"
        )
    obj = read_checkpoint(path, what="model checkpoint")
    label = default_label(path) if member is not None or name is None else name
    module = None
    if is_classifier_file(obj):
        model, shape, classes, arch, kwargs, archs = _load_classifier_file(path, obj)
    elif is_lightning_checkpoint(obj):
        model, shape, classes, arch, kwargs, archs, module = _load_lightning_checkpoint(path, obj)
    else:
        raise ValueError(
            f"{str(path)!r} is neither a lit_advgame classifier file nor a Lightning checkpoint of a "
            f"lit_advgame classifier; for a plain weights file give a dict spec {{'arch': <name>, 'weights': "
            f"{str(path)!r}}}"
        )
    _check_classes(label, classes, num_classes)
    _check_shape(label, shape, input_shape)
    loaded = _make_loaded(label, model, {"path": str(path), "name": label}, shape, classes, arch, kwargs, archs, module)
    if member is None:
        return loaded
    if not loaded.members:
        raise ValueError(f"model spec 'member': {member!r} needs an ensemble, but {str(path)!r} holds a single model")
    if isinstance(member, bool) or not isinstance(member, int) or not 0 <= member < len(loaded.members):
        raise ValueError(
            f"model spec 'member' must be an int in [0, {len(loaded.members) - 1}] (the ensemble in {str(path)!r} has "
            f"{len(loaded.members)} members); got {member!r}"
        )
    chosen = loaded.members[member]
    if name is not None:
        chosen = dataclasses.replace(chosen, name=name, spec={**chosen.spec, "name": name})
    return chosen


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
        extra = sorted(set(spec) - set(PATH_SPEC_KEYS))
        if extra:
            raise ValueError(f"a model spec with 'path' takes only 'name' and 'member' besides; got also {extra}")
        return _load_file(Path(spec["path"]), spec.get("name"), num_classes, input_shape, spec.get("member"))
    if "member" in spec:
        raise ValueError("model spec key 'member' needs 'path' (an ensemble's file); got it with 'arch'")
    if "arch" not in spec:
        raise ValueError(f"a model spec dict needs 'arch' (a registry name) or 'path'; got keys {sorted(spec)}")
    arch, weights = spec["arch"], spec.get("weights")
    classes = spec.get("num_classes", num_classes)
    named = pretrained_weights(arch, weights)
    if classes is None and named is not None:
        classes = len(named.categories)
    if classes is None:
        raise ValueError(f"model spec {dict(spec)}: num_classes is unknown (give it in the spec or the data)")
    if input_shape is None:
        raise ValueError(f"model spec {dict(spec)}: the input shape is unknown (pass input_shape / a DataModule)")
    shape = tuple(int(s) for s in input_shape)
    kwargs = dict(spec.get("arch_kwargs") or {})
    if weights is not None and not str(weights).strip():
        raise ValueError(f"model spec {spec.get('name') or arch!r}: 'weights' is empty; give a file or a name")
    try:
        net, file_mean, file_std, pretrained = build_net_with_weights(
            arch,
            int(classes),
            shape[0],
            shape[1:],
            None if weights is None else str(weights),
            trusted=bool(spec.get("trusted", False)),
            allow_download=spec.get("allow_download"),
            **kwargs,
        )
    except FileNotFoundError as err:
        # a missing local file; a missing torchvision cache file has its own message (where and how to fetch it)
        if type(err) is FileNotFoundError and weights is not None and not Path(weights).is_file():
            raise FileNotFoundError(
                f"weights file of model spec {spec.get('name') or arch!r} not found: {str(weights)!r}"
            ) from err
        raise
    normalization = spec.get("normalization", "auto")
    spec_mean, spec_std = spec.get("mean"), spec.get("std")
    if spec_mean is None and spec_std is None and file_mean is None and normalization != "none":
        spec_mean, spec_std = mean, std  # the data's
    mean_l, std_l = weights_normalization(
        spec_mean, spec_std, shape[0], file_mean, file_std, weights=weights, normalization=normalization
    )
    if spec.get("name"):
        label = spec["name"]
    elif pretrained is not None:
        label = f"{pretrained.arch}_{pretrained.enum.name}"
    else:
        label = arch if weights is None else Path(weights).stem
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
    if normalization == "none":
        desc.update(mean=None, std=None, normalization="none")
    loaded = _make_loaded(label, NormalizedModel(net, mean_l, std_l), desc, shape, int(classes), arch, kwargs)
    if pretrained is not None:
        loaded.categories = pretrained.categories
    return loaded


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

    Example: a registry spec (untrained weights here; add ``"weights": path`` for a file), exported and loaded
    back under a display name:

    >>> import tempfile
    >>> from pathlib import Path
    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> loaded = load_classifier({"arch": "small_cnn", "num_classes": 10, "mean": [0.5], "std": [0.25]},
    ...                          input_shape=(1, 16, 16))
    >>> loaded.name, loaded.num_classes, loaded.input_shape, loaded.mean, loaded.std
    ('small_cnn', 10, (1, 16, 16), [0.5], [0.25])
    >>> x = torch.rand(2, 1, 16, 16)  # pixel space: the normalization is inside the classifier
    >>> loaded.model(x).shape, loaded.model.training
    (torch.Size([2, 10]), False)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     again = load_classifier({"path": str(export_classifier(loaded, Path(tmp) / "cnn.pt")), "name": "cnn"})
    >>> again.name, again.arch, torch.equal(again.model(x), loaded.model(x))
    ('cnn', 'small_cnn', True)
    """
    if isinstance(spec, (str, os.PathLike)):
        return _load_file(Path(spec), None, num_classes, input_shape)
    if isinstance(spec, Mapping):
        return _load_dict(spec, num_classes, input_shape, mean, std)
    raise TypeError(
        f"a model spec must be a path (str) or a dict such as {{'arch': 'small_cnn', 'weights': 'w.pt'}}; "
        f"got {type(spec).__name__}"
    )


def check_distinct_names(models: Sequence[LoadedModel], what: str) -> None:
    """Raise ``ValueError`` when two of ``models`` share a name."""
    names = [m.name for m in models]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{what} have duplicate names {duplicates}; give each a distinct 'name' in its spec")


def load_classifiers(specs: ModelSpec | Sequence[ModelSpec], what: str = "models", **kwargs: Any) -> list[LoadedModel]:
    """Load a spec or a list of specs; names must be distinct."""
    if isinstance(specs, (str, os.PathLike, Mapping)):
        specs = [specs]
    if not isinstance(specs, (list, tuple)) or len(specs) == 0:
        raise ValueError(f"{what} must be a model spec or a non-empty list of them; got {specs!r}")
    loaded = [load_classifier(s, **kwargs) for s in specs]
    check_distinct_names(loaded, what)
    return loaded


def with_members(models: Sequence[LoadedModel], what: str = "models") -> list[LoadedModel]:
    """``models`` with each ensemble followed by its members (``<name>_member<i>``): to score both the ensemble
    and each member."""
    expanded = [m for model in models for m in (model, *model.members)]
    check_distinct_names(expanded, what)
    return expanded


def _normalization_entry(model: nn.Module, what: str) -> tuple[list[float], list[float]]:
    if not isinstance(model, NormalizedModel):
        raise TypeError(f"{what} must be a NormalizedModel (from build_model); got {type(model).__name__}")
    return _normalization(model)


def export_classifier(
    model: NormalizedModel | EnsembleModel | LoadedModel,
    path: str | os.PathLike,
    *,
    arch: str | Sequence[str] | None = None,
    num_classes: int | None = None,
    input_shape: Sequence[int] | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
    data: Mapping[str, Any] | None = None,
    metrics: Mapping[str, float] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a classifier as a weights-only file (atomically); see the module docstring.

    Args:
        model: a ``NormalizedModel`` (from ``build_model``), an ``EnsembleModel`` of them, or a
            :class:`LoadedModel` (whose metadata fills ``arch``, ``num_classes``, ``input_shape``, ``arch_kwargs``).
        arch: the registry name; for an ensemble one name for every member or a list of one per member.
        num_classes, input_shape, arch_kwargs: as the model was built with.
        data, metrics, extra: the data config, clean accuracies and further entries stored with it.
    """
    if isinstance(model, LoadedModel):
        loaded = model
        model = loaded.model
        if arch is None:
            arch = [m.arch for m in loaded.members] if loaded.members else loaded.arch
        num_classes = loaded.num_classes if num_classes is None else num_classes
        input_shape = loaded.input_shape if input_shape is None else input_shape
        arch_kwargs = loaded.arch_kwargs if arch_kwargs is None else arch_kwargs
    if arch is None or num_classes is None or input_shape is None:
        raise TypeError("export_classifier needs arch, num_classes and input_shape (or a LoadedModel that has them)")
    payload: dict[str, Any] = {"format": CLASSIFIER_FORMAT, "version": CLASSIFIER_FORMAT_VERSION}
    if isinstance(model, EnsembleModel):
        archs = [arch] * model.num_members if isinstance(arch, str) else [str(a) for a in arch]
        if len(archs) != model.num_members:
            raise ValueError(f"arch lists {len(archs)} architectures for an ensemble of {model.num_members} members")
        members = []
        for i, (member, name) in enumerate(zip(model.members, archs, strict=True)):
            member_mean, member_std = _normalization_entry(member, f"ensemble member {i}")
            members.append(
                {"arch": name, "arch_kwargs": dict(arch_kwargs or {}), "mean": member_mean, "std": member_std}
            )
        same = all(m["mean"] == members[0]["mean"] and m["std"] == members[0]["std"] for m in members)
        payload.update(arch=ENSEMBLE_ARCH, members=members)
        mean, std = (members[0]["mean"], members[0]["std"]) if same else (None, None)
    else:
        mean, std = _normalization_entry(model, "model")
        if not isinstance(arch, str):
            raise TypeError(f"arch must be a registry name for a single model; got {arch!r}")
        payload["arch"] = str(arch)
    payload.update(
        arch_kwargs=dict(arch_kwargs or {}),
        num_classes=int(num_classes),
        input_shape=[int(s) for s in input_shape],
        mean=mean,
        std=std,
        state_dict={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        data=dict(data or {}),
        metrics={k: float(v) for k, v in (metrics or {}).items()},
        **dict(extra or {}),
    )
    return atomic_torch_save(payload, path)
