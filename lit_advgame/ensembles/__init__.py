"""Ensembles of pixel-space classifiers and their diversity regularizers.

* :class:`EnsembleModel`: N members, output = log of the mean member probability.
* Regularizers (:func:`build_regularizer`): ``"none"`` (plain ensemble), ``"trs"`` (TRS, Yang et
  al. 2021, with its "vanilla"/cos-l2 and "plus" variants), ``"gal"`` (Kariyappa & Qureshi 2019),
  ``"adp"`` (Pang et al. 2019).
* :func:`transfer_matrix` / :func:`transfer_report`: intra-ensemble transferability.

The LightningModule is :class:`lit_advgame.training.ensemble.Ensemble`.
"""

from lit_advgame.ensembles.adp import (
    ADPRegularizer,
    ensemble_entropy,
    ensemble_log_det,
    non_true_predictions,
)
from lit_advgame.ensembles.base import (
    SCALINGS,
    DiversityRegularizer,
    RegularizerOutput,
    member_cross_entropy,
)
from lit_advgame.ensembles.gal import GALRegularizer, add_gaussian_noise, gal_coherence
from lit_advgame.ensembles.gradients import (
    member_input_gradients,
    pair_indices,
    pairwise_cosine,
)
from lit_advgame.ensembles.model import (
    EnsembleModel,
    build_ensemble_model,
    combine_member_logits,
)
from lit_advgame.ensembles.registry import (
    REGULARIZERS,
    available_regularizers,
    build_regularizer,
    register_regularizer,
    regularizer_options,
)
from lit_advgame.ensembles.transferability import (
    TransferResult,
    transfer_matrix,
    transfer_report,
)
from lit_advgame.ensembles.trs import (
    TRSRegularizer,
    gradient_similarity,
    smoothness,
    smoothness_pgd,
)

__all__ = [
    "ADPRegularizer",
    "DiversityRegularizer",
    "EnsembleModel",
    "GALRegularizer",
    "REGULARIZERS",
    "RegularizerOutput",
    "SCALINGS",
    "TRSRegularizer",
    "TransferResult",
    "add_gaussian_noise",
    "available_regularizers",
    "build_ensemble_model",
    "build_regularizer",
    "combine_member_logits",
    "ensemble_entropy",
    "ensemble_log_det",
    "gal_coherence",
    "gradient_similarity",
    "member_cross_entropy",
    "member_input_gradients",
    "non_true_predictions",
    "pair_indices",
    "pairwise_cosine",
    "register_regularizer",
    "regularizer_options",
    "smoothness",
    "smoothness_pgd",
    "transfer_matrix",
    "transfer_report",
]
