"""ADP, the Adaptive Diversity Promoting regularizer (Pang, Xu, Du, Chen, Zhu, ICML 2019, arXiv 1901.08846).

Official code (``P2333/Adaptive-Diversity-Promoting``, ``utils.py::Loss_withEE_DPP``; PyTorch ports
in DVERGE ``train_adp.py`` and the TRS repo's ``ADP_Trainer``; the ADP objective of the paper):

    L = Σ_k CE(f_k(x), y) − α·H(p̄) − β·log det(M̃ M̃ᵀ + 1e-6·I),

with p_k = softmax(f_k(x)), p̄ = mean_k p_k, H the Shannon entropy (``−Σ p log(p + 1e-20)``),
and M̃ the N×(K−1) matrix whose row k is p_k *without the true-label entry*, L2-normalised (the
"non-maximal predictions"; the code uses the true label). Entropy and log-det are per example,
then averaged over the batch. α is the official flag ``lamda`` (EE weight) and β the flag
``log_det_lamda``; the paper's ADP_{2,0.5} and the DVERGE/TRS ports use α = 2, β = 0.5.

``scaling="reference"`` sums the members' CEs as all three codes do; ``"mean"`` averages them
(the entropy and log-det terms are unchanged). We guard the row normalisation against an
all-zero row (a member certain of the true class in float32) with a 1e-20 floor, where the
reference would produce NaN.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from typing_extensions import override

from lit_advgame.ensembles.base import (
    DiversityRegularizer,
    RegularizerOutput,
    RegularizerStep,
)
from lit_advgame.ensembles.model import EnsembleModel

LOG_OFFSET = 1e-20
DET_OFFSET = 1e-6


def ensemble_entropy(member_probs: torch.Tensor, log_offset: float = LOG_OFFSET) -> torch.Tensor:
    """mean_b H(p̄_b) with p̄ = mean_k p_k, H(p) = −Σ_c p_c log(p_c + offset); probs (N, B, K).

    The ensemble entropy of ADP (Pang et al., "Improving adversarial robustness via promoting ensemble
    diversity", ICML 2019), the offset as ``Loss_withEE_DPP`` of the official code."""
    mean_probs = member_probs.mean(dim=0)
    return -(mean_probs * torch.log(mean_probs + log_offset)).sum(dim=-1).mean()


def non_true_predictions(member_probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B, N, K−1): each member's probabilities without the true-label entry, L2-normalised per row."""
    num, batch, classes = member_probs.shape
    keep = torch.ones(batch, classes, dtype=torch.bool, device=member_probs.device)
    keep[torch.arange(batch, device=y.device), y] = False
    rows = member_probs.permute(1, 0, 2)[keep.unsqueeze(1).expand(batch, num, classes)]
    rows = rows.view(batch, num, classes - 1)
    return rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-20)


def ensemble_log_det(member_probs: torch.Tensor, y: torch.Tensor, det_offset: float = DET_OFFSET) -> torch.Tensor:
    """mean_b log det(M̃_b M̃_bᵀ + offset·I), the log ensemble diversity; probs (N, B, K), labels (B,).

    The log of the ensemble diversity of ADP (Pang et al., ICML 2019: the squared volume spanned by the
    members' normalised non-maximal predictions), with the ridge of ``Loss_withEE_DPP``."""
    if member_probs.shape[-1] < 2:
        raise ValueError("ADP needs at least 2 classes")
    rows = non_true_predictions(member_probs, y)
    gram = rows @ rows.transpose(1, 2)
    eye = torch.eye(rows.shape[1], device=rows.device, dtype=rows.dtype)
    return torch.logdet(gram + det_offset * eye).mean()


@dataclass
class ADPRegularizer(DiversityRegularizer):
    """−α·H(p̄) − β·log det(M̃M̃ᵀ + offset·I): the ADP regularizer (Pang et al., ICML 2019).

    Args:
        num_members: N >= 2.
        scaling: ``"reference"`` (sum of CEs) or ``"mean"`` (mean of CEs).
        alpha: α, the ensemble-entropy weight (official flag ``lamda``; ADP_{2,0.5}: 2).
        beta: β, the log-det weight (official flag ``log_det_lamda``: 0.5).
        log_offset: offset inside the entropy's log (1e-20).
        det_offset: ridge added before the log-det (1e-6).
    """

    alpha: float = 2.0
    beta: float = 0.5
    log_offset: float = LOG_OFFSET
    det_offset: float = DET_OFFSET

    name: ClassVar[str] = "adp"
    min_members: ClassVar[int] = 2
    term_names: ClassVar[tuple[str, ...]] = ("adp_entropy", "adp_logdet")

    @override
    def __post_init__(self) -> None:
        super().__post_init__()
        self._numbers(nonnegative=("alpha", "beta"), positive=("log_offset", "det_offset"))

    @override
    def regularize(
        self, model: EnsembleModel, x: torch.Tensor, y: torch.Tensor, step: RegularizerStep
    ) -> RegularizerOutput:
        member_logits = model.member_logits(x)
        probs = torch.softmax(member_logits, dim=-1)
        entropy = ensemble_entropy(probs, self.log_offset)
        log_det = ensemble_log_det(probs, y, self.det_offset)
        penalty = -self.alpha * entropy - self.beta * log_det
        return RegularizerOutput(
            member_logits, penalty, {"adp_entropy": entropy.detach(), "adp_logdet": log_det.detach()}, x
        )
