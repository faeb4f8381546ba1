"""Value functions ``v(S)``: a scalar per masked input, computed from the model's logits.

Each value function maps ``logits`` ``(K, C)`` of K masked inputs, the class ``labels`` ``(K,)``
of their images and, where needed, a second class ``targets`` ``(K,)`` to values ``(K,)``.

Named value functions:

* ``"log_prob"``: ``log p(y | x_S) = log_softmax(z)[y]`` -- Ren et al. (NeurIPS 2021) and their code
  (``compute_interactions.py``). Pass ``y`` = the ground truth, or the adversarial prediction for
  the paper's target-category variant (footnote 6).
* ``"logit"``: the raw logit ``z_y`` (the value of Zhang et al., "Interpreting and boosting dropout
  from a game-theoretic view", ICLR 2021).
* ``"margin_max"``: ``max_{y' != y} z_{y'} - z_y`` with the max taken **inside each subset** -- the
  IR paper's ``v(S)`` (Wang et al., ICLR 2021, §3.1 / Eq. 25).
* ``"margin_fixed"``: ``z_t - z_y`` with ``t`` = the runner-up class (argmax over ``y' != y``) of the
  **full** coalition (x + delta for perturbation games, x for input games), computed once, detached,
  and held fixed for every subset -- the IR reference code (``interaction_loss.py``, ``other_max``).
* ``"target_minus_true"``: ``z_t - z_y`` for a *given* target class ``t`` (``target=`` argument of the
  game) -- the reward of Wang et al., "Interpreting attributions and interactions of adversarial
  attacks" (ICCV 2021, §3, the targeted attack of Eq. 2).

A user callable ``fn(logits, labels) -> values`` (``(K, C)``, ``(K,)`` -> ``(K,)``) is accepted too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lit_advgame.vocabulary import VALUE_NAMES


def log_prob_value(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``log p(y | x_S)`` of the given class (log-softmax of the logits): Ren et al., NeurIPS 2021, footnote 4."""
    return F.log_softmax(logits, dim=1).gather(1, labels.view(-1, 1)).squeeze(1)


def logit_value(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The raw logit ``z_y`` of the given class."""
    return logits.gather(1, labels.view(-1, 1)).squeeze(1)


def margin_max_value(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``max_{y' != y} z_{y'} - z_y`` (Wang et al., ICLR 2021, §3.1, from Eq. 2; max inside each subset)."""
    true = logits.gather(1, labels.view(-1, 1))
    others = logits.scatter(1, labels.view(-1, 1), float("-inf"))
    return others.max(dim=1).values - true.squeeze(1)


def logit_difference_value(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``z_t - z_y`` for a fixed second class ``t`` per row."""
    return logits.gather(1, targets.view(-1, 1)).squeeze(1) - logits.gather(1, labels.view(-1, 1)).squeeze(1)


def runner_up_class(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``argmax_{y' != y} z_{y'}`` per row (detached)."""
    others = logits.detach().scatter(1, labels.view(-1, 1), float("-inf"))
    return others.argmax(dim=1)


@dataclass(frozen=True)
class ValueFunction:
    """A value function ``v`` on logits.

    Attributes:
        name: its name (for logging).
        fn: ``fn(logits, labels)`` or, when ``second_class`` is set, ``fn(logits, labels, targets)``.
        second_class: ``None``; ``"runner_up"`` (the runner-up of the full coalition, fixed);
            or ``"given"`` (the game's ``target`` argument).
    """

    name: str
    fn: Callable[..., torch.Tensor]
    second_class: str | None = None

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        if self.second_class is None:
            out = self.fn(logits, labels)
        else:
            out = self.fn(logits, labels, targets)
        if not isinstance(out, torch.Tensor) or out.shape != (logits.shape[0],):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                f"value function {self.name!r} must return one value per masked input, shape ({logits.shape[0]},); "
                f"got {shape}"
            )
        return out


def resolve_value(value: str | Callable[..., torch.Tensor] | ValueFunction) -> ValueFunction:
    """Turn a name or a callable ``fn(logits, labels)`` into a :class:`ValueFunction`."""
    if isinstance(value, ValueFunction):
        return value
    if isinstance(value, str):
        if value == "log_prob":
            return ValueFunction("log_prob", log_prob_value)
        if value == "logit":
            return ValueFunction("logit", logit_value)
        if value == "margin_max":
            return ValueFunction("margin_max", margin_max_value)
        if value == "margin_fixed":
            return ValueFunction("margin_fixed", logit_difference_value, second_class="runner_up")
        if value == "target_minus_true":
            return ValueFunction("target_minus_true", logit_difference_value, second_class="given")
        raise ValueError(f"unknown value function {value!r}; choose one of {', '.join(VALUE_NAMES)} or pass a callable")
    if callable(value):
        return ValueFunction(getattr(value, "__name__", "custom"), value)
    raise TypeError(f"value must be one of {VALUE_NAMES} or a callable fn(logits, labels); got {value!r}")
