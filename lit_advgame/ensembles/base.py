"""The interface of ensemble diversity regularizers and the classification term they share.

A regularizer is called on a clean training batch and returns the members' logits on it (with
their graph, so the classification loss reuses that forward pass) and its weighted penalty.

Loss scaling (``scaling``):

* ``"reference"`` (default): the scaling of the TRS repository (``trainer.py``), so that its
  published coefficients carry over: the classification term is the **sum** of the members'
  batch-mean cross-entropies, similarities are averaged over pairs, TRS smoothness is
  ``2·mean_b ||∇_x CE_mean||²`` of the gradient of the *batch-mean* CE (i.e. per-example
  gradients divided by the batch size) averaged over members. The GAL and ADP baselines of the
  TRS/DVERGE repositories also sum the members' CEs.
* ``"mean"``: a normalized scaling that does not change with N or the batch size: the **mean**
  of the members' cross-entropies, mean pairwise similarities, and smoothness
  ``mean_b ||∇_x CE(f_i(x_b), y_b)||²`` of per-example gradients, averaged over members.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F

from lit_advgame.ensembles.model import EnsembleModel
from lit_advgame.utils.checks import check_choice, check_int, check_positive
from lit_advgame.vocabulary import REGULARIZER_SCALINGS

SCALINGS = REGULARIZER_SCALINGS


@dataclass
class RegularizerOutput:
    """What a regularizer returns for one clean batch.

    Attributes:
        member_logits: (N, B, K) members' logits on the (possibly noise-augmented) batch, with graph.
        penalty: scalar, the weighted regularizer added to the classification loss.
        terms: unweighted, detached scalars to log (e.g. ``{"sim": ..., "smooth": ...}``).
        inputs: the inputs ``member_logits`` were computed on (differs from x only with input noise).
    """

    member_logits: torch.Tensor
    penalty: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    inputs: torch.Tensor | None = None


@dataclass(frozen=True)
class RegularizerStep:
    """Where training stands when a regularizer is called: ``epoch`` of ``max_epochs`` (``None``: unbounded)
    and the ``generator`` of this step's randomness (``None``: torch's global RNG)."""

    epoch: int = 0
    max_epochs: int | None = None
    generator: torch.Generator | None = None


def member_cross_entropy(member_logits: torch.Tensor, y: torch.Tensor, scaling: str = "reference") -> torch.Tensor:
    """Classification term: sum (``"reference"``) or mean (``"mean"``) of the members' batch-mean CEs.

    Args:
        member_logits: (N, B, K) logits.
        y: (B,) labels.
        scaling: ``"reference"`` or ``"mean"``.
    """
    check_choice(scaling, "scaling", SCALINGS)
    num, batch = member_logits.shape[:2]
    total = F.cross_entropy(member_logits.flatten(0, 1), y.repeat(num), reduction="sum") / batch
    return total if scaling == "reference" else total / num


@dataclass
class DiversityRegularizer:
    """Base class: no diversity term (a plain ensemble trained on the members' cross-entropies).

    Regularizers are dataclasses: the base declares the two arguments every regularizer takes, subclasses
    add their options as fields (validated in ``__post_init__``), set :attr:`name`, :attr:`min_members`,
    :attr:`term_names` and override :meth:`regularize`.

    Args:
        num_members: ensemble size N (checked against :attr:`min_members`).
        scaling: ``"reference"`` or ``"mean"`` (see the module docstring).
    """

    num_members: int
    scaling: Literal["reference", "mean"] = "reference"

    name: ClassVar[str] = "none"
    min_members: ClassVar[int] = 1
    #: logged terms (without the ``train/`` prefix) this regularizer produces
    term_names: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        num_members = self.num_members
        check_int(num_members, "num_members", minimum=1)
        if num_members < self.min_members:
            raise ValueError(
                f"the {self.name!r} regularizer compares members and needs num_members >= {self.min_members}; "
                f"got num_members={num_members} (use regularizer='none' for a single model)"
            )
        check_choice(self.scaling, "scaling", SCALINGS)

    def _numbers(self, nonnegative: tuple[str, ...] = (), positive: tuple[str, ...] = ()) -> None:
        """Check the named fields are numbers >= 0 (``nonnegative``) or > 0 (``positive``) and store them as floats."""
        for names, allow_zero in ((nonnegative, True), (positive, False)):
            for name in names:
                check_positive(getattr(self, name), name, allow_zero=allow_zero)
                setattr(self, name, float(getattr(self, name)))

    def current_eps(self, epoch: int, max_epochs: int | None) -> float | None:
        """The inner-attack radius at ``epoch`` (only regularizers with a radius schedule have one)."""
        return None

    def check_model(self, model: EnsembleModel) -> None:
        if model.num_members != self.num_members:
            raise ValueError(
                f"the {self.name!r} regularizer was built for {self.num_members} members; "
                f"the ensemble has {model.num_members}"
            )

    def __call__(
        self,
        model: EnsembleModel,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        epoch: int = 0,
        max_epochs: int | None = None,
        generator: torch.Generator | None = None,
    ) -> RegularizerOutput:
        """Members' logits on ``x`` and the weighted penalty, at ``epoch`` of ``max_epochs`` (radius schedules),
        drawing randomness from ``generator`` (the global RNG when ``None``)."""
        self.check_model(model)
        return self.regularize(model, x, y, RegularizerStep(epoch, max_epochs, generator))

    def regularize(
        self, model: EnsembleModel, x: torch.Tensor, y: torch.Tensor, step: RegularizerStep
    ) -> RegularizerOutput:
        """The regularizer proper (subclasses override this; the model is checked): here no penalty."""
        member_logits = model.member_logits(x)
        return RegularizerOutput(member_logits, member_logits.new_zeros(()), {}, x)
