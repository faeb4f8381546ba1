"""Means and standard errors of the two-stage (pairs, then contexts) Monte-Carlo estimates.

Standard errors are conditional on the given images (the images are data, not samples):

* per pair: ``scipy.stats.sem`` of ``Δ`` over the ``T`` contexts (ddof=1), and exactly 0 for an
  order whose contexts were enumerated (every ``m``-subset used once, see
  :func:`~lit_advgame.interactions.sampling.enumerate_subsets`);
* per image: ``sem`` of the pair means over the ``P`` sampled pairs -- the usual two-stage
  estimate, which covers both the pair and the context sampling; when the pairs are exhaustive
  (every pair of the kind, no pair sampling) it is ``sqrt(Σ_p se_p²) / P`` instead;
* over images: ``sqrt(Σ_b se_b²) / B`` for the mean of the per-image estimates.

A standard error that cannot be estimated (a single sample) is NaN. Enumerated orders pad the
context axis with NaN after their ``C(n-2, m)`` contexts; the means here ignore the padding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.stats
import torch

#: a pair is "zero up to rounding" when its mean ``|Δv|`` is at most this many machine epsilons
#: (of the values' dtype) times the largest ``|v|`` of its image (see :func:`rounding_floor`)
ROUNDING_ULPS = 64


def sem(samples: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``scipy.stats.sem`` (ddof=1) of ``samples`` along ``dim`` as a tensor like the input (NaN for one sample)."""
    count = samples.shape[dim]
    shape = list(samples.shape)
    del shape[dim % samples.dim()]
    if count < 2:
        return torch.full(shape, math.nan, dtype=samples.dtype, device=samples.device)
    array = samples.detach().cpu().numpy()
    out = np.asarray(scipy.stats.sem(array, axis=dim, ddof=1, nan_policy="propagate"))
    return torch.from_numpy(out).to(dtype=samples.dtype, device=samples.device).reshape(shape)


def mean_and_stderr(
    samples: torch.Tensor, dim: int = -1, *, population: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over ``dim`` and the standard error of that mean (ddof=1; NaN for one sample).

    ``population=N``: the ``k`` samples were drawn **without replacement** from a finite population
    of ``N`` units; the variance of the mean is then ``s² / k · (N - k) / N`` (Cochran, *Sampling
    Techniques*, Eq. 2.12 with the unbiased ddof=1 estimate ``s²`` of ``S²`` (2.13)), which is 0
    when every unit is used. Without ``population`` the samples are iid.
    """
    count = samples.shape[dim]
    mean = samples.mean(dim=dim)
    stderr = sem(samples, dim)
    if population is not None and count >= 2:
        stderr = stderr * math.sqrt(max(population - count, 0) / population)
    return mean, stderr


def combine_stderr(stderr: torch.Tensor, dim: int | Sequence[int] = -1) -> torch.Tensor:
    """Standard error of the mean of independent estimates with standard errors ``stderr``."""
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    count = math.prod(stderr.shape[d] for d in dims)
    return stderr.pow(2).sum(dim=dims).sqrt() / count


def context_stats(deltas: torch.Tensor, enumerated: Sequence[bool] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair mean over the contexts (last dim) of ``(..., O, P, T)`` samples and its standard error.

    ``enumerated[o]``: order ``o`` used every context once (NaN padding after them): its mean
    ignores the padding and its standard error is exactly 0.
    """
    if enumerated is None or not any(enumerated):
        return mean_and_stderr(deltas, dim=-1)
    mask = torch.tensor(list(enumerated), dtype=torch.bool, device=deltas.device).view(-1, 1)  # (O, 1)
    mean = torch.where(mask, deltas.nanmean(dim=-1), deltas.mean(dim=-1))
    stderr = torch.where(mask, torch.zeros((), dtype=deltas.dtype), sem(deltas, -1))
    return mean, stderr


@dataclass
class TwoStageSummary:
    per_pair: torch.Tensor
    per_pair_stderr: torch.Tensor
    per_image: torch.Tensor
    per_image_stderr: torch.Tensor
    values: torch.Tensor
    stderr: torch.Tensor

    def aggregates(self) -> dict[str, torch.Tensor]:
        """``values``, ``stderr`` (over images) and ``per_image``, ``per_image_stderr``: the result fields."""
        return {
            "values": self.values,
            "stderr": self.stderr,
            "per_image": self.per_image,
            "per_image_stderr": self.per_image_stderr,
        }


def summarize_two_stage(
    deltas: torch.Tensor, exhaustive_pairs: bool, enumerated: Sequence[bool] | None = None
) -> TwoStageSummary:
    """Summarise samples ``(B, O, P, T)`` (images, orders, pairs, contexts); see the module docstring."""
    per_pair, per_pair_stderr = context_stats(deltas, enumerated)
    if exhaustive_pairs or per_pair.shape[-1] < 2:
        per_image = per_pair.mean(dim=-1)
        per_image_stderr = combine_stderr(per_pair_stderr, dim=-1)
    else:
        per_image, per_image_stderr = mean_and_stderr(per_pair, dim=-1)
    values = per_image.mean(dim=0)
    stderr = combine_stderr(per_image_stderr, dim=0)
    return TwoStageSummary(per_pair, per_pair_stderr, per_image, per_image_stderr, values, stderr)


def ratio_of_means(
    numerator: torch.Tensor, denominator: torch.Tensor, dim: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``Σ a / Σ d`` over ``dim`` and its delta-method standard error (units along ``dim`` iid)."""
    count = math.prod(numerator.shape[d] for d in dim)
    mean_a = numerator.mean(dim=dim)
    mean_d = denominator.mean(dim=dim)
    ratio = mean_a / mean_d
    if count < 2:
        return ratio, torch.full_like(ratio, math.nan)
    shape = list(ratio.shape)
    expanded = ratio
    for d in sorted(d % numerator.dim() for d in dim):
        expanded = expanded.unsqueeze(d)
    residual = numerator - expanded * denominator
    var = residual.pow(2).sum(dim=dim) / (count - 1)
    stderr = var.sqrt() / math.sqrt(count) / mean_d
    return ratio, stderr.reshape(shape)


def rounding_floor(scale: torch.Tensor, dtype: torch.dtype, ulps: float = ROUNDING_ULPS) -> torch.Tensor:
    """``ulps · eps(dtype) · scale``: below this, a mean ``|Δv|`` is rounding noise of values of size ``scale``.

    ``Δv = v(S∪{i,j}) - v(S∪{i}) - v(S∪{j}) + v(S)`` of a pair that does not interact (e.g. two
    players on the same linear piece of a ReLU net) is zero in exact arithmetic but a few ulps of
    ``|v|`` in floating point; ratios of such terms (``D^(m)``) are then noise, not information.
    """
    return ulps * torch.finfo(dtype).eps * scale
