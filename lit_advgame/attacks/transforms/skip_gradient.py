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
  projection (downsample). We decide by *behaviour* whether a block's skip is an identity, each
  time the block runs (:func:`skip_kind`), not by attribute names such as ``downsample`` or
  ``shortcut``: a residual block has an identity skip iff its output has the shape of its input
  and the autograd graph links the output to the input through parameter-free element-wise
  nodes only (additions and ReLUs, :data:`IDENTITY_PATH_NODES`), i.e. no layer sits on the
  skip path; without an autograd graph (no gradient needed) the shapes alone decide. Blocks
  with a projection (1×1 conv, BN), a subsampling or zero-padding shortcut, however it is
  named, are left alone. On torchvision and CIFAR ResNets this is the official rule (the
  first block of a stage changes the shape). (The name filter also skipped RN-18/34's
  ``layer1.0`` and RN-152's ``layer3.{10,20,30}``, which look accidental.) DenseNet: every
  dense layer (its new features are the branch; the concatenation is the skip), recognised
  as torchvision's ``_DenseLayer`` (whose concatenation is done by its ``_DenseBlock``) or by
  an output whose first channels are exactly its input; transitions are untouched.
* It uses the legacy ``register_backward_hook``, deprecated and wrong on composite modules;
  ``register_full_backward_hook`` fails with ``ReLU(inplace=True)`` (pytorch/pytorch#61519).
  We register a *forward* hook on each ReLU module that puts a *tensor* hook on the ReLU's
  output; that works with in-place ReLUs (the hook sits on the output after the in-place op,
  and scaling the output gradient scales the input gradient, ReLU's backward being linear).

Candidate skip blocks are ``torchvision.models.resnet.BasicBlock``/``Bottleneck``,
``torchvision.models.densenet._DenseLayer`` and any module whose ``is_skip_block`` attribute
(instance or class) is ``True`` (lit_advgame's blocks): :func:`lit_advgame.models.is_skip_block`,
the same rule everywhere. Their ReLUs must be ``nn.ReLU`` modules (``F.relu`` cannot be hooked).
A model without candidates is rejected when the attack is built; one whose candidates all have
projection skips when it first runs (the kinds are only known then). All module hooks are
removed when the context exits, also after an error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from lit_advgame.attacks.model_mode import eval_mode
from lit_advgame.attacks.transforms.base import Transform
from lit_advgame.models.skip_blocks import TORCHVISION_DENSE_LAYER_TYPES, is_skip_block
from lit_advgame.utils.checks import check_positive
from lit_advgame.vocabulary import SkipKind

#: autograd nodes an identity skip path may cross from a residual block's output back to its input
IDENTITY_PATH_NODES = frozenset(
    {"AddBackward0", "ReluBackward0", "ThresholdBackward0", "CloneBackward0", "AliasBackward0", "ViewBackward0"}
)


def _reaches(output: torch.Tensor, x: torch.Tensor) -> bool:
    """Whether ``output``'s autograd graph reaches ``x`` through :data:`IDENTITY_PATH_NODES` only."""
    target = x.grad_fn
    stack, seen = [output.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if target is not None and node is target:
            return True
        if target is None and getattr(node, "variable", None) is x:  # x is a leaf: its AccumulateGrad node
            return True
        if node.name() in IDENTITY_PATH_NODES:
            stack.extend(child for child, _ in node.next_functions)
    return False


def skip_kind(block: nn.Module, inputs: tuple, output: object, name: str = "block") -> SkipKind:
    """How the skip block ``block`` called on ``inputs`` and returning ``output`` skips its branch.

    * ``"concat"``: a dense layer, torchvision's ``_DenseLayer`` or a block whose output starts
      (along channels) with exactly its input;
    * ``"identity"``: output shaped like the input and, when autograd recorded the call, linked
      to the input by parameter-free element-wise nodes only (:data:`IDENTITY_PATH_NODES`);
    * ``"projection"``: anything else (a layer, subsampling or padding on the skip path).
    """
    if isinstance(block, TORCHVISION_DENSE_LAYER_TYPES):
        return "concat"
    x = inputs[0] if len(inputs) == 1 else None
    if not isinstance(x, torch.Tensor) or not isinstance(output, torch.Tensor):
        raise ValueError(
            f"SGM: skip block {name!r} ({type(block).__name__}) must take one tensor and return one tensor; "
            f"got {len(inputs)} input(s) and a {type(output).__name__} output"
        )
    if output.shape == x.shape:
        recorded = output.grad_fn is not None and x.requires_grad  # else no gradient flows through the block
        return "identity" if not recorded or _reaches(output, x) else "projection"
    if (
        output.dim() == x.dim() >= 2
        and output.shape[0] == x.shape[0]
        and output.shape[2:] == x.shape[2:]
        and output.shape[1] > x.shape[1]
        and torch.equal(output[:, : x.shape[1]], x)
    ):
        return "concat"
    return "projection"


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
    """(qualified name, block) for every candidate skip block of ``models`` (:func:`is_skip_block`).

    Whether each one's skip is an identity is decided when it runs (:func:`skip_kind`).
    Raises ``ValueError`` when there is none, or when a block has no ``nn.ReLU`` module.
    """
    blocks = []
    for index, model in enumerate(models):
        prefix = f"model[{index}]." if len(models) > 1 else ""
        for name, module in model.named_modules():
            if not is_skip_block(module):
                continue
            declared_branch_relus(prefix + name, module)
            if not any(isinstance(sub, nn.ReLU) for sub in module.modules()):
                raise ValueError(
                    f"SGM: skip block {prefix + name!r} ({type(module).__name__}) contains no nn.ReLU module; "
                    "SGM scales gradients through ReLU modules, so use nn.ReLU instead of F.relu"
                )
            blocks.append((prefix + name, module))
    if not blocks:
        raise ValueError(
            "SGM needs a model with identity skip connections (torchvision BasicBlock/Bottleneck/_DenseLayer "
            "or modules with is_skip_block = True); found no skip block"
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
        #: the kind (:func:`skip_kind`) of each block that ran while the hooks were active
        self.kinds: dict[str, str] = {}

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
        kind = skip_kind(module, inputs, output, name)
        self.kinds[name] = kind
        if kind == "projection":  # SGM leaves blocks with a projection skip alone (all scales stay 1)
            for c in calls:
                c.output = None
            return
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

    def _check_found(self) -> None:
        if self.kinds and all(kind == "projection" for kind in self.kinds.values()):
            raise ValueError(
                "SGM needs a model with identity skip connections (torchvision BasicBlock/Bottleneck/_DenseLayer "
                f"or modules with is_skip_block = True); found none ({len(self.kinds)} block(s) with projection "
                f"skips are excluded: {', '.join(sorted(self.kinds))})"
            )

    @contextlib.contextmanager
    def activate(self, check: bool = True) -> Iterator[None]:
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
            if check:
                self._check_found()
        finally:
            for handle in handles:
                handle.remove()
            self._stack.clear()


def skip_kinds(models: nn.Module | Sequence[nn.Module], x: torch.Tensor) -> dict[str, str]:
    """The :func:`skip_kind` of every skip block of ``models`` that runs on the images ``x``.

    One forward pass per model with gradients enabled (so the autograd test applies), the models
    in eval mode (their modes restored after). Names are qualified as in :func:`find_skip_blocks`.
    Use it to see which blocks SGM scales (``"identity"`` and ``"concat"`` ones).
    """
    models = [models] if isinstance(models, nn.Module) else list(models)
    hooks = _SkipGradientHooks(find_skip_blocks(models), 1.0)
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.inference_mode(False))
        stack.enter_context(torch.enable_grad())
        stack.enter_context(eval_mode(models))
        stack.enter_context(hooks.activate(check=False))
        probe = x.detach().clone().requires_grad_(True)
        for model in models:
            model(probe)
    return dict(hooks.kinds)


class SkipGradient(Transform):
    """SGM with residual-gradient decay ``gamma`` (SGM paper: 0.2 for ResNets, 0.5 for DenseNets).

    ∂z_out/∂z = I + γ·∂f/∂z through each residual block z_out = z + f(z) (Wu et al., "Skip connections
    matter: on the transferability of adversarial examples generated with ResNets", ICLR 2020).

    ``gamma = 1`` leaves gradients unchanged (the hooks still run and multiply by 1.0). Only
    blocks whose skip is an identity or a concatenation get γ (:func:`skip_kind`, decided at run
    time); a model whose skip blocks all have projection skips raises ``ValueError`` at the first
    step.
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
