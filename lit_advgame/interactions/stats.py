"""Means and standard errors of the two-stage (pairs, then contexts) Monte-Carlo estimates.

Standard errors are conditional on the given images (the images are data, not samples):

* per pair: ``std(Δ over contexts, ddof=1) / sqrt(T)``;
* per image: ``std(pair means, ddof=1) / sqrt(P)`` -- the usual two-stage estimate, which covers
  both the pair and the context sampling; when the pairs are exhaustive (every pair of the kind,
  no pair sampling) it is ``sqrt(Σ_p se_p²) / P`` instead;
* over images: ``sqrt(Σ_b se_b²) / B`` for the mean of the per-image estimates.

A standard error that cannot be estimated (a single sample) is NaN.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def mean_and_stderr(samples: torch.Tensor, dim: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over ``dim`` and the standard error of that mean (iid samples, ddof=1; NaN for one sample)."""
    count = samples.shape[dim]
    mean = samples.mean(dim=dim)
    if count < 2:
        return mean, torch.full_like(mean, math.nan)
    return mean, samples.std(dim=dim, correction=1) / math.sqrt(count)


def combine_stderr(stderr: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Standard error of the mean of independent estimates with standard errors ``stderr``."""
    count = stderr.shape[dim]
    return stderr.pow(2).sum(dim=dim).sqrt() / count


@dataclass
class TwoStageSummary:
    per_pair: torch.Tensor
    per_pair_stderr: torch.Tensor
    per_image: torch.Tensor
    per_image_stderr: torch.Tensor
    values: torch.Tensor
    stderr: torch.Tensor


def summarize_two_stage(deltas: torch.Tensor, exhaustive_pairs: bool) -> TwoStageSummary:
    """Summarise samples ``(B, O, P, T)`` (images, orders, pairs, contexts)."""
    per_pair, per_pair_stderr = mean_and_stderr(deltas, dim=-1)
    if exhaustive_pairs or per_pair.shape[-1] < 2:
        per_image = per_pair.mean(dim=-1)
        per_image_stderr = combine_stderr(per_pair_stderr, dim=-1)
    else:
        per_image, per_image_stderr = mean_and_stderr(per_pair, dim=-1)
    values = per_image.mean(dim=0)
    stderr = combine_stderr(per_image_stderr, dim=0)
    return TwoStageSummary(per_pair, per_pair_stderr, per_image, per_image_stderr, values, stderr)


def ratio_of_means(numerator: torch.Tensor, denominator: torch.Tensor, dim: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """``Σ a / Σ d`` over ``dim`` and its delta-method standard error (units along ``dim`` iid)."""
    count = 1
    for d in dim:
        count *= numerator.shape[d]
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
