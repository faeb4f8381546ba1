"""The smoothed classifier ``g`` of Cohen, Rosenfeld & Kolter (ICML 2019) with PREDICT and CERTIFY.

``g(x) = argmax_c P(f(x + ε) = c)`` with ``ε ~ N(0, σ² I)`` in [0, 1] pixel space (no clamp).

* CERTIFY (paper Alg. 1, left): guess the top class ``ĉ_A`` from ``n0`` noisy samples, count it
  in ``n`` *fresh, independent* samples, bound ``p_A`` from below by the one-sided (1 − α)
  Clopper–Pearson bound ``p̲_A``; abstain if ``p̲_A < 1/2``, otherwise return ``(ĉ_A, σ Φ⁻¹(p̲_A))``.
  With probability ≥ 1 − α the answer is either an abstention or ``g(x)`` together with a radius
  within which ``g`` is constant (Thm. 1).
* PREDICT (Alg. 1, right): the top two counts ``n1 ≥ n2`` of ``n`` samples; abstain when the
  two-sided binomial test of ``n1`` out of ``n1 + n2`` at p = 1/2 has p-value > α. With probability
  ≥ 1 − α a returned class equals ``g(x)``.

Unlike Cohen's ``core.py`` this is device-agnostic (the noise is drawn on ``x.device``) and takes
its randomness from ``torch.Generator`` objects, one per example, so results reproduce exactly.
Noisy samples are drawn per example in chunks of ``batch_size`` (the random stream of an
example depends on its generator and on ``batch_size`` only); chunks of several examples are packed
into one forward pass of at most ``batch_size`` images, so small ``n`` does not waste passes.
Predicted classes are counted with ``torch.bincount``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lit_advgame.smoothing.noise import check_generator
from lit_advgame.smoothing.statistics import (
    ABSTAIN,
    binomial_test_pvalue,
    certified_radius,
    check_alpha,
    check_sigma,
    clopper_pearson_lower,
)
from lit_advgame.utils.checks import check_images, check_int
from lit_advgame.utils.modes import eval_mode


@dataclass
class CertifyResult:
    """CERTIFY's answer for a batch of B examples (tensors on the CPU).

    Attributes:
        prediction: (B,) int64 certified class, or ``ABSTAIN`` (−1).
        radius: (B,) float64 certified L2 radius in pixel space (0 when abstaining).
        p_lower: (B,) float64 Clopper–Pearson lower bound ``p̲_A`` on the guessed class.
        guess: (B,) int64 class ``ĉ_A`` guessed from the ``n0`` selection samples.
        count: (B,) int64 votes ``n_A`` for ``ĉ_A`` among the ``n`` estimation samples.
    """

    prediction: torch.Tensor
    radius: torch.Tensor
    p_lower: torch.Tensor
    guess: torch.Tensor
    count: torch.Tensor


@dataclass
class PredictResult:
    """PREDICT's answer for a batch of B examples (tensors on the CPU).

    Attributes:
        prediction: (B,) int64 class, or ``ABSTAIN`` (−1).
        p_value: (B,) float64 two-sided binomial-test p-value of the top two counts.
        counts: (B, K) int64 votes of each class among the ``n`` samples.
    """

    prediction: torch.Tensor
    p_value: torch.Tensor
    counts: torch.Tensor


def _chunk_sizes(num: int, batch_size: int) -> list[int]:
    full, rest = divmod(num, batch_size)
    return [batch_size] * full + ([rest] if rest else [])


class Smooth:
    """Gaussian smoothing ``g`` of a base classifier (Cohen et al. 2019), with PREDICT and CERTIFY.

    Args:
        base_classifier: maps a (N, C, H, W) pixel-space batch to (N, num_classes) scores; an
            ``nn.Module`` is put in eval mode while sampling (its modes are restored afterwards).
            It should contain its own normalizer (noise is added before it).
        num_classes: number of classes K (>= 2).
        sigma: noise level σ > 0 (std of the Gaussian in [0, 1] pixel units).
    """

    ABSTAIN = ABSTAIN

    def __init__(self, base_classifier: Callable[[torch.Tensor], torch.Tensor], num_classes: int, sigma: float) -> None:
        if not callable(base_classifier):
            raise TypeError(f"base_classifier must be a callable model; got {type(base_classifier).__name__}")
        check_int(num_classes, "num_classes", minimum=2)
        check_sigma(sigma)
        self.base_classifier = base_classifier
        self.num_classes = num_classes
        self.sigma = float(sigma)

    # ------------------------------------------------------------------ public API
    def certify(
        self,
        x: torch.Tensor,
        n0: int,
        n: int,
        alpha: float,
        batch_size: int,
        generator: torch.Generator | None = None,
    ) -> tuple[int, float]:
        """CERTIFY one image ``x`` of shape (C, H, W): ``(class or ABSTAIN, radius)``.

        Cohen, Rosenfeld & Kolter, ICML 2019, pseudocode of CERTIFY (the radius of Theorem 1)."""
        self._check_single(x)
        result = self.certify_batch(
            x.unsqueeze(0), n0, n, alpha, batch_size, None if generator is None else [generator]
        )
        return int(result.prediction[0]), float(result.radius[0])

    def predict(
        self,
        x: torch.Tensor,
        n: int,
        alpha: float,
        batch_size: int,
        generator: torch.Generator | None = None,
    ) -> int:
        """PREDICT for one image ``x`` of shape (C, H, W): the class or ``ABSTAIN``.

        Cohen, Rosenfeld & Kolter, ICML 2019, pseudocode of PREDICT."""
        self._check_single(x)
        result = self.predict_batch(x.unsqueeze(0), n, alpha, batch_size, None if generator is None else [generator])
        return int(result.prediction[0])

    def certify_batch(
        self,
        x: torch.Tensor,
        n0: int,
        n: int,
        alpha: float,
        batch_size: int,
        generators: Sequence[torch.Generator] | None = None,
    ) -> CertifyResult:
        """CERTIFY each image of a (B, C, H, W) batch independently (Cohen et al., ICML 2019, CERTIFY).

        Example i draws its ``n0`` selection samples and then its ``n`` estimation samples from
        ``generators[i]`` (the global RNG when ``generators`` is ``None``), so its answer equals that of
        :meth:`certify` on ``x[i]`` with the same generator state.
        """
        check_int(n0, "n0", minimum=1)
        check_int(n, "n", minimum=1)
        check_alpha(alpha)
        generators = self._check_batch(x, batch_size, generators)
        selection = self.sample_counts(x, n0, batch_size, generators)
        estimation = self.sample_counts(x, n, batch_size, generators)
        guess = selection.argmax(dim=1).cpu()
        count = estimation.cpu().gather(1, guess[:, None]).squeeze(1)
        p_lower = torch.as_tensor(
            np.asarray(clopper_pearson_lower(count.numpy(), np.full(len(count), n), alpha), dtype=np.float64).reshape(
                -1
            )
        )
        certified = p_lower >= 0.5
        radius = torch.zeros(len(guess), dtype=torch.float64)
        if certified.any():
            radius[certified] = torch.as_tensor(
                np.asarray(certified_radius(p_lower[certified].numpy(), self.sigma), dtype=np.float64).reshape(-1)
            )
        prediction = torch.where(certified, guess, torch.full_like(guess, ABSTAIN))
        return CertifyResult(prediction=prediction, radius=radius, p_lower=p_lower, guess=guess, count=count)

    def predict_batch(
        self,
        x: torch.Tensor,
        n: int,
        alpha: float,
        batch_size: int,
        generators: Sequence[torch.Generator] | None = None,
    ) -> PredictResult:
        """PREDICT each image of a (B, C, H, W) batch independently (see :meth:`predict`).

        Cohen, Rosenfeld & Kolter, ICML 2019, pseudocode of PREDICT."""
        check_int(n, "n", minimum=1)
        check_alpha(alpha)
        generators = self._check_batch(x, batch_size, generators)
        counts = self.sample_counts(x, n, batch_size, generators).cpu()
        # top two classes; ties are broken towards the smaller class index
        order = torch.sort(counts, dim=1, descending=True, stable=True).indices
        top = order[:, 0]
        n1 = counts.gather(1, order[:, :1]).squeeze(1)
        n2 = counts.gather(1, order[:, 1:2]).squeeze(1)
        p_value = torch.tensor([binomial_test_pvalue(int(a), int(b)) for a, b in zip(n1, n2)], dtype=torch.float64)
        prediction = torch.where(p_value > alpha, torch.full_like(top, ABSTAIN), top)
        return PredictResult(prediction=prediction, p_value=p_value, counts=counts)

    @torch.no_grad()
    def sample_counts(
        self,
        x: torch.Tensor,
        num: int,
        batch_size: int,
        generators: Sequence[torch.Generator | None],
    ) -> torch.Tensor:
        """Votes of the base classifier on ``num`` noisy copies of each image: (B, K) int64 on ``x.device``.

        Copies of example i come from ``generators[i]`` in chunks of at most ``batch_size``; chunks of
        consecutive examples are packed into forward passes of at most ``batch_size`` images.
        """
        check_int(num, "num", minimum=1)
        batch, k = x.shape[0], self.num_classes
        counts = torch.zeros(batch * k, dtype=torch.int64, device=x.device)
        pieces = [(i, size) for i in range(batch) for size in _chunk_sizes(num, batch_size)]
        with eval_mode(self.base_classifier):
            group: list[tuple[int, int]] = []
            filled = 0
            for piece in pieces:
                if group and filled + piece[1] > batch_size:
                    counts += self._count_group(x, group, generators, batch * k)
                    group, filled = [], 0
                group.append(piece)
                filled += piece[1]
            if group:
                counts += self._count_group(x, group, generators, batch * k)
        return counts.view(batch, k)

    # ------------------------------------------------------------------ internals
    def _count_group(
        self,
        x: torch.Tensor,
        group: list[tuple[int, int]],
        generators: Sequence[torch.Generator | None],
        total_bins: int,
    ) -> torch.Tensor:
        inputs, owners = [], []
        for i, size in group:
            noise = torch.randn((size, *x.shape[1:]), generator=generators[i], device=x.device, dtype=x.dtype)
            inputs.append(x[i].unsqueeze(0) + self.sigma * noise)
            owners.append(torch.full((size,), i, dtype=torch.int64, device=x.device))
        scores = self.base_classifier(torch.cat(inputs))
        if not isinstance(scores, torch.Tensor) or scores.dim() != 2 or scores.shape[1] != self.num_classes:
            shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
            raise ValueError(f"base_classifier must return (N, num_classes={self.num_classes}) scores; got {shape}")
        votes = torch.cat(owners) * self.num_classes + scores.argmax(dim=1)
        return torch.bincount(votes, minlength=total_bins)

    def _check_single(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 3:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(
                f"x must be one image of shape (C, H, W) (use certify_batch/predict_batch for batches); got {shape}"
            )

    def _check_batch(
        self, x: torch.Tensor, batch_size: int, generators: Sequence[torch.Generator] | None
    ) -> list[torch.Generator | None]:
        check_images(x, "x")
        check_int(batch_size, "batch_size", minimum=1)
        if generators is None:
            return [None] * x.shape[0]
        generators = list(generators)
        if len(generators) != x.shape[0]:
            raise ValueError(f"need one generator per example: got {len(generators)} for {x.shape[0]} images")
        for i, generator in enumerate(generators):
            check_generator(generator, x.device, f"generators[{i}]")
        return generators
