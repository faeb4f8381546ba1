"""Helpers shared by the interaction callbacks: model access, the fixed probe set, grad mode, cost counting.

Model access (a small contract with the LightningModule): the callbacks evaluate
``pl_module.model``, the pixel-space classifier (a :class:`~lit_advgame.models.NormalizedModel`
for lit_advgame's :class:`~lit_advgame.training.base.ClassifierModule`, or an
:class:`~lit_advgame.ensembles.EnsembleModel` for ensembles). Ensembles are recognised by a
``members`` attribute (a sequence of member classifiers), used by the transferability callback.

Probe set: a fixed, seeded subset chosen once (at ``setup``) from the DataModule's
``probe_set(n, split, seed)``, or the first ``n`` of user-given tensors, and kept on the CPU; a
copy is moved to the model's device when first used on it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from lit_advgame.utils.checks import check_images, check_labels


def classifier_of(pl_module: pl.LightningModule, owner: str) -> nn.Module:
    """The pixel-space classifier ``pl_module.model`` (clear error when the module has none)."""
    model = getattr(pl_module, "model", None)
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"{owner} evaluates the LightningModule's classifier `pl_module.model` (an nn.Module taking images in "
            f"[0, 1], as lit_advgame's ClassifierModule provides); {type(pl_module).__name__} has "
            f"{'no `model` attribute' if model is None else f'model of type {type(model).__name__}'}"
        )
    return model


def members_of(model: nn.Module) -> list[nn.Module] | None:
    """The members of an ensemble classifier (its ``members`` attribute), or ``None`` for a single model."""
    members = getattr(model, "members", None)
    if members is None:
        return None
    if isinstance(members, nn.Module) and not isinstance(members, nn.ModuleList):
        raise TypeError(f"model.members must be a sequence of nn.Module; got {type(members).__name__}")
    members = list(members)
    for i, member in enumerate(members):
        if not isinstance(member, nn.Module):
            raise TypeError(f"model.members[{i}] must be an nn.Module; got {type(member).__name__}")
    return members


def module_device(model: nn.Module) -> torch.device:
    """Device of the first parameter (or buffer) of ``model`` (CPU when it has none)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def batched_logits(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``model(x)`` in chunks of ``batch_size`` images, without gradients."""
    with torch.no_grad():
        return torch.cat([model(x[s : s + batch_size]) for s in range(0, x.shape[0], batch_size)])


def check_probe_tensors(x: Any, y: Any, owner: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate user-given probe tensors ``(x, y)`` and return CPU copies."""
    if (x is None) != (y is None):
        raise ValueError(f"{owner}: give both probe_x and probe_y (or neither, to draw probes from the DataModule)")
    check_images(x, "probe_x")
    check_labels(y, x.shape[0], None, "probe_y")
    return x.detach().cpu().clone(), y.detach().cpu().clone()


def select_probe_set(
    trainer: pl.Trainer,
    size: int,
    split: str,
    seed: int,
    owner: str,
    given: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed probe set ``(x, y)`` on the CPU: the first ``size`` given examples, or ``datamodule.probe_set``."""
    if given is not None:
        x, y = given
        if size > x.shape[0]:
            raise ValueError(f"{owner}: probe_size={size} is larger than the {x.shape[0]} given probe examples")
        return x[:size], y[:size]
    datamodule = getattr(trainer, "datamodule", None)
    if datamodule is None or not callable(getattr(datamodule, "probe_set", None)):
        raise ValueError(
            f"{owner} needs probe examples: fit with a lit_advgame DataModule (it provides probe_set(n, split, seed)) "
            "or pass probe_x and probe_y to the callback"
        )
    try:
        x, y = datamodule.probe_set(size, split=split, seed=seed)
    except ValueError as err:
        raise ValueError(
            f"{owner}: probe_size={size} cannot be drawn from the {split!r} split ({err}); lower probe_size or use "
            "another probe_split"
        ) from err
    return x.detach().cpu(), y.detach().cpu()


@contextlib.contextmanager
def autograd_allowed() -> Iterator[None]:
    """Leave Lightning's inference mode and enable grad, so attacks can differentiate w.r.t. inputs.

    Lightning runs validation under ``torch.inference_mode()`` (``Trainer(inference_mode=True)``,
    the default) or ``torch.no_grad()``. Tensors created inside inference mode can never enter
    autograd, so all callback work (including moving the probes to the device) happens inside this
    context, where new tensors are ordinary ones; the model's parameters were created outside
    inference mode and are usable as they are.
    """
    with torch.inference_mode(False), torch.enable_grad():
        yield


class ForwardCounter:
    """Counts images passed through modules (forward hooks on each, removed on exit).

    An ensemble's forward counts once per member when the members are the hooked modules.
    """

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        self.modules = list(modules)
        self.count = 0
        self._handles: list[Any] = []

    def _hook(self, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        if inputs and isinstance(inputs[0], torch.Tensor) and inputs[0].dim() > 0:
            self.count += int(inputs[0].shape[0])

    def __enter__(self) -> ForwardCounter:
        self._handles = [module.register_forward_hook(self._hook) for module in self.modules]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
