"""Load MadryLab ``robustness`` checkpoints without the library (Engstrom et al. 2019;
the Salman et al. 2020 robust ImageNet models and the MadryLab CIFAR-10 models).

Format (``robustness/train.py``, ``model_utils.py``): a dict with the state dict of
``DataParallel(AttackerModel)`` under ``'model'`` (older files: ``'state_dict'``), next to
``'optimizer'``, ``'schedule'``, ``'epoch'``... Its keys are

* ``module.model.<arch keys>``: the classifier (``module.model.model.<arch keys>`` when the
  network was wrapped in ``DummyModel``, e.g. the torchvision-based transfer architectures);
* ``module.attacker.model.<arch keys>``: a duplicate of the classifier (same module object);
* ``module.normalizer.new_mean`` / ``new_std`` (shape [3, 1, 1]) and the attacker's copies
  ``module.attacker.normalize.new_mean`` / ``new_std``.

``robustness``'s ``InputNormalize`` computes ``(clamp(x, 0, 1) - mean) / std``; the loaded model
reproduces it with :class:`~lit_advgame.models.normalize.NormalizedModel` and ``clamp=True`` by
default (pass ``clamp=False`` for Gaussian-noised inputs of randomized smoothing, Cohen et al.
2019, which must not be clipped).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from lit_advgame.models.normalize import NormalizedModel
from lit_advgame.models.registry import (
    TORCHVISION_PREFIX,
    available_models,
    build_net,
    resolve_normalization,
)
from lit_advgame.models.torchvision_models import torchvision_architectures
from lit_advgame.models.weights import (  # the robustness format is read in weights.py; re-exported here
    ATTACKER_NORMALIZER_KEYS,
    ATTACKER_PREFIX,
    MODEL_PREFIX,
    NORMALIZER_KEYS,
    extract_robustness_state,
    find_head_key,
    is_robustness_state,
    key_prefixes,
    load_net_state,
    pick_state_dict,
    read_checkpoint,
)

__all__ = [
    "ATTACKER_NORMALIZER_KEYS",
    "ATTACKER_PREFIX",
    "MODEL_PREFIX",
    "NORMALIZER_KEYS",
    "SALMAN_ALIASES",
    "extract_robustness_state",
    "is_robustness_state",
    "load_robustness_checkpoint",
    "resolve_arch",
]

# Architecture names of the Salman et al. (2020) model list that are not torchvision names
# (microsoft/robust-models-transfer, src/main.py).
SALMAN_ALIASES = {
    "densenet": "densenet161",
    "mnasnet": "mnasnet1_0",
    "mobilenet": "mobilenet_v2",
    "shufflenet": "shufflenet_v2_x1_0",
}


def resolve_arch(arch: str) -> str:
    """Registry name for ``arch``: registered names and ``torchvision:<arch>`` as they are; bare
    torchvision names (``resnet50``, ``wide_resnet50_2``) and the Salman aliases (``densenet``,
    ``mnasnet``, ``mobilenet``, ``shufflenet``) map to ``torchvision:<arch>``."""
    if not isinstance(arch, str):
        raise TypeError(f"arch must be a string; got {type(arch).__name__}")
    if arch in available_models() or arch.startswith(TORCHVISION_PREFIX):
        return arch
    if arch in SALMAN_ALIASES:
        return TORCHVISION_PREFIX + SALMAN_ALIASES[arch]
    if arch in torchvision_architectures():
        return TORCHVISION_PREFIX + arch
    return arch  # build_net raises the unknown-name error


def _guess_num_classes(state: Mapping[str, torch.Tensor]) -> int:
    """Rows of the last 2-D weight in the state dict (the head of the usual architectures)."""
    guess = None
    for key, value in state.items():
        if key.endswith("weight") and value.dim() == 2:
            guess = value.shape[0]
    return int(guess) if guess is not None and guess >= 2 else 2


def load_robustness_checkpoint(
    path: str | os.PathLike,
    arch: str,
    num_classes: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    clamp: bool = True,
    trusted: bool = False,
    map_location: Any = "cpu",
    **arch_kwargs: Any,
) -> NormalizedModel:
    """Load a MadryLab ``robustness`` checkpoint into ``NormalizedModel(net, mean, std, clamp)``.

    Args:
        path: the checkpoint file (``.pt`` / ``.ckpt``).
        arch: architecture: a registry name (``"torchvision:resnet50"``,
            ``"robustness_cifar:resnet50"``, ``"wide_resnet50_4"``), a bare torchvision name
            (``"resnet50"``, ``"wide_resnet50_2"``) or a Salman et al. alias (``"densenet"``...).
        num_classes: number of classes; inferred from the classifier head when ``None``.
        mean, std: normalization constants; by default those stored in the checkpoint
            (``module.normalizer.new_mean/new_std``). If given and they differ from the stored
            ones, a ``ValueError`` is raised. Required if the checkpoint stores none.
        clamp: clamp inputs to [0, 1] before normalizing, as ``robustness``'s ``InputNormalize``.
        trusted: if the safe ``torch.load(weights_only=True)`` fails (pickled non-tensor objects,
            e.g. dill globals), retry with ``weights_only=False`` (and ``dill`` if installed).
            Only for files from a trusted source: unpickling can execute arbitrary code.
        map_location: passed to ``torch.load``; if it is a device (string or ``torch.device``)
            the returned model is moved there.
        **arch_kwargs: architecture options passed to the builder (e.g. ``wm`` of
            ``robustness_cifar:*``).

    Returns:
        The model in eval mode. Its weights are loaded strictly.
    """
    source = f"robustness checkpoint {str(path)!r}"
    obj = read_checkpoint(path, trusted=trusted, map_location=map_location, what="robustness checkpoint")
    state = pick_state_dict(obj, source, keys=("model", "state_dict"))
    if not is_robustness_state(state):
        raise ValueError(
            f"{source}: unknown layout: expected keys starting with '{MODEL_PREFIX}' (and "
            f"'{ATTACKER_PREFIX}', '{NORMALIZER_KEYS[0]}'); key prefixes found: {key_prefixes(state)}. "
            f"For plain, NormalizedModel or Lightning state dicts use build_model(..., weights=path)"
        )
    net_state, file_mean, file_std = extract_robustness_state(state, source)
    if mean is None and std is None and file_mean is None:
        raise ValueError(f"{source}: stores no normalizer ('{NORMALIZER_KEYS[0]}'); pass mean= and std= explicitly")
    in_channels = len(mean) if mean is not None else int(file_mean.numel())
    mean_l, std_l = resolve_normalization(mean, std, in_channels, file_mean, file_std, source=source)

    name = resolve_arch(arch)
    guess = num_classes if num_classes is not None else _guess_num_classes(net_state)
    net = build_net(name, guess, in_channels, **arch_kwargs)
    head = find_head_key(net)
    if num_classes is None and head is not None and head in net_state:
        found = int(net_state[head].shape[0])
        if found != guess:
            if found < 2:
                raise ValueError(f"{source}: classifier head {head!r} has {found} output(s); need >= 2")
            net = build_net(name, found, in_channels, **arch_kwargs)
        num_classes = found
    elif num_classes is None:
        num_classes = guess
    load_net_state(net, net_state, num_classes, f"{source} (arch {name!r})")

    model = NormalizedModel(net, mean_l, std_l, clamp=clamp)
    if isinstance(map_location, (str, torch.device)):
        model = model.to(map_location)
    return model.eval()
