"""Randomized smoothing (Cohen, Rosenfeld & Kolter, ICML 2019): the smoothed classifier with PREDICT
and CERTIFY, its binomial statistics, per-example seeded pixel-space noise, per-example results and a
prediction writer. The training module is :class:`lit_advgame.training.smoothing.RandomizedSmoothing`."""

from lit_advgame.smoothing.certify import CertifyResult, PredictResult, Smooth
from lit_advgame.smoothing.noise import (
    add_gaussian_noise,
    add_per_example_noise,
    example_generators,
    example_seed,
)
from lit_advgame.smoothing.results import SmoothingRecords, certified_accuracy_table
from lit_advgame.smoothing.statistics import (
    ABSTAIN,
    binomial_test_pvalue,
    certified_accuracy,
    certified_radius,
    clopper_pearson_lower,
    radius_cap,
)
from lit_advgame.smoothing.writer import SmoothingPredictionWriter

__all__ = [
    "ABSTAIN",
    "CertifyResult",
    "PredictResult",
    "Smooth",
    "SmoothingPredictionWriter",
    "SmoothingRecords",
    "add_gaussian_noise",
    "add_per_example_noise",
    "binomial_test_pvalue",
    "certified_accuracy",
    "certified_accuracy_table",
    "certified_radius",
    "clopper_pearson_lower",
    "example_generators",
    "example_seed",
    "radius_cap",
]
