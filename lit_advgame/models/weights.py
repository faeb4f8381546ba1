"""Reading weight files safely and loading them strictly into a network.

Files are read with ``torch.load(path, map_location=..., weights_only=True)``: only tensors
and plain containers are unpickled, so a file cannot run code when loaded. The unsafe
``weights_only=False`` path is taken only when the caller says the file is trusted.
"""

from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

# MadryLab ``robustness`` checkpoints (see :mod:`lit_advgame.models.robustness_loader` for the format)
MODEL_PREFIX = "module.model."
ATTACKER_PREFIX = "module.attacker.model."
NORMALIZER_KEYS = ("module.normalizer.new_mean", "module.normalizer.new_std")
ATTACKER_NORMALIZER_KEYS = ("module.attacker.normalize.new_mean", "module.attacker.normalize.new_std")


class UnsafeCheckpointError(ValueError):
    """The file holds objects that ``torch.load(weights_only=True)`` refuses to unpickle."""


def read_checkpoint(
    path: str | os.PathLike, *, trusted: bool = False, map_location: Any = "cpu", what: str = "weights file"
) -> Any:
    """Load ``path`` with ``torch.load(weights_only=True)``.

    If that fails (arbitrary pickled objects, e.g. ``argparse.Namespace`` or dill globals),
    raise :class:`UnsafeCheckpointError` unless ``trusted=True``, in which case retry with
    ``weights_only=False`` and, if that fails too and ``dill`` is importable, with
    ``pickle_module=dill`` (MadryLab ``robustness`` saves with dill).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {str(path)!r}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        safe_error = err
    except Exception as err:  # noqa: BLE001 - corrupt files fail in many ways inside the unpickler
        raise ValueError(
            f"could not read {what} {str(path)!r} (corrupt or not a torch.save file): {type(err).__name__}: {err}"
        ) from err
    first_line = str(safe_error).strip().splitlines()[0] if str(safe_error).strip() else type(safe_error).__name__
    detail = [ln.strip() for ln in str(safe_error).splitlines() if "Unsupported global" in ln or "load key" in ln]
    if not trusted:
        raise UnsafeCheckpointError(
            f"{what} {str(path)!r} could not be loaded safely with torch.load(weights_only=True): "
            f"{'; '.join(detail) or first_line}. It is corrupt or holds pickled objects other than tensors and "
            f"plain containers. Loading it otherwise can execute arbitrary code: only if the file comes from "
            f"a source you trust, pass trusted=True."
        ) from safe_error
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # noqa: BLE001 - reported below with the dill attempt
        unsafe_error = err
    try:
        import dill  # type: ignore[import-not-found]
    except ImportError:
        dill = None
    if dill is not None:
        try:
            return torch.load(path, map_location=map_location, weights_only=False, pickle_module=dill)
        except Exception as err:  # noqa: BLE001
            unsafe_error = err
    raise ValueError(
        f"could not read {what} {str(path)!r} even with weights_only=False"
        f"{' and pickle_module=dill' if dill is not None else ' (dill is not installed)'}: "
        f"{type(unsafe_error).__name__}: {unsafe_error}"
    ) from unsafe_error


def is_tensor_dict(obj: Any) -> bool:
    """True for a non-empty mapping from strings to tensors (a state dict)."""
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def key_prefixes(keys: Any, depth: int = 2, limit: int = 8) -> list[str]:
    """Distinct leading dotted components of ``keys`` (for error messages)."""
    seen: list[str] = []
    for key in keys:
        prefix = ".".join(str(key).split(".")[:depth])
        if prefix not in seen:
            seen.append(prefix)
        if len(seen) >= limit:
            break
    return seen


def pick_state_dict(obj: Any, source: str, keys: tuple[str, ...] = ("model", "state_dict")) -> dict[str, torch.Tensor]:
    """Return the state dict inside a loaded checkpoint.

    ``obj`` is either a state dict itself, an ``nn.Module`` (only possible for trusted
    pickles) or a dict holding one under the first of ``keys`` that is present.
    """
    if isinstance(obj, nn.Module):
        return dict(obj.state_dict())
    if is_tensor_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in keys:
            if key in obj:
                inner = obj[key]
                if isinstance(inner, nn.Module):
                    return dict(inner.state_dict())
                if is_tensor_dict(inner):
                    return dict(inner)
                raise ValueError(
                    f"{source}: entry {key!r} is not a state dict (a mapping of names to tensors); "
                    f"got {type(inner).__name__}"
                )
        raise ValueError(
            f"{source}: unknown checkpoint layout; expected a state dict or a dict with one of the keys "
            f"{list(keys)}; found top-level keys {sorted(map(str, obj))[:10]}"
        )
    raise ValueError(f"{source}: unknown checkpoint layout; expected a dict, got {type(obj).__name__}")


def find_head_key(net: nn.Module) -> str | None:
    """Name of the classifier head's weight: the last ``nn.Linear`` registered in ``net``
    (the last ``nn.Conv2d`` if there is no linear layer, e.g. SqueezeNet)."""
    for kind in (nn.Linear, nn.Conv2d):
        last = None
        for name, module in net.named_modules():
            if isinstance(module, kind) and isinstance(getattr(module, "weight", None), torch.Tensor):
                last = name
        if last is not None:
            return f"{last}.weight" if last else "weight"
    return None


def _find_prefix(state: Mapping[str, torch.Tensor], expected: list[str], source: str) -> str:
    """The prefix ``p`` such that ``p + key`` names the most expected keys in ``state``."""
    anchors = expected[: min(len(expected), 3)]
    candidates: set[str] = set()
    for anchor in anchors:
        for key in state:
            if key == anchor:
                candidates.add("")
            elif key.endswith("." + anchor):
                candidates.add(key[: -len(anchor)])
    scores = {p: sum((p + k) in state for k in expected) for p in candidates}
    best = max(scores.values(), default=0)
    if best == 0:
        raise ValueError(
            f"{source}: unknown layout: none of the network's parameter names (e.g. {expected[:3]}) occur in it. "
            f"Key prefixes found: {key_prefixes(state)}. Is it a checkpoint of another architecture?"
        )
    winners = sorted(p for p, s in scores.items() if s == best)
    if len(winners) > 1:
        raise ValueError(
            f"{source}: ambiguous layout: the network's parameters occur under several prefixes {winners}; "
            f"extract the wanted state dict yourself"
        )
    return winners[0]


def extract_net_state(
    state: Mapping[str, torch.Tensor], net: nn.Module, source: str
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None, torch.Tensor | None]:
    """Find ``net``'s parameters inside ``state`` under whatever prefix they were saved with
    (``""``, ``net.``, ``model.``, ``model.net.``, ``module.``...).

    Returns the state dict for ``net`` and the normalization mean/std if the file holds a
    :class:`NormalizedModel` (``<prefix>normalize.mean`` / ``.std`` next to ``<prefix>net.*``).
    """
    expected = list(net.state_dict().keys())
    prefix = _find_prefix(state, expected, source)
    net_state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    mean = std = None
    if prefix.endswith("net.") and (prefix == "net." or prefix.endswith(".net.")):
        outer = prefix[: -len("net.")]
        mean, std = state.get(outer + "normalize.mean"), state.get(outer + "normalize.std")
    return net_state, mean, std


def load_net_state(net: nn.Module, state: Mapping[str, torch.Tensor], num_classes: int, source: str) -> None:
    """Strictly load ``state`` into ``net`` with clear errors.

    A classifier head of the wrong size is reported with ``num_classes`` and the head shape
    found; other shape mismatches and missing/unexpected keys are listed.
    """
    own = net.state_dict()
    head = find_head_key(net)
    if head is not None and head in state and state[head].dim() >= 1 and state[head].shape[0] != num_classes:
        raise ValueError(
            f"{source}: its classifier head {head!r} has shape {tuple(state[head].shape)} "
            f"({state[head].shape[0]} classes) but num_classes={num_classes}"
        )
    mismatched = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    if mismatched:
        raise ValueError(
            f"{source}: {len(mismatched)} tensor shape(s) do not match the architecture "
            f"(wrong architecture, width or in_channels?): {mismatched[:5]}"
        )
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise ValueError(
            f"{source}: does not match the architecture: {len(missing)} missing key(s) {missing[:5]}, "
            f"{len(unexpected)} unexpected key(s) {unexpected[:5]}"
        )
    net.load_state_dict(state, strict=True)


def is_robustness_state(state: Mapping[str, Any]) -> bool:
    """True if ``state`` has ``robustness``'s ``module.model.`` / ``module.attacker.model.`` keys."""
    return any(k.startswith(MODEL_PREFIX) or k.startswith(ATTACKER_PREFIX) for k in state)


def _strip(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _strip_dummy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if state and all(k.startswith("model.") for k in state):
        return _strip(state, "model.")
    return state


def extract_robustness_state(
    state: Mapping[str, torch.Tensor], source: str = "checkpoint"
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None, torch.Tensor | None]:
    """Split a ``robustness`` state dict into the classifier's state dict and the stored mean/std.

    Keeps the ``module.model.`` keys with the prefix stripped (and one more ``model.`` in the
    ``DummyModel`` case). If the ``module.attacker.model.`` duplicates exist they are compared
    with them and a warning is issued if they differ. Mean/std come from
    ``module.normalizer.new_mean/new_std`` (else the attacker's copies), flattened, or ``None``.
    """
    model_part = _strip_dummy(_strip(state, MODEL_PREFIX))
    attacker_part = _strip_dummy(_strip(state, ATTACKER_PREFIX))
    if not model_part and not attacker_part:
        raise ValueError(
            f"{source}: not a robustness checkpoint: no '{MODEL_PREFIX}' or '{ATTACKER_PREFIX}' keys; "
            f"key prefixes found: {key_prefixes(state)}"
        )
    if model_part and attacker_part:
        differ = sorted(set(model_part) ^ set(attacker_part))
        differ += [
            k
            for k in model_part
            if k in attacker_part
            and (model_part[k].shape != attacker_part[k].shape or not torch.equal(model_part[k], attacker_part[k]))
        ]
        if differ:
            warnings.warn(
                f"{source}: the '{MODEL_PREFIX}' and '{ATTACKER_PREFIX}' copies of the classifier differ "
                f"({len(differ)} key(s), e.g. {differ[:3]}); using '{MODEL_PREFIX}'",
                UserWarning,
                stacklevel=2,
            )
    net_state = model_part or attacker_part
    mean, std = (state.get(k) for k in NORMALIZER_KEYS)
    if mean is None or std is None:
        mean, std = (state.get(k) for k in ATTACKER_NORMALIZER_KEYS)
    if mean is None or std is None:
        mean = std = None
    else:
        mean, std = mean.detach().flatten().cpu(), std.detach().flatten().cpu()
    return net_state, mean, std


def load_weights_into_net(
    net: nn.Module, path: str | os.PathLike, num_classes: int, *, trusted: bool = False
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Load a local weights file into ``net`` (see :func:`~lit_advgame.models.registry.build_model`).

    Returns the normalization mean/std stored in the file, or ``(None, None)``.
    """
    source = f"weights file {str(path)!r}"
    obj = read_checkpoint(path, trusted=trusted, what="weights file")
    state = pick_state_dict(obj, source)
    if is_robustness_state(state):
        net_state, mean, std = extract_robustness_state(state, source)
    else:
        net_state, mean, std = extract_net_state(state, net, source)
    load_net_state(net, net_state, num_classes, source)
    return mean, std
