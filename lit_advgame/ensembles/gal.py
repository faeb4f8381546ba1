"""GAL, the Gradient Alignment Loss (Kariyappa & Qureshi 2019, "Improving adversarial robustness of
ensembles with diversity training", arXiv 1901.09981), as the TRS and DVERGE repositories implement it.

The coherence of the members' loss gradients g_i = ∇_x CE(f_i(x), y) is a smooth maximum of their
pairwise *signed* cosine similarities (the paper's coherence and Gradient Alignment Loss):

    L_coh = mean_b log( Σ_{i<j} exp(cos(g_i(x_b), g_j(x_b))) + 1e-20 ),

differentiated through the gradients (double backprop). Total loss: classification + λ·L_coh,
with λ = 0.5 in both repositories. The TRS repo (``GAL_Trainer``) sums the members' CEs (our
``scaling="reference"``); DVERGE (``train_gal.py``) averages them (``scaling="mean"``), uses
LeakyReLU(0.1) members (choose such an architecture) and adds Gaussian noise of std 0.045 with
probability 0.5 to each training image (``input_noise_std=0.045``; our noisy images are clamped to
[0, 1], DVERGE's are not). DVERGE's optional PGD term is the Ensemble's ``attack`` (adversarial training).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import ClassVar

import torch
from typing_extensions import override

from lit_advgame.ensembles.base import (
    DiversityRegularizer,
    RegularizerOutput,
    RegularizerStep,
)
from lit_advgame.ensembles.gradients import member_input_gradients, pairwise_cosine
from lit_advgame.ensembles.model import EnsembleModel
from lit_advgame.smoothing.noise import add_gaussian_noise as gaussian_noise

LOG_OFFSET = 1e-20


def gal_coherence(grads: torch.Tensor, log_offset: float = LOG_OFFSET) -> torch.Tensor:
    """mean_b log(Σ_{i<j} exp(cos(g_i, g_j)) + offset) for (N >= 2, B, D) gradients.

    The Gradient Alignment Loss: a log-sum-exp (smooth maximum) of the pairwise gradient coherence of
    Kariyappa & Qureshi, "Improving adversarial robustness of ensembles with diversity training",
    arXiv 1901.09981, 2019 (as ``GAL_Trainer`` of the TRS code computes it)."""
    cos = pairwise_cosine(grads)  # (P, B)
    return torch.log(cos.exp().sum(dim=0) + log_offset).mean()


def add_gaussian_noise(
    x: torch.Tensor, std: float, prob: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Deprecated (one release): use :func:`lit_advgame.smoothing.noise.add_gaussian_noise` with ``prob`` and
    ``clamp=True`` (DVERGE's ``AddGaussianNoise``: N(0, std²) noise on each image with probability ``prob``)."""
    warnings.warn(
        "lit_advgame.ensembles.add_gaussian_noise is deprecated; use "
        "lit_advgame.smoothing.noise.add_gaussian_noise(x, std, generator, prob=prob, clamp=True)",
        DeprecationWarning,
        stacklevel=2,
    )
    return input_noise(x, std, prob, generator)


def input_noise(x: torch.Tensor, std: float, prob: float, generator: torch.Generator | None) -> torch.Tensor:
    """GAL's optional input noise (DVERGE): ``x`` unchanged when ``std`` or ``prob`` is 0."""
    if std == 0 or prob == 0:
        return x
    return gaussian_noise(x, std, generator, prob=prob, clamp=True)


@dataclass
class GALRegularizer(DiversityRegularizer):
    """λ·L_coh of GAL (Kariyappa & Qureshi, arXiv 1901.09981, 2019: the Gradient Alignment Loss).

    Args:
        num_members: N >= 2.
        scaling: ``"reference"`` (sum of CEs, TRS repo) or ``"mean"`` (mean of CEs, DVERGE).
        lambda_gal: λ (0.5 in both repositories).
        input_noise_std: std of DVERGE's Gaussian input noise (0 = off, the TRS repo; DVERGE: 0.045).
        input_noise_prob: probability that an image gets noise (0.5).
    """

    lambda_gal: float = 0.5
    input_noise_std: float = 0.0
    input_noise_prob: float = 0.5

    name: ClassVar[str] = "gal"
    min_members: ClassVar[int] = 2
    term_names: ClassVar[tuple[str, ...]] = ("gal",)

    @override
    def __post_init__(self) -> None:
        super().__post_init__()
        self._numbers(nonnegative=("lambda_gal", "input_noise_std", "input_noise_prob"))
        if self.input_noise_prob > 1:
            raise ValueError(f"input_noise_prob must be in [0, 1]; got {self.input_noise_prob}")

    @override
    def regularize(
        self, model: EnsembleModel, x: torch.Tensor, y: torch.Tensor, step: RegularizerStep
    ) -> RegularizerOutput:
        x = input_noise(x, self.input_noise_std, self.input_noise_prob, step.generator)
        member_logits, grads = member_input_gradients(model, x, y, create_graph=True)
        coherence = gal_coherence(grads)
        return RegularizerOutput(member_logits, self.lambda_gal * coherence, {"gal": coherence.detach()}, x)
