"""Defenses explained by multi-order interactions (Ren et al., NeurIPS 2021, §4.3 and supplement G-I).

* :mod:`~lit_advgame.defenses.detection` (supplement G): ML-LOO's leave-one-out scores ``φ^(n-1)(i)``, their
  decomposition into interactions, and detectors of adversarial examples from ML-LOO's statistic, multi-order
  Shapley values and multi-order interactions, with the ROC-AUC of normal vs adversarial images.
* :mod:`~lit_advgame.defenses.dropout` (Table 1, supplement H): pixel dropout with neighbour filling, cutout, the
  early-stopped attack, the correction ratio, and Eq. 20 (what the dropout average keeps of each order) checked
  with the exact oracle.
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

__all__ = [
    "DEFAULT_STATISTICS",
    "AttributionDetector",
    "CorrectionResult",
    "Cutout",
    "DetectionResult",
    "DetectorScores",
    "EarlyStoppedAttack",
    "EarlyStoppedResult",
    "LeaveOneOutScores",
    "PixelDropout",
    "attribution_statistic",
    "check_dropout_rate",
    "correction_ratio",
    "detect",
    "detection_auc",
    "dropout_average_value",
    "dropout_keep_count",
    "dropout_order_fractions",
    "dropout_removed_by_order",
    "dropout_value_from_interactions",
    "leave_one_out_scores",
    "ml_loo_game",
    "neighbour_fill",
    "shapley_from_interactions",
]
