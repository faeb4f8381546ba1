"""Intra-ensemble transferability: attack each member, count how often it fools the others.

Protocol of DVERGE's ``eval_transferability.py`` (DVERGE, Yang et al., NeurIPS 2020), the cleaner of the
two references: keep the probe points that *every* model (members and, if given, the ensemble)
classifies correctly, attack each source model on them, and report for every (source, target)
pair the fraction of points on which the source's adversarial example fools the target in at
least one of ``restarts`` runs. The diagonal is the white-box success rate; with an ensemble,
its row is the attack on the ensemble output and its column the transfer to the ensemble.
(The TRS repo's ``trans_matrix.py`` instead reports target *accuracy* over the whole test set,
without the all-correct conditioning: that is ``1 − success`` on unconditioned points.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lit_advgame.attacks.model_mode import eval_mode
from lit_advgame.ensembles.model import module_list
from lit_advgame.utils.checks import check_images, check_int, check_labels

AttackFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class TransferResult:
    """Success rates of transfer attacks between models.

    Attributes:
        matrix: (S, S) float tensor; ``matrix[i, j]`` = fraction of probe points on which the
            adversarial example crafted on model i makes model j misclassify.
        names: model names of the rows/columns (``member0``, ..., ``ensemble``).
        num_points: probe points used (those all models classify correctly).
        num_candidates: probe points given.
        restarts: attack runs per source (success = fooled in at least one).
    """

    matrix: torch.Tensor
    names: list[str]
    num_points: int
    num_candidates: int
    restarts: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_members(self) -> int:
        return sum(1 for n in self.names if n != "ensemble")

    def off_diagonal_mean(self) -> float:
        """Mean success rate over ordered member pairs i ≠ j (transfer between members only)."""
        n = self.num_members
        if n < 2:
            raise ValueError("off_diagonal_mean needs at least 2 members")
        block = self.matrix[:n, :n]
        mask = ~torch.eye(n, dtype=torch.bool)
        return float(block[mask].mean())

    def to_dict(self) -> dict[str, Any]:
        return {
            "names": list(self.names),
            "matrix": self.matrix.tolist(),
            "num_points": self.num_points,
            "num_candidates": self.num_candidates,
            "restarts": self.restarts,
            "off_diagonal_mean": self.off_diagonal_mean() if self.num_members >= 2 else None,
            **self.extra,
        }

    def to_markdown(self, digits: int = 1) -> str:
        """Markdown table in percent: rows = source (attacked) model, columns = target model."""
        header = "| source \\ target | " + " | ".join(self.names) + " |"
        lines = [header, "|" + "---|" * (len(self.names) + 1)]
        for name, row in zip(self.names, self.matrix.tolist()):
            lines.append(f"| {name} | " + " | ".join(f"{100 * v:.{digits}f}" for v in row) + " |")
        return "\n".join(lines)


def _predict(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([model(x[i : i + batch_size]).argmax(dim=1) for i in range(0, x.shape[0], batch_size)])


def transfer_report(
    models: Sequence[nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    attack_factory: Callable[[nn.Module], AttackFn],
    ensemble: nn.Module | None = None,
    *,
    restarts: int = 1,
    only_correct: bool = True,
    batch_size: int = 256,
) -> TransferResult:
    """Intra-ensemble transfer success rates (see the module docstring).

    Args:
        models: the N member classifiers (pixel-space input).
        x: (B, C, H, W) probe images in [0, 1]; y: (B,) labels (on the models' device).
        attack_factory: ``model -> attack`` where ``attack(x, y)`` returns adversarial images,
            e.g. ``lambda m: Attack(m, "linf", eps=0.1, step_size=0.01, steps=50, generator=g)``.
            Called once per source; the attack is then run ``restarts`` times (give it a
            ``generator`` rather than a fixed ``seed`` so that restarts differ).
        ensemble: optional ensemble model, added as the last source and target.
        restarts: runs per source; a point counts as fooled if any run fools the target.
        only_correct: keep only points every model classifies correctly (DVERGE protocol);
            with ``False`` all points are used and success means "misclassified".
        batch_size: images per forward/attack chunk.

    Returns:
        :class:`TransferResult` with the (N[+1]) × (N[+1]) matrix.
    """
    models = module_list(models, "models", "models must contain at least one classifier")
    if ensemble is not None and not isinstance(ensemble, nn.Module):
        raise TypeError(f"ensemble must be a torch.nn.Module or None; got {type(ensemble).__name__}")
    if not callable(attack_factory):
        raise TypeError("attack_factory must be callable: model -> attack(x, y) -> x_adv")
    check_images(x, "x")
    check_labels(y, x.shape[0], None, "y")
    check_int(restarts, "restarts", minimum=1)
    check_int(batch_size, "batch_size", minimum=1)

    all_models = models + ([ensemble] if ensemble is not None else [])
    names = [f"member{i}" for i in range(len(models))] + (["ensemble"] if ensemble is not None else [])
    y = y.to(x.device)
    with eval_mode(all_models), torch.no_grad():
        correct = torch.stack([_predict(m, x, batch_size) == y for m in all_models])
    keep = correct.all(dim=0) if only_correct else torch.ones_like(y, dtype=torch.bool)
    num_points = int(keep.sum())
    if num_points == 0:
        raise ValueError("no probe point is classified correctly by every model; the transfer matrix is undefined")
    xs, ys = x[keep], y[keep]

    size = len(all_models)
    fooled = torch.zeros(size, size, num_points, dtype=torch.bool, device=x.device)
    for s, source in enumerate(all_models):
        attack = attack_factory(source)
        for _ in range(restarts):
            for start in range(0, num_points, batch_size):
                xc, yc = xs[start : start + batch_size], ys[start : start + batch_size]
                x_adv = attack(xc, yc).detach()
                with eval_mode(all_models), torch.no_grad():
                    for t, target in enumerate(all_models):
                        fooled[s, t, start : start + len(yc)] |= target(x_adv).argmax(dim=1) != yc
    matrix = fooled.float().mean(dim=-1).cpu()
    return TransferResult(matrix, names, num_points, int(x.shape[0]), restarts)


def transfer_matrix(*args: Any, **kwargs: Any) -> torch.Tensor:
    """The (N[+1]) × (N[+1]) success-rate matrix of :func:`transfer_report` (same arguments; rows: source,
    columns: target)."""
    return transfer_report(*args, **kwargs).matrix
