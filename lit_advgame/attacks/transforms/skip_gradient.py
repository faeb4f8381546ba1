"""SGM: skip gradient method (Wu et al., ICLR 2020, "Skip connections matter"; IR paper Section 4).

In a residual block z_out = z + f(z), SGM back-propagates through the residual branch f with a
decay γ ∈ [0, 1] and through the skip connection unchanged: ∂z_out/∂z = I + γ·∂f/∂z.

How the official code (``codes/utils/util_sgm.py``, same as csdongxian/skip-connections-matter)
does it, and what is kept here:

* It scales the gradient through the ReLU *modules* of each block: by γ per ReLU in BasicBlocks
  (one ReLU on the branch) and by √γ in Bottlenecks / DenseNet layers (two ReLUs on the branch),
  so the branch gets γ in total. We do the same, generically: in each block, the k ReLU calls on
  the branch are each scaled by γ^(1/k) (k counted at run time). The branch ReLUs are those named
  in the block's ``branch_relus`` attribute (lit_advgame's blocks declare them); without it, every
  ReLU call inside the block whose output is not the block's output (torchvision reuses one
  ``relu`` for the branch and after the addition).
* Its hook also fires on the block's ReLU *after* the addition (torchvision shares ``self.relu``),
  which multiplies both paths by γ: a global factor γ^(#blocks) on the input gradient, which its
  second hook (dividing each block's output gradient by its batch std) then undoes. Both only
  rescale each image's input gradient by a positive scalar, which the attack's L1 normalisation
  removes, so we leave the post-addition ReLU alone and skip the std hook (no underflow, no
  coupling between the images of a batch).
* It skips the first block of each ResNet stage (name filter ``'0.relu'``), whose skip path has a
  projection (downsample). We skip blocks whose ``downsample``/``shortcut`` is anything but an
  identity (``None``, ``nn.Identity`` or an empty ``nn.Sequential``): SGM acts on identity
  skips. (The name filter also skipped RN-18/34's ``layer1.0`` and RN-152's
  ``layer3.{10,20,30}``, which look accidental.) DenseNet: every dense layer (its new features
  are the branch; the concatenation is the skip); transitions are untouched.
* It uses the legacy ``register_backward_hook``, deprecated and wrong on composite modules;
  ``register_full_backward_hook`` fails with ``ReLU(inplace=True)`` (pytorch/pytorch#61519).
  We register a *forward* hook on each ReLU module that puts a *tensor* hook on the ReLU's
  output; that works with in-place ReLUs (the hook sits on the output after the in-place op,
  and scaling the output gradient scales the input gradient, ReLU's backward being linear).

Skip blocks are ``torchvision.models.resnet.BasicBlock``/``Bottleneck``,
``torchvision.models.densenet._DenseLayer`` and any module with ``is_skip_block = True``
(lit_advgame's blocks). Their ReLUs must be ``nn.ReLU`` modules (``F.relu`` cannot be hooked).
All module hooks are removed when the context exits, also after an error.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from torch import nn

from lit_advgame.attacks.transforms.base import Transform
from lit_advgame.utils.checks import check_positive


def _torchvision_block_types() -> tuple[type, ...]:
    try:
        from torchvision.models.densenet import _DenseLayer
        from torchvision.models.resnet import BasicBlock, Bottleneck
    except ImportError:  # pragma: no cover - torchvision is a dependency
        return ()
    return (BasicBlock, Bottleneck, _DenseLayer)


def is_skip_block(module: nn.Module) -> bool:
    """True for torchvision ResNet/DenseNet blocks and modules with ``is_skip_block = True``."""
    return isinstance(module, _torchvision_block_types()) or getattr(module, "is_skip_block", False) is True


def has_projection_skip(module: nn.Module) -> bool:
    """True when the block's ``downsample`` or ``shortcut`` is a module other than an identity
    (``nn.Identity`` or an empty ``nn.Sequential``): a projection or subsampling skip path."""
    for attr in ("downsample", "shortcut"):
        sub = getattr(module, attr, None)
        if isinstance(sub, nn.Identity) or (isinstance(sub, nn.Sequential) and len(sub) == 0):
            continue
        if isinstance(sub, nn.Module):
            return True
    return False


def declared_branch_relus(name: str, block: nn.Module) -> set[int] | None:
    """ids of the ReLU modules named in ``block.branch_relus``, or ``None`` when not declared."""
    names = getattr(block, "branch_relus", None)
    if names is None:
        return None
    if isinstance(names, str) or not all(isinstance(n, str) for n in names) or len(names) == 0:
        raise ValueError(f"SGM: {name!r}.branch_relus must be a non-empty list of submodule names; got {names!r}")
    ids = set()
    for relu_name in names:
        try:
            relu = block.get_submodule(relu_name)
        except AttributeError:
            relu = None
        if not isinstance(relu, nn.ReLU):
            raise ValueError(f"SGM: {name!r}.branch_relus names {relu_name!r}, which is not an nn.ReLU submodule")
        ids.add(id(relu))
    return ids


def find_skip_blocks(models: Sequence[nn.Module]) -> list[tuple[str, nn.Module]]:
    """(qualified name, block) for every identity-skip block of ``models``.

    Raises ``ValueError`` when there is none, or when a block has no ``nn.ReLU`` module.
    """
    blocks, projections = [], 0
    for index, model in enumerate(models):
        prefix = f"model[{index}]." if len(models) > 1 else ""
        for name, module in model.named_modules():
            if not is_skip_block(module):
                continue
            if has_projection_skip(module):
                projections += 1
                continue
            declared_branch_relus(prefix + name, module)
            if not any(isinstance(sub, nn.ReLU) for sub in module.modules()):
                raise ValueError(
                    f"SGM: skip block {prefix + name!r} ({type(module).__name__}) contains no nn.ReLU module; "
                    "SGM scales gradients through ReLU modules, so use nn.ReLU instead of F.relu"
                )
            blocks.append((prefix + name, module))
    if not blocks:
        detail = f" ({projections} block(s) with projection skips are excluded)" if projections else ""
        raise ValueError(
            "SGM needs a model with identity skip connections (torchvision BasicBlock/Bottleneck/_DenseLayer "
            f"or modules with is_skip_block = True); found none{detail}"
        )
    return blocks


class _ReluCall:
    """One ReLU call inside a block; its gradient scale is set when the block's forward ends."""

    __slots__ = ("module_id", "output", "scale")

    def __init__(self, module: nn.Module, output: torch.Tensor) -> None:
        self.module_id = id(module)
        self.output: torch.Tensor | None = output
        self.scale = 1.0

    def hook(self, grad: torch.Tensor) -> torch.Tensor:
        return grad * self.scale


def _same_tensor(a: torch.Tensor, b: object) -> bool:
    return a is b or (
        isinstance(b, torch.Tensor) and a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()
    )


class _SkipGradientHooks:
    """Module hooks implementing SGM on the given blocks while active."""

    def __init__(self, blocks: Sequence[tuple[str, nn.Module]], gamma: float) -> None:
        self.blocks = blocks
        self.gamma = gamma
        self._stack: list[tuple[str, list[_ReluCall]]] = []
        self._declared = {id(block): declared_branch_relus(name, block) for name, block in blocks}

    def _relu_hook(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if not self._stack or not isinstance(output, torch.Tensor):
            return
        call = _ReluCall(module, output)
        if output.requires_grad:
            output.register_hook(call.hook)
        self._stack[-1][1].append(call)

    def _enter_block(self, name: str):
        def pre_hook(module: nn.Module, inputs: tuple) -> None:
            self._stack.append((name, []))

        return pre_hook

    def _exit_block(self, module: nn.Module, inputs: tuple, output: object) -> None:
        name, calls = self._stack.pop()
        declared = self._declared.get(id(module))
        if declared is not None:
            branch = [c for c in calls if c.module_id in declared]
        else:
            branch = [c for c in calls if not _same_tensor(c.output, output)]
        if not branch:
            raise ValueError(f"SGM: skip block {name!r} applies no nn.ReLU module on its residual branch")
        for c in branch:
            c.scale = self.gamma ** (1.0 / len(branch))
        for c in calls:
            c.output = None  # the ReLU after the addition keeps scale 1; drop tensor references

    @contextlib.contextmanager
    def activate(self) -> Iterator[None]:
        handles = []
        try:
            relus = {}
            for name, block in self.blocks:
                handles.append(block.register_forward_pre_hook(self._enter_block(name)))
                handles.append(block.register_forward_hook(self._exit_block))
                for sub in block.modules():
                    if isinstance(sub, nn.ReLU):
                        relus[id(sub)] = sub
            for relu in relus.values():
                handles.append(relu.register_forward_hook(self._relu_hook))
            yield
        finally:
            for handle in handles:
                handle.remove()
            self._stack.clear()


class SkipGradient(Transform):
    """SGM with residual-gradient decay ``gamma`` (SGM paper: 0.2 for ResNets, 0.5 for DenseNets).

    ``gamma = 1`` leaves gradients unchanged (the hooks still run and multiply by 1.0).
    """

    def __init__(self, gamma: float = 0.2) -> None:
        check_positive(gamma, "gamma (SGM decay)", allow_zero=True)
        if gamma > 1:
            raise ValueError(f"gamma (SGM decay) must be in [0, 1]; got {gamma!r}")
        self.gamma = float(gamma)

    def check_model(self, models: Sequence[nn.Module]) -> None:
        find_skip_blocks(models)

    def model_context(self, models: Sequence[nn.Module]):
        return _SkipGradientHooks(find_skip_blocks(models), self.gamma).activate()

    def __repr__(self) -> str:
        return f"SkipGradient(gamma={self.gamma})"
