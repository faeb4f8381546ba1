"""Transfer evaluation of saved adversarial examples (IR paper, Wang et al., ICLR 2021).

* :func:`evaluate_transfer` -- success-rate matrix sources × targets (last step and leave-one-out
  selected, Appendix K), transfer utility (Section 3.2), interaction inside each perturbation
  (Eq. 4), white-box success -> :class:`TransferReport` (Markdown in the shape of Table 1, CSV,
  JSON, TensorBoard, the utility-vs-interaction figure of Figure 1);
* :mod:`.loo` -- O(N·T) leave-one-out step selection;
* :func:`robust_accuracy` -- white-box robust accuracy under PGD-k and AutoAttack (:mod:`.robustness`).

    python -m lit_advgame.evaluation runs/attacks/quickstart --targets checkpoints/digits_lenet.pt \\
        --output runs/transfer/quickstart
"""

from lit_advgame.evaluation.loo import (
    loo_best_steps,
    loo_best_steps_across_targets,
    loo_success,
    loo_success_rate,
)
from lit_advgame.evaluation.report import TransferReport, pearson
from lit_advgame.evaluation.robustness import RobustnessResult, RobustnessSettings, robust_accuracy
from lit_advgame.evaluation.scores import batched_margins, candidate_margins
from lit_advgame.evaluation.transfer import (
    INTERACTION_DEFAULTS,
    SUBSETS,
    RowResult,
    TargetResult,
    evaluate_row,
    evaluate_transfer,
    measure_interaction,
)

__all__ = [
    "INTERACTION_DEFAULTS",
    "SUBSETS",
    "RobustnessResult",
    "RobustnessSettings",
    "RowResult",
    "TargetResult",
    "TransferReport",
    "batched_margins",
    "candidate_margins",
    "evaluate_row",
    "evaluate_transfer",
    "loo_best_steps",
    "loo_best_steps_across_targets",
    "loo_success",
    "loo_success_rate",
    "measure_interaction",
    "pearson",
    "robust_accuracy",
]
