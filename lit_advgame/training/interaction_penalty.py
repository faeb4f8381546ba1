"""Interaction-regularized training: ``Loss = Loss_classification + λ · Loss_interaction`` (Zhang et al., ICLR 2021).

:class:`InteractionPenalty` is an injected component of every training module
(:class:`~lit_advgame.training.base.ClassifierModule`'s ``penalty`` argument, so standard training, adversarial
training, randomized smoothing and ensembles can all use it; in YAML a nested mapping)::

    model:
      class_path: lit_advgame.training.StandardClassifier
      init_args:
        penalty: {weight: 1.0, grid: 4, num_pairs: 4, num_samples: 16}

Each training step it estimates, on the step's clean batch, ``E_{i≠j}|I(i, j)|`` (or the L_Shapley term, or an
order band; :mod:`lit_advgame.interactions.strength`) with the graph into the model's parameters, and adds
``weight ·`` that to the loss. Cost per step: ``batch × units × num_samples × 4`` (pairs) or ``× 2`` (players)
masked forward passes plus their backward (:meth:`InteractionPenalty.forward_passes_per_image`), refused above
``max_forward_passes``; ``num_samples`` trades the penalty's accuracy for speed. The masked inputs run with the
classifier in eval mode (the engine's convention: BatchNorm running statistics, no dropout), so the penalty
does not move BatchNorm statistics. Randomness: a generator seeded per step from ``seed``, the global rank and
the global step (each DDP rank penalizes its own batch with its own stream; a resumed run draws the same
numbers). ``weight = 0`` skips the estimate entirely: training is then exactly plain training.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lit_advgame.interactions.game import InputGame
from lit_advgame.interactions.players import grid_player_map
from lit_advgame.interactions.strength import InteractionStrength, StrengthEstimate
from lit_advgame.utils.checks import check_choice, check_int, check_positive
from lit_advgame.utils.seeding import derive_seed
from lit_advgame.vocabulary import BASELINE_NAMES, IMAGE_VALUES, ImageValue

#: default grid of the penalty's players (4 x 4 = 16 cells: cheap enough for every training step)
DEFAULT_PENALTY_GRID = 4


@dataclass(frozen=True)
class InteractionPenalty(InteractionStrength):
    """The interaction penalty ``weight · E|I(i, j)|`` of a training step (see the module docstring).

    Args:
        weight: λ >= 0 (0: no penalty, the estimate is skipped).
        grid: ``L`` or ``[L_h, L_w]`` grid of players over the image (must fit the image).
        value: value function of the input game (``"log_prob"``, the engine's default, ``"logit"``, ...).
        baseline: what absent cells become: ``"mean"`` (the classifier's normalization mean), ``"zeros"``,
            ``"blur"`` or a per-channel list.
        batch_size: masked inputs per forward pass.
        seed: base seed of the per-step generator.
        **fields of** :class:`~lit_advgame.interactions.strength.InteractionStrength`: ``target``
            (``"interaction"`` or ``"shapley"``), ``num_pairs``, ``num_players``, ``num_samples``, ``order_band``,
            ``pairs``, ``estimator`` (``"plug_in"`` default or ``"split"``), ``sqrt_eps``, ``max_forward_passes``.
    """

    weight: float = 0.0
    grid: int | tuple[int, int] = DEFAULT_PENALTY_GRID
    value: ImageValue = "log_prob"
    baseline: str | list[float] = "mean"
    batch_size: int = 1024
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self.weight, "weight", allow_zero=True)
        object.__setattr__(self, "weight", float(self.weight))
        check_choice(self.value, "value", IMAGE_VALUES)
        if isinstance(self.baseline, str):
            check_choice(self.baseline, "baseline", BASELINE_NAMES)
        elif isinstance(self.baseline, (list, tuple)):
            object.__setattr__(self, "baseline", [float(v) for v in self.baseline])
        if isinstance(self.grid, list):
            object.__setattr__(self, "grid", tuple(self.grid))
        check_int(self.batch_size, "batch_size", minimum=1)
        check_int(self.seed, "seed", minimum=0)

    @classmethod
    def coerce(cls, value: InteractionPenalty | Mapping[str, Any], name: str = "penalty") -> InteractionPenalty:
        """``value`` as a penalty: an :class:`InteractionPenalty` or a mapping of its fields (YAML, a checkpoint)."""
        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping):
            raise TypeError(f"{name} must be an InteractionPenalty or a mapping of its fields; got {value!r}")
        fields = [field.name for field in dataclasses.fields(cls)]
        unknown = sorted(set(value) - set(fields))
        if unknown:
            raise TypeError(f"{name}: unknown option(s) {unknown}; the options are: {', '.join(fields)}")
        return cls(**value)

    def as_dict(self) -> dict[str, Any]:
        """The fields as plain values (what a checkpoint's hyper-parameters hold)."""
        out = dataclasses.asdict(self)
        out["grid"] = list(self.grid) if isinstance(self.grid, tuple) else self.grid
        return out

    def check_input(self, input_shape: tuple[int, int, int]) -> None:
        """Check the grid fits images of ``input_shape`` ``(C, H, W)`` and the order band its players (at build)."""
        _, height, width = input_shape
        try:
            num_players = int(grid_player_map(height, width, self.grid).max()) + 1
            self.check_game(num_players)
        except (TypeError, ValueError) as err:
            raise ValueError(f"penalty: {err}") from err

    @property
    def active(self) -> bool:
        """Whether the penalty is computed at all (``weight > 0``)."""
        return self.weight > 0

    def game(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> InputGame:
        """The input game of the step's batch (images detached: gradients reach the parameters only)."""
        try:
            return InputGame(
                model, x, y, grid=self.grid, value=self.value, baseline=self.baseline, batch_size=self.batch_size
            )
        except (TypeError, ValueError) as err:
            raise ValueError(f"penalty: {err}") from err

    def step_generator(self, rank: int, step: int) -> torch.Generator:
        """The generator of one training step on one rank (seed ⊕ rank ⊕ step)."""
        return torch.Generator().manual_seed(derive_seed(self.seed, "interaction_penalty", rank, step))

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | int | None = None
    ) -> StrengthEstimate:
        """The strength estimate on the batch ``(x, y)`` with its graph (``value``; multiply by :attr:`weight`)."""
        return self.estimate(self.game(model, x, y), generator, grad=True)
