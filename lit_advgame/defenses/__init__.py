"""Defenses explained with multi-order interactions (Ren et al., NeurIPS 2021, §4.3 and supplement G–I).

* Recoverability (supplement I.10, Table 4): :class:`Recoverability`, :func:`recoverability`,
  :func:`compare_recoverability`, :func:`recoverability_table` -- untargeted PGD to ``x_adv``, then a targeted
  PGD with the same parameters from ``x_adv`` back to the true label; ``‖x̂ − x‖₂`` vs ``‖x_adv − x‖₂``.
* Rank reduction (Jere et al. 2020; Figure 6 right): :func:`svd_rank_reduce`, :func:`kept_rank`,
  :func:`rank_reduced_game`, :class:`RankReductionApproximator` / :func:`rank_reduction_interactions` --
  paired ``I^(m)`` of normal and adversarial images before and after reduction to ``k/4`` and ``k/16``.
* Smoothed models (supplement I, Figure 10): :class:`NoisyLogProbabilities`, :func:`smoothed_game` -- the value
  ``E_ε[log p(y | x_S + ε)]`` of a base classifier under seeded Gaussian noise, for every multi-order estimator.
"""

from lit_advgame.defenses.rank import (
    PAPER_FRACTIONS,
    RankReductionApproximator,
    RankReductionResult,
    kept_rank,
    rank_reduced_game,
    rank_reduction_interactions,
    svd_rank_reduce,
)
from lit_advgame.defenses.recovery import (
    Recoverability,
    RecoveryResult,
    compare_recoverability,
    recoverability,
    recoverability_table,
)
from lit_advgame.defenses.smoothed import NoisyLogProbabilities, smoothed_game

__all__ = [
    "PAPER_FRACTIONS",
    "RankReductionApproximator",
    "RankReductionResult",
    "kept_rank",
    "rank_reduced_game",
    "rank_reduction_interactions",
    "svd_rank_reduce",
    "Recoverability",
    "RecoveryResult",
    "compare_recoverability",
    "recoverability",
    "recoverability_table",
    "NoisyLogProbabilities",
    "smoothed_game",
]
