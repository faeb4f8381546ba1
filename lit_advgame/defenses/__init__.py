"""Defenses explained by multi-order interactions (Ren et al., NeurIPS 2021, §4.3 and supplement G-I).

* :mod:`~lit_advgame.defenses.detection` (supplement G): ML-LOO's leave-one-out scores ``φ^(n-1)(i)``, their
  decomposition into interactions, and detectors of adversarial examples from ML-LOO's statistic, multi-order
  Shapley values and multi-order interactions, with the ROC-AUC of normal vs adversarial images.
* :mod:`~lit_advgame.defenses.dropout` (Table 1, supplement H): pixel dropout with neighbour filling, cutout, the
  early-stopped attack, the correction ratio, and Eq. 20 (what the dropout average keeps of each order) checked
  with the exact oracle.
* Recoverability (supplement I.10, Table 4): :class:`Recoverability`, :func:`recoverability`,
  :func:`compare_recoverability`, :func:`recoverability_table` -- untargeted PGD to ``x_adv``, then a targeted
  PGD with the same parameters from ``x_adv`` back to the true label; ``‖x̂ − x‖₂`` vs ``‖x_adv − x‖₂``.
* Rank reduction (Jere et al. 2020; Figure 6 right): :func:`svd_rank_reduce`, :func:`kept_rank`,
  :func:`rank_reduced_game`, :class:`RankReductionApproximator` / :func:`rank_reduction_interactions` --
  paired ``I^(m)`` of normal and adversarial images before and after reduction to ``k/4`` and ``k/16``.
* The ``trainer.predict`` job (:mod:`~lit_advgame.defenses.module`, :mod:`~lit_advgame.defenses.writer`):
  :class:`DefenseAnalysis` with its settings (:class:`DetectionSettings`, :class:`DropoutSettings`,
  :class:`RankSettings`, :class:`SmoothedSettings`, :class:`Recoverability`) and :class:`DefenseWriter`
  (``lit-advgame predict --config configs/defenses_digits.yaml``).
* Smoothed models (supplement I, Figure 10): :class:`NoisyLogProbabilities`, :func:`smoothed_game` -- the value
  ``E_ε[log p(y | x_S + ε)]`` of a base classifier under seeded Gaussian noise, for every multi-order estimator.
"""

from lit_advgame.defenses.detection import (
    DEFAULT_STATISTICS,
    AttributionDetector,
    DetectionResult,
    DetectorScores,
    LeaveOneOutScores,
    attribution_statistic,
    detect,
    detection_auc,
    leave_one_out_scores,
    ml_loo_game,
    shapley_from_interactions,
)
from lit_advgame.defenses.dropout import (
    CorrectionResult,
    Cutout,
    EarlyStoppedAttack,
    EarlyStoppedResult,
    PixelDropout,
    check_dropout_rate,
    correction_ratio,
    dropout_average_value,
    dropout_keep_count,
    dropout_order_fractions,
    dropout_removed_by_order,
    dropout_value_from_interactions,
    neighbour_fill,
)
from lit_advgame.defenses.module import (
    DefenseAnalysis,
    DetectionSettings,
    DropoutSettings,
    RankSettings,
    SmoothedSettings,
)
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
from lit_advgame.defenses.writer import DefenseWriter

__all__ = [
    "AttributionDetector",
    "CorrectionResult",
    "Cutout",
    "DEFAULT_STATISTICS",
    "DefenseAnalysis",
    "DefenseWriter",
    "DetectionResult",
    "DetectionSettings",
    "DetectorScores",
    "DropoutSettings",
    "EarlyStoppedAttack",
    "EarlyStoppedResult",
    "LeaveOneOutScores",
    "NoisyLogProbabilities",
    "PAPER_FRACTIONS",
    "PixelDropout",
    "RankReductionApproximator",
    "RankReductionResult",
    "RankSettings",
    "Recoverability",
    "RecoveryResult",
    "SmoothedSettings",
    "attribution_statistic",
    "check_dropout_rate",
    "compare_recoverability",
    "correction_ratio",
    "detect",
    "detection_auc",
    "dropout_average_value",
    "dropout_keep_count",
    "dropout_order_fractions",
    "dropout_removed_by_order",
    "dropout_value_from_interactions",
    "kept_rank",
    "leave_one_out_scores",
    "ml_loo_game",
    "neighbour_fill",
    "rank_reduced_game",
    "rank_reduction_interactions",
    "recoverability",
    "recoverability_table",
    "shapley_from_interactions",
    "smoothed_game",
    "svd_rank_reduce",
]
