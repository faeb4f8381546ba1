"""Training methods as LightningModules."""

from lit_advgame.training.adversarial import AdversarialTraining
from lit_advgame.training.base import ClassifierModule
from lit_advgame.training.ensemble import Ensemble
from lit_advgame.training.interaction_penalty import InteractionPenalty
from lit_advgame.training.schedules import CosineAnnealingLR
from lit_advgame.training.smoothing import RandomizedSmoothing
from lit_advgame.training.standard import StandardClassifier

__all__ = [
    "AdversarialTraining",
    "ClassifierModule",
    "CosineAnnealingLR",
    "Ensemble",
    "InteractionPenalty",
    "RandomizedSmoothing",
    "StandardClassifier",
]
