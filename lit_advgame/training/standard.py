"""Standard (empirical-risk) training: cross-entropy on clean pixel-space images."""

from __future__ import annotations

from lit_advgame.training.base import ClassifierModule


class StandardClassifier(ClassifierModule):
    """A classifier trained with plain cross-entropy, ``min_θ E[CE(f_θ(x), y)]``.

    The baseline "standard model" against which the papers compare adversarially trained,
    smoothed and ensemble models. All arguments are those of :class:`ClassifierModule`.
    """
