"""``lit-advgame export``: a classifier file from any model, or a predict run's adversarial examples as PNGs.

    lit-advgame export runs/standard_digits/version_0/checkpoints/last.ckpt checkpoints/digits_small_cnn.pt
    lit-advgame export '{"arch": "torchvision:resnet34", "weights": "IMAGENET1K_V1"}' rn34.pt --input-shape 3 224 224
    lit-advgame export --adversarial runs/attacks/pgd pngs/pgd

(``python -m lit_advgame.predict.export`` is the same command.)

**Classifier file** (:func:`export_model`). The model is anything :func:`~lit_advgame.classifiers.load_classifier`
accepts: a Lightning checkpoint of any lit_advgame training module (standard, adversarial/TRADES, randomized
smoothing: its base classifier; ensembles incl. TRS/GAL/ADP: every member), an exported classifier file, or a model
spec -- a JSON/YAML mapping on the command line or a ``.json``/``.yaml`` file holding one (``{"arch", "weights"}``
for a registry or ``torchvision:`` architecture with a weights file, torchvision's weights by name, or a MadryLab
``robustness`` checkpoint). The file (:func:`~lit_advgame.classifiers.export_classifier`) stores the classifier's
state and metadata (architecture, classes, input shape, mean/std, members), the training module's class path as
``module``, the spec it came from as ``source``, torchvision's ``categories`` where known, and the data config with
the clean accuracy on the val and test splits (``val_acc``/``test_acc``) when a DataModule is known: a Lightning
checkpoint's own (rebuilt from its ``datamodule_hyper_parameters``, saved by lit_advgame's DataModules) or
``--data-class`` with ``--data-args``. A spec needs the input shape (``--input-shape`` or the data's).

**Adversarial PNGs** (:func:`export_adversarial_pngs`, ``--adversarial``): the adversarial examples of a predict
run (its output folder or merged file) as 8-bit PNGs in an image-folder layout, ``<folder>/<class>/<name>.png``,
so that other frameworks can evaluate them. ``<class>`` is the true label's class name where the run's DataModule
knows it (an image folder's class folders or WordNet ids), else the label index, zero-padded so that the sorted
folder names keep the index order; ``<name>`` is the source image's file stem where the DataModule has files (with
``_<index>`` added if two images of a class share a stem), else the dataset index. Beside the images:

* ``class_index.json`` -- ``{class name: index}`` for every class, so that
  ``ImageFolderDataModule(root=<folder>, val_dir=".", layout="class_folders", class_index=<folder>/class_index.json,
  image_size=<side>, eval_resize="resize")`` reads the images back with the run's labels;
* ``manifest.json`` -- the run (name, source models, preset, ε and norm, steps, seed), the quantization and its
  check against the ε-ball, the read-back recipe, and ``complete``;
* ``manifest.csv`` -- one row per image: file, dataset index, label, class, source image, ‖δ‖ before and after
  quantization in the attack's norm, and whether the saved δ leaves the ε-ball.

Quantization. Pixels are clamped to [0, 1] and rounded to the nearest of the 256 levels, ``round(255·x)``, as the IR
paper's official code saves its PNGs (``np.round(x·255)``, uint8). Rounding moves each pixel by at most 1/(2·255),
so δ can leave the ε-ball by less than that (L∞) when the clean image is not itself on the 8-bit grid (e.g. images
resized with interpolation); for 8-bit clean images and an ε that is a multiple of 1/255 it never does. The
manifest records the largest ‖δ‖ after rounding and how many images leave the ball. ``within_eps``
(``--within-eps``, L∞ runs only) instead takes, per pixel, the level nearest to ``x_adv`` inside the ball (a rounded
level outside it moves one step toward the clean pixel), so every saved δ satisfies ‖δ‖∞ ≤ ε.

Atomic and resumable: each PNG is written to a temporary file and renamed, so a file that exists is complete; a
second export into the same folder skips the images already there and refuses a folder written from another run or
with other options. The manifests are written (atomically) last, with ``complete: true``.
"""

from __future__ import annotations

import argparse
import collections
import csv
import io
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from lit_advgame.attacks.norms import build_norm
from lit_advgame.classifiers import (
    ModelSpec,
    export_classifier,
    import_class,
    is_classifier_file,
    is_lightning_checkpoint,
    load_classifier,
)
from lit_advgame.models import read_checkpoint
from lit_advgame.predict.attack_module import quantize
from lit_advgame.predict.shards import AdversarialSet, load_adversarial
from lit_advgame.utils.io import atomic_write, atomic_write_text

DEFAULT_DATA_CLASS = "lit_advgame.data.DigitsDataModule"
PNG_EXPORT_FORMAT = "lit_advgame.adversarial_png"
PNG_EXPORT_VERSION = 1
MANIFEST_NAME = "manifest.json"
MANIFEST_CSV_NAME = "manifest.csv"
CLASS_INDEX_NAME = "class_index.json"
#: how the pixels are quantized (written to the manifest)
ROUNDING = "nearest level round(255*x) of x clamped to [0, 1], as the IR official code (np.round(x*255), uint8)"
#: tolerance of the ε-ball check (float error of δ = x_adv − x)
BALL_TOLERANCE = 1e-6


# ============================================================================================ classifier files
@torch.no_grad()
def split_accuracy(model: torch.nn.Module, datamodule: Any, split: str, batch_size: int = 256) -> float:
    """Clean accuracy of ``model`` on a split of ``datamodule``."""
    data = datamodule.dataset(split)
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)
    correct = total = 0
    for x, y in loader:
        correct += int((model(x).argmax(1) == y).sum())
        total += len(y)
    return correct / max(total, 1)


def parse_model_spec(text: str | os.PathLike | Mapping[str, Any]) -> ModelSpec:
    """A model given on the command line: a JSON/YAML mapping (``{arch: ..., weights: ...}``), a ``.json``/``.yaml``
    file holding one, or a path (checkpoint or classifier file).

    >>> parse_model_spec('{arch: "torchvision:resnet34", weights: IMAGENET1K_V1}')
    {'arch': 'torchvision:resnet34', 'weights': 'IMAGENET1K_V1'}
    >>> parse_model_spec("runs/x/version_0/checkpoints/last.ckpt")
    'runs/x/version_0/checkpoints/last.ckpt'
    """
    if isinstance(text, Mapping):
        return dict(text)
    text = str(text).strip()
    if text.startswith("{"):
        return _mapping(text, "model spec")
    path = Path(text)
    if path.suffix.lower() in (".json", ".yaml", ".yml") and path.is_file():
        return _mapping(path.read_text(encoding="utf-8"), f"model spec file {text!r}")
    return text


def _mapping(text: str, what: str) -> dict[str, Any]:
    try:
        value = yaml.safe_load(text)  # YAML reads JSON too
    except yaml.YAMLError as err:
        raise ValueError(f"{what}: invalid JSON/YAML mapping {text!r}: {str(err).splitlines()[0]}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a mapping such as {{arch: small_cnn, weights: w.pt}}; got {text!r}")
    return value


def _stored_data(spec: ModelSpec) -> tuple[dict[str, Any], dict[str, Any], dict[str, float] | None]:
    """What a file spec brings besides the classifier: its data config (``class_path``/``init_args``), extra entries
    (a Lightning checkpoint's ``epoch``) and the metrics to keep (a classifier file's; ``None``: measure them)."""
    if not isinstance(spec, (str, os.PathLike)) or not Path(spec).is_file():
        return {}, {}, None  # a dict spec; load_classifier reports a missing file
    try:
        raw = read_checkpoint(spec, what="model checkpoint")
    except ValueError:
        return {}, {}, None  # load_classifier says what the file is not
    if is_lightning_checkpoint(raw):
        stored = dict(raw.get("datamodule_hyper_parameters") or {})
        init_args = {k: v for k, v in stored.items() if not k.startswith("_")}
        data = {"class_path": stored.get("_class_path") or DEFAULT_DATA_CLASS, "init_args": init_args}
        return data, {"epoch": int(raw.get("epoch", -1))}, None
    if is_classifier_file(raw):
        return dict(raw.get("data") or {}), {}, {k: float(v) for k, v in dict(raw.get("metrics") or {}).items()}
    return {}, {}, None


def export_model(
    spec: ModelSpec,
    out: str | os.PathLike,
    *,
    data_class: str | None = None,
    data_args: Mapping[str, Any] | None = None,
    input_shape: Sequence[int] | None = None,
    num_classes: int | None = None,
    metrics: bool = True,
) -> dict[str, float]:
    """Export any model ``spec`` as a classifier file ``out``; returns the clean accuracies written.

    Args:
        spec: a path (Lightning checkpoint of a lit_advgame training module, classifier file) or a dict model spec
            (see :mod:`lit_advgame.classifiers`).
        data_class, data_args: the DataModule (class path and init arguments) whose val/test accuracy is measured
            and stored; default: a Lightning checkpoint's own (its class path recorded by LightningCLI, else
            ``DigitsDataModule``, with the stored hyper-parameters), a classifier file's stored data (its metrics
            are kept), none for a dict spec.
        input_shape, num_classes: for a dict spec without data (a checkpoint stores them; given, they are checked).
        metrics: measure ``val_acc``/``test_acc`` on the data (``False``: store the data config only, without
            building the DataModule unless a dict spec needs its shape or normalization).
    """
    data, extra, kept = _stored_data(spec)
    if data_class is None and data_args is not None and not data:
        raise ValueError("data_args (--data-args) needs data_class (--data-class): the DataModule to build")
    if data_class is not None or data_args is not None:  # other data: measured, never the stored metrics
        data = {"class_path": data_class or data["class_path"], "init_args": dict(data.get("init_args") or {})}
        if data_args is not None:
            data["init_args"] = dict(data_args)
        kept = None
    # the data is built to measure the accuracy, or for a dict spec's shape and normalization
    needed = data and kept is None and (metrics or isinstance(spec, Mapping))
    datamodule = import_class(data["class_path"])(**data["init_args"]) if needed else None
    shape = input_shape if input_shape is not None else getattr(datamodule, "input_shape", None)
    classes = num_classes if num_classes is not None else getattr(datamodule, "num_classes", None)
    if isinstance(spec, Mapping) and "path" not in spec and shape is None:
        raise ValueError(
            f"model spec {dict(spec)}: its input shape is unknown; give input_shape (--input-shape C H W) or the "
            "data (--data-class)"
        )
    loaded = load_classifier(
        spec,
        num_classes=classes,
        input_shape=shape,
        mean=getattr(datamodule, "mean", None),
        std=getattr(datamodule, "std", None),
    )
    scores: dict[str, float] = dict(kept or {})
    if datamodule is not None and metrics:
        datamodule.setup("test")
        scores = {f"{split}_acc": split_accuracy(loaded.model, datamodule, split) for split in ("val", "test")}
    extra["source"] = str(spec) if isinstance(spec, (str, os.PathLike)) else dict(spec)
    if loaded.module is not None:
        extra["module"] = loaded.module
    if loaded.categories is not None:
        extra["categories"] = list(loaded.categories)
    export_classifier(loaded, out, data=data, metrics=scores, extra=extra)
    return scores


def export_lightning_checkpoint(ckpt: str | Path, out: str | Path, data_class: str | None = None) -> dict[str, Any]:
    """Export a Lightning checkpoint ``ckpt`` to ``out``; returns the metrics written (``val_acc``, ``test_acc``).

    ``data_class`` defaults to the DataModule class recorded by LightningCLI in the checkpoint
    (``_class_path``), else ``lit_advgame.data.DigitsDataModule`` (see :func:`export_model`)."""
    return export_model(str(ckpt), out, data_class=data_class)


# ============================================================================================ adversarial PNGs
@dataclass
class DatasetInfo:
    """What the run's DataModule tells about its examples: class names by index and source files by index."""

    class_names: list[str] | None = None
    files: list[str] | None = None
    note: str = ""
    num_classes: int | None = None


def dataset_info(meta: Mapping[str, Any]) -> DatasetInfo:
    """Class names and source files of a predict run's examples, from its DataModule rebuilt from ``meta["data"]``
    (class path and hyper-parameters, recorded by the writer). A DataModule that cannot be rebuilt (data moved,
    class renamed) gives no names; the note says why."""
    data = meta.get("data") or {}
    if not data.get("class"):
        return DatasetInfo(note="the run records no DataModule")
    try:
        datamodule = import_class(data["class"])(**dict(data.get("hparams") or {}))
    except Exception as err:  # noqa: BLE001 - any failure to rebuild the data only loses the names
        return DatasetInfo(note=f"the run's DataModule {data['class']} could not be rebuilt ({type(err).__name__})")
    info = DatasetInfo(num_classes=getattr(datamodule, "num_classes", None))
    class_to_idx = getattr(datamodule, "class_to_idx", None)
    if isinstance(class_to_idx, Mapping) and class_to_idx:
        info.class_names = sorted(class_to_idx, key=class_to_idx.__getitem__)
    try:
        split = datamodule.dataset(getattr(datamodule, "predict_split", "test"))
        samples = getattr(getattr(split, "base", split), "samples", None)
        if samples is not None:
            info.files = [str(sample[0]) for sample in samples]
    except Exception:  # noqa: BLE001, S110 - the files are optional (names fall back to the index)
        pass
    return info


def _class_folder_names(labels: torch.Tensor, info: DatasetInfo, given: Sequence[str] | None) -> list[str]:
    """Folder name of every class index (class names, else zero-padded indices)."""
    highest = int(labels.max()) if labels.numel() else 0
    names = list(given) if given is not None else info.class_names
    if names is not None:
        if len(names) <= highest:
            raise ValueError(f"class_names lists {len(names)} classes but the run has label {highest}")
        if len(set(names)) != len(names) or any(not str(n) or "/" in str(n) or str(n).startswith(".") for n in names):
            raise ValueError("class_names must be distinct, non-empty folder names (no '/', not starting with '.')")
        return [str(n) for n in names]
    count = max(highest + 1, int(info.num_classes or 0))
    width = len(str(count - 1))
    return [f"{i:0{width}d}" for i in range(count)]


def _image_names(adv: AdversarialSet, info: DatasetInfo) -> list[str]:
    """File stem of every example: its source image's stem (``_<index>`` added on a clash within a class), else the
    zero-padded dataset index."""
    index = adv.index.tolist()
    if info.files is None or max(index, default=-1) >= len(info.files):
        width = max(6, len(str(max(index, default=0))))
        return [f"{i:0{width}d}" for i in index]
    stems = [Path(info.files[i]).stem for i in index]
    keys = list(zip(adv.label.tolist(), stems))
    counts = collections.Counter(keys)
    return [f"{stem}_{i}" if counts[key] > 1 else stem for i, stem, key in zip(index, stems, keys)]


def quantize_within_ball(x: torch.Tensor, x_adv: torch.Tensor, eps: float) -> torch.Tensor:
    """8-bit levels (uint8) of ``x_adv`` that stay in the L∞ ball of radius ``eps`` around ``x``: per pixel, the
    nearest level to ``x_adv`` among those in ``[x − eps, x + eps] ∩ [0, 1]`` (needs ``eps ≥ 1/510``, so that
    the interval holds a level)."""
    if eps < 1 / 510:
        raise ValueError(f"within_eps needs eps >= 1/510 (an 8-bit level in every ball); the run's eps is {eps}")
    levels = quantize(x_adv).float()
    low = torch.ceil((x.float() - eps) * 255.0 - 255.0 * BALL_TOLERANCE).clamp_(min=0.0)
    high = torch.floor((x.float() + eps) * 255.0 + 255.0 * BALL_TOLERANCE).clamp_(max=255.0)
    return torch.maximum(torch.minimum(levels, high), low).to(torch.uint8)


def _save_png(image: torch.Tensor, fh: Any) -> None:
    """Write a (C, H, W) uint8 image, C = 1 (grey) or 3 (RGB), as a PNG (PIL, lossless)."""
    from PIL import Image

    array = image.permute(1, 2, 0).numpy()
    Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array).save(fh, format="PNG")


def _run_identity(adv: AdversarialSet, within_eps: bool, folders: Sequence[str]) -> dict[str, Any]:
    """What a resumed export must share with the folder's: the run's metadata, the options and the class folders."""
    meta = json.loads(json.dumps(adv.meta, default=str))
    return {"meta": meta, "within_eps": bool(within_eps), "class_folders": list(folders)}


def _check_resumable(folder: Path, identity: Mapping[str, Any]) -> None:
    manifest = folder / MANIFEST_NAME
    if not manifest.is_file():
        if folder.is_dir() and any(folder.iterdir()):
            raise FileExistsError(
                f"{str(folder)!r} is not empty and holds no {MANIFEST_NAME}: give a new or empty folder for the PNGs"
            )
        return
    try:
        old = json.loads(manifest.read_text(encoding="utf-8")).get("identity")
    except (ValueError, UnicodeDecodeError, AttributeError) as err:
        raise ValueError(f"{str(manifest)!r} is corrupt ({err}); delete the folder and export again") from err
    if old != identity:
        raise FileExistsError(
            f"{str(folder)!r} holds PNGs exported from another attack run or with other options (see its "
            f"{MANIFEST_NAME}); give a new folder"
        )


def export_adversarial_pngs(
    adversarial: str | os.PathLike | AdversarialSet,
    folder: str | os.PathLike,
    *,
    class_names: Sequence[str] | None = None,
    within_eps: bool = False,
) -> dict[str, Any]:
    """Write a predict run's adversarial examples as 8-bit PNGs ``<folder>/<class>/<name>.png`` with
    ``class_index.json``, ``manifest.json`` and ``manifest.csv`` (see the module docstring); returns the manifest.

    Args:
        adversarial: the predict run's output folder, its merged file, or an :class:`AdversarialSet`.
        folder: the output folder (new, empty, or one this export wrote before: it resumes).
        class_names: folder names of the classes by index (default: the run's DataModule's, else the index).
        within_eps: keep every saved δ inside the L∞ ε-ball (:func:`quantize_within_ball`) instead of rounding.
    """
    adv = adversarial if isinstance(adversarial, AdversarialSet) else load_adversarial(adversarial)
    if len(adv) == 0:
        raise ValueError("the attack run holds no adversarial examples")
    channels = int(adv.x_adv.shape[1])
    if channels not in (1, 3):
        raise ValueError(f"PNG export needs 1 (grey) or 3 (RGB) channels; the run's images have {channels}")
    folder = Path(folder)
    config = dict(adv.meta.get("config") or {})
    norm_name, eps = config.get("norm"), adv.meta.get("resolved_eps")
    if within_eps and (norm_name != "linf" or eps is None):
        raise ValueError(f"within_eps keeps δ in an L∞ ball; the run's norm is {norm_name!r} (eps {eps!r})")
    info = dataset_info(adv.meta)
    folders = _class_folder_names(adv.label, info, class_names)
    names = _image_names(adv, info)
    identity = _run_identity(adv, within_eps, folders)
    _check_resumable(folder, identity)
    if not (folder / MANIFEST_NAME).is_file():  # marks the folder as this export's before any PNG is written
        started = {"format": PNG_EXPORT_FORMAT, "version": PNG_EXPORT_VERSION, "identity": identity, "complete": False}
        atomic_write_text(folder / MANIFEST_NAME, json.dumps(started, indent=1, default=str) + "\n")
    levels = quantize_within_ball(adv.x, adv.x_adv, float(eps)) if within_eps else quantize(adv.x_adv)

    rows, written = [], 0
    for i in range(len(adv)):
        label = int(adv.label[i])
        relative = f"{folders[label]}/{names[i]}.png"
        path = folder / relative
        if not path.is_file():
            atomic_write(path, lambda fh, image=levels[i]: _save_png(image, fh))
            written += 1
        index = int(adv.index[i])
        source = info.files[index] if info.files is not None and index < len(info.files) else ""
        rows.append({"file": relative, "index": index, "label": label, "class": folders[label], "source": source})

    quantization: dict[str, Any] = {"rounding": ROUNDING, "within_eps": bool(within_eps), "range": [0.0, 1.0]}
    if norm_name is not None:
        norm = build_norm(norm_name)
        before = norm.norms(adv.x_adv.float() - adv.x.float())
        after = norm.norms(levels.float() / 255.0 - adv.x.float())
        outside = after > float(eps) + BALL_TOLERANCE if eps is not None else torch.zeros_like(after, dtype=torch.bool)
        for row, b, a, o in zip(rows, before.tolist(), after.tolist(), outside.tolist()):
            row.update(delta_norm=b, delta_norm_png=a, outside_eps=int(o))
        quantization.update(
            norm=norm_name,
            eps=eps,
            max_delta_norm=float(before.max()),
            max_delta_norm_png=float(after.max()),
            num_outside_eps=int(outside.sum()),
            max_excess=max(0.0, float(after.max()) - float(eps)) if eps is not None else None,
        )
    class_index = {name: i for i, name in enumerate(folders)}
    atomic_write_text(folder / CLASS_INDEX_NAME, json.dumps(class_index, indent=1) + "\n")
    height, width = (int(s) for s in adv.x_adv.shape[-2:])
    manifest = {
        "format": PNG_EXPORT_FORMAT,
        "version": PNG_EXPORT_VERSION,
        "run": adv.meta.get("name"),
        "source": "+".join(adv.meta.get("source_names") or []) or None,
        "sources": adv.meta.get("sources"),
        "preset": adv.meta.get("attack"),
        "eps": eps,
        "norm": norm_name,
        "steps": adv.meta.get("steps"),
        "seed": adv.meta.get("seed"),
        "num_images": len(adv),
        "image_shape": [channels, height, width],
        "num_classes": len(folders),
        "num_class_folders": len(set(adv.label.tolist())),
        "class_folders": (
            "class_names given"
            if class_names is not None
            else "class names of the run's DataModule"
            if info.class_names
            else "label index"
        ),
        "class_names_note": info.note,
        "quantization": quantization,
        "read_back": (
            f"ImageFolderDataModule(root=<this folder>, val_dir='.', layout='class_folders', "
            f"class_index=<this folder>/{CLASS_INDEX_NAME}, image_size={height}, eval_resize='resize')"
            + ("" if height == width else " (the module serves square images; these are not)")
            + ("; it serves 3 channels (grey PNGs are read as RGB)" if channels == 1 else "")
        ),
        "written_this_export": written,
        "identity": identity,
        "complete": True,
    }
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(folder / MANIFEST_CSV_NAME, buffer.getvalue())
    atomic_write_text(folder / MANIFEST_NAME, json.dumps(manifest, indent=1, default=str) + "\n")
    return manifest


# ============================================================================================ command line
def build_parser(prog: str = "lit-advgame export") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Write a classifier file (weights and metadata) from any model: a Lightning .ckpt of a lit_advgame "
            "training module (ensembles and smoothing included), a classifier file, or a model spec given as a "
            "JSON/YAML mapping or a .json/.yaml file ({arch, weights}: registry or torchvision:<name> "
            "architectures, torchvision weights by name, robustness checkpoints). With --adversarial: write a "
            "predict run's adversarial examples as 8-bit PNGs <OUT>/<class>/<name>.png with class_index.json "
            "and manifest.json/.csv (resumable; rounding as the IR official code, checked against the eps-ball)."
        ),
        epilog=(
            "Examples: lit-advgame export runs/x/version_0/checkpoints/last.ckpt x.pt | lit-advgame export "
            "'{arch: \"torchvision:resnet34\", weights: IMAGENET1K_V1}' rn34.pt --input-shape 3 224 224 | "
            "lit-advgame export --adversarial runs/attacks/pgd pngs/pgd"
        ),
    )
    parser.add_argument(
        "source", help="model (checkpoint, classifier file, spec) or, with --adversarial, a predict run"
    )
    parser.add_argument("out", help="output classifier file (e.g. checkpoints/x.pt) or, with --adversarial, a folder")
    parser.add_argument(
        "--adversarial", action="store_true", help="SOURCE is a predict run's output folder or merged file: write PNGs"
    )
    model = parser.add_argument_group("classifier file")
    model.add_argument(
        "--data-class",
        default=None,
        help="DataModule class path whose val/test accuracy is stored (default: a checkpoint's own, else digits)",
    )
    model.add_argument("--data-args", default=None, help="its init arguments as a JSON/YAML mapping")
    model.add_argument("--input-shape", type=int, nargs=3, default=None, metavar=("C", "H", "W"), help="for a spec")
    model.add_argument("--num-classes", type=int, default=None, help="for a spec without named weights or data")
    model.add_argument("--no-metrics", action="store_true", help="do not measure the clean accuracy on the data")
    pngs = parser.add_argument_group("adversarial PNGs")
    pngs.add_argument("--class-names", default=None, help="a file with one class folder name per line, in index order")
    pngs.add_argument(
        "--within-eps",
        action="store_true",
        help="L-inf runs: take the nearest 8-bit level inside the eps-ball (default: round, as the IR code)",
    )
    return parser


def run(args: argparse.Namespace) -> str:
    """Do what the parsed command line asks; returns the line to print."""
    if args.adversarial:
        used = [
            flag
            for flag, value in (
                ("--data-class", args.data_class),
                ("--data-args", args.data_args),
                ("--input-shape", args.input_shape),
                ("--num-classes", args.num_classes),
            )
            if value is not None
        ]
        if used:
            raise ValueError(f"{', '.join(used)} apply to classifier files, not to --adversarial")
        names = None
        if args.class_names is not None:
            names = [line.strip() for line in Path(args.class_names).read_text().splitlines() if line.strip()]
        manifest = export_adversarial_pngs(args.source, args.out, class_names=names, within_eps=args.within_eps)
        q = manifest["quantization"]
        check = ""
        if q.get("eps") is not None:
            check = (
                f"; max ‖δ‖ after quantization {q['max_delta_norm_png']:.6g} (ε {q['eps']:.6g}), "
                f"{q['num_outside_eps']} outside the ε-ball"
            )
            if q["num_outside_eps"] and q.get("norm") == "linf" and not args.within_eps:
                check += " by < 0.5/255 (rounding; --within-eps keeps them inside)"
        return (
            f"{args.out}: {manifest['num_images']} PNGs ({manifest['written_this_export']} written now) in "
            f"{manifest['num_class_folders']} class folders{check}"
        )
    if args.class_names is not None or args.within_eps:
        raise ValueError("--class-names and --within-eps apply to --adversarial")
    data_args = None if args.data_args is None else _mapping(args.data_args, "--data-args")
    metrics = export_model(
        parse_model_spec(args.source),
        args.out,
        data_class=args.data_class,
        data_args=data_args,
        input_shape=args.input_shape,
        num_classes=args.num_classes,
        metrics=not args.no_metrics,
    )
    size = Path(args.out).stat().st_size
    return f"{args.out}: {size / 1024:.0f} KiB" + "".join(f", {k}={v:.4f}" for k, v in metrics.items())


def main(argv: Sequence[str] | None = None, prog: str = "lit-advgame export") -> None:
    """Entry point of ``lit-advgame export`` and ``python -m lit_advgame.predict.export``; a user error prints
    ``error: <message>`` and exits with status 2 (:mod:`lit_advgame.utils.errors`)."""
    from lit_advgame.utils.errors import run_reporting_user_errors

    args = build_parser(prog).parse_args(argv)
    print(run_reporting_user_errors(lambda: run(args)))


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:], prog="python -m lit_advgame.predict.export")
