"""Games on a randomized-smoothing model (Ren et al., NeurIPS 2021, supplement I, Figure 10): the value of a masked
input is the base classifier's log-probability averaged over Gaussian noise.

Cohen et al. (ICML 2019) smooth a base classifier ``f`` with ``ε ~ N(0, σ² I)`` added to the [0, 1] pixel image
(:mod:`lit_advgame.smoothing.noise`, not clamped). :class:`NoisyLogProbabilities` wraps ``f`` into a classifier of
the package's contract whose "logits" are log-probabilities under that noise, from ``num_draws`` seeded draws:

* ``"expected_log_prob"`` (default): ``E_ε[log p_f(· | x + ε)]`` -- the log-probability value of the multi-order
  estimators averaged over the noise (the base classifier under noise);
* ``"smoothed_log_prob"``: ``log E_ε[p_f(· | x + ε)]`` -- the log-probability of the smoothed soft classifier.

The same ``num_draws`` noise tensors ``ε_1 … ε_D`` (drawn once per image shape from ``seed``) are added to
**every** input (common random numbers), so ``v(S)`` is a deterministic function of the masked image: the
interaction estimators' differences ``Δv_ij(S)`` are not swamped by fresh noise at every coalition, and the games
of clean and adversarial images (or of several models) see the same draws. It is a ``D``-sample Monte-Carlo
estimate of the expectation, exact as ``D → ∞``. Each forward pass of the wrapper costs ``num_draws`` forward
passes of ``f`` (:attr:`NoisyLogProbabilities.forward_multiplier`: count it in a game's budget).

:func:`smoothed_game` builds the :class:`~lit_advgame.interactions.InputGame` with ``value="logit"`` on the wrapper,
i.e. ``v(S) = E_ε[log p_f(y | x_S + ε)]``, so every multi-order estimator (``I^(m)``, ``ΔI^(m)``, ``D^(m)``, Shapley
values) applies to a smoothed model as to a standard one.

>>> import torch
>>> from torch import nn
>>> _ = torch.manual_seed(0)
>>> base = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
>>> model = NoisyLogProbabilities(base, sigma=0.25, num_draws=4, seed=0)
>>> x = torch.rand(2, 1, 4, 4)
>>> torch.equal(model(x), model(x)), tuple(model(x).shape)  # the same draws every call
(True, (2, 3))
>>> game = smoothed_game(base, x, torch.tensor([0, 1]), sigma=0.25, num_draws=4, grid=2, baseline="zeros")
>>> game.model.forward_multiplier
4
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lit_advgame.interactions.game import InputGame
from lit_advgame.smoothing.noise import add_gaussian_noise
from lit_advgame.smoothing.statistics import check_sigma
from lit_advgame.utils.checks import check_choice, check_int, check_module
from lit_advgame.utils.seeding import make_generator
from lit_advgame.vocabulary import SMOOTHED_OUTPUTS, SmoothedOutput


class NoisyLogProbabilities(nn.Module):
    """A base classifier under Gaussian noise as a classifier of log-probabilities (see the module docstring).

    Args:
        base: the base classifier ``f`` (pixel-space images in [0, 1] to logits).
        sigma: noise std σ > 0 in pixel units.
        num_draws: noise draws ``D`` >= 1 averaged per input.
        seed: seed of the draws (the stream ``"smoothed_value"`` of it; drawn on the CPU, so every device sees the
            same noise).
        output: ``"expected_log_prob"`` or ``"smoothed_log_prob"``.
    """

    def __init__(
        self,
        base: nn.Module,
        sigma: float,
        num_draws: int = 16,
        seed: int = 0,
        output: SmoothedOutput = "expected_log_prob",
    ) -> None:
        super().__init__()
        check_module(base, "base")
        check_sigma(sigma)
        check_int(num_draws, "num_draws", minimum=1)
        check_int(seed, "seed", minimum=0)
        check_choice(output, "output", SMOOTHED_OUTPUTS)
        self.base = base
        self.sigma = float(sigma)
        self.num_draws = num_draws
        self.seed = seed
        self.output = output
        self._noise: dict[tuple, torch.Tensor] = {}

    @property
    def forward_multiplier(self) -> int:
        """Forward passes of the base classifier per input: ``num_draws``."""
        return self.num_draws

    def noise(self, image_shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The ``(D, C, H, W)`` noise ``σ ε_d`` for images of ``image_shape`` (the same on every call)."""
        key = (tuple(image_shape), str(device), dtype)
        if key not in self._noise:
            zeros = torch.zeros(self.num_draws, *image_shape, dtype=torch.float64)
            draws = add_gaussian_noise(zeros, self.sigma, make_generator(self.seed, "smoothed_value"))
            self._noise[key] = draws.to(device=device, dtype=dtype)
        return self._noise[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Log-probabilities ``(K, classes)`` of the inputs ``x`` ``(K, C, H, W)`` under the noise."""
        noise = self.noise(tuple(x.shape[1:]), x.device, x.dtype)
        noisy = (x.unsqueeze(0) + noise.unsqueeze(1)).flatten(0, 1)  # (D·K, C, H, W), draw-major
        logits = self.base(noisy)
        if logits.dtype in (torch.float16, torch.bfloat16):  # reduced-precision forward: average in float32
            logits = logits.float()
        log_probs = F.log_softmax(logits, dim=1).view(self.num_draws, x.shape[0], -1)
        if self.output == "expected_log_prob":
            return log_probs.mean(dim=0)
        return torch.logsumexp(log_probs, dim=0) - math.log(self.num_draws)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma:g}, num_draws={self.num_draws}, seed={self.seed}, output={self.output!r}"


def smoothed_game(
    base: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    sigma: float,
    num_draws: int = 16,
    seed: int = 0,
    output: SmoothedOutput = "expected_log_prob",
    **game_options,
) -> InputGame:
    """The input game ``v(S) = E_ε[log p_f(y | x_S + ε)]`` of a base classifier under noise (Ren et al., NeurIPS
    2021, supplement I, Figure 10): an :class:`~lit_advgame.interactions.InputGame` with ``value="logit"`` on
    :class:`NoisyLogProbabilities`. ``game_options``: the game's other options (``grid``, ``baseline``, ...;
    ``baseline="mean"`` reads the base classifier's Normalize layer). ``y=None`` uses the noisy model's prediction.
    """
    if "value" in game_options:
        raise ValueError("smoothed_game sets value='logit' on the noisy log-probabilities; do not pass value=")
    model = NoisyLogProbabilities(base, sigma, num_draws, seed, output)
    return InputGame(model, x, y, value="logit", **game_options)
