"""Result records of a transfer evaluation: a leaf module, imported by :mod:`.transfer` (which fills
them) and :mod:`.report` (which formats them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class TargetResult:
    """One (row, target) cell of the transfer evaluation."""

    num_images: int
    success: float
    success_loo: float
    utility: float
    utility_stderr: float
    clean_accuracy: float
    step_success: list[float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class RowResult:
    """One attack run (source × attack) evaluated on every target."""

    name: str
    source: str
    method: str
    num_images: int
    whitebox_success: float
    interaction: float
    interaction_stderr: float
    perturbation_l2: float = float("nan")
    perturbation_linf: float = float("nan")
    targets: dict[str, TargetResult] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("targets", "meta")}
        out["targets"] = {k: v.to_dict() for k, v in self.targets.items()}
        out["attack"] = self.meta.get("attack")
        out["overrides"] = self.meta.get("overrides")
        out["config"] = self.meta.get("config")
        return out
