"""Binomial statistics of randomized smoothing (Cohen, Rosenfeld & Kolter, ICML 2019).

* :func:`clopper_pearson_lower` — the one-sided (1 − α) Clopper–Pearson lower confidence bound
  ``p̲_A`` on the top-class probability used by CERTIFY (paper Alg. 1, ``LowerConfBound``).
* :func:`binomial_test_pvalue` — the two-sided binomial test of PREDICT (paper Alg. 1,
  ``BinomPValue``; Hung & Fithian, arXiv:1610.03944).
* :func:`certified_radius` — the L2 radius ``R = σ Φ⁻¹(p̲_A)`` of Theorem 1 with ``p̲_B = 1 − p̲_A``.
* :func:`radius_cap` — the largest radius CERTIFY can return with ``n`` samples at level α.
* :func:`certified_accuracy` — "approximate certified accuracy" at radius r (Cohen's ``analyze.py``):
  the fraction of examples that are correct *and* certified with radius ≥ r; abstentions are wrong.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy.stats import beta, binomtest, norm

from lit_advgame.utils.checks import check_int, check_positive

ABSTAIN = -1
"""Class returned by PREDICT/CERTIFY when the smoothed classifier abstains."""


def check_alpha(alpha: float, name: str = "alpha") -> None:
    """Check a significance level lies in the open interval (0, 1)."""
    check_positive(alpha, name)
    if float(alpha) >= 1.0:
        raise ValueError(f"{name} must be a significance level in (0, 1); got {alpha!r}")


def check_sigma(sigma: float, name: str = "sigma") -> None:
    """Check the noise level σ of the smoothing distribution N(0, σ² I) is finite and > 0."""
    try:
        value = float(sigma)
    except (TypeError, ValueError):
        raise TypeError(f"{name} (the Gaussian noise std in pixel space) must be a number; got {sigma!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"{name} (the Gaussian noise std in pixel space) must be finite and > 0; got {sigma!r} "
            "(σ = 0 is no smoothing: use a standard classifier instead)"
        )


def clopper_pearson_lower(successes: int | np.ndarray, trials: int | np.ndarray, alpha: float) -> float | np.ndarray:
    """One-sided (1 − α) Clopper–Pearson lower bound on a binomial proportion.

    ``LowerConfBound`` of CERTIFY (Cohen, Rosenfeld & Kolter, ICML 2019, pseudocode).

    ``p̲ = Beta.ppf(α; k, n − k + 1)`` for ``k = successes ≥ 1`` and ``p̲ = 0`` for ``k = 0``. It equals
    the lower end of the exact two-sided interval at level ``1 − 2α``
    (``statsmodels.proportion_confint(k, n, alpha=2α, method="beta")[0]``, used by Cohen et al.;
    ``scipy.stats.binomtest(k, n).proportion_ci(1 − 2α, "exact").low``). With ``k = n`` it is ``α^{1/n}``.

    Works element-wise on arrays; returns a float for scalar input.
    """
    check_alpha(alpha)
    k = np.asarray(successes)
    n = np.asarray(trials)
    if not (np.issubdtype(k.dtype, np.integer) and np.issubdtype(n.dtype, np.integer)):
        raise TypeError(f"successes and trials must be integers; got dtypes {k.dtype} and {n.dtype}")
    if np.any(n < 1) or np.any(k < 0) or np.any(k > n):
        raise ValueError(f"need trials >= 1 and 0 <= successes <= trials; got successes={k}, trials={n}")
    k_safe = np.maximum(k, 1)  # Beta(0, ·) is undefined; those entries are replaced by 0 below
    bound = np.where(k == 0, 0.0, beta.ppf(alpha, k_safe, n - k + 1))
    return float(bound) if bound.ndim == 0 else bound


def binomial_test_pvalue(n1: int, n2: int) -> float:
    """Two-sided p-value of observing ``n1`` successes in ``n1 + n2`` trials under p = 1/2.

    PREDICT abstains when this exceeds α (the top two classes are not significantly different): the
    ``BinomPValue`` of Cohen, Rosenfeld & Kolter, ICML 2019, pseudocode of PREDICT.
    Replaces the ``scipy.stats.binom_test`` of Cohen's code, which SciPy removed.
    """
    check_int(n1, "n1", minimum=0)
    check_int(n2, "n2", minimum=0)
    if n1 + n2 == 0:
        raise ValueError("binomial_test_pvalue needs n1 + n2 >= 1 trials")
    return float(binomtest(n1, n1 + n2, p=0.5).pvalue)


def certified_radius(p_lower: float | np.ndarray, sigma: float) -> float | np.ndarray:
    """L2 radius ``σ Φ⁻¹(p̲_A)`` of Cohen et al., Thm. 1 (with ``p̲_B = 1 − p̲_A``).

    Meaningful for ``p̲_A ≥ 1/2`` (radius ≥ 0); CERTIFY abstains below 1/2.
    """
    check_sigma(sigma)
    radius = float(sigma) * norm.ppf(np.asarray(p_lower, dtype=np.float64))
    return float(radius) if np.ndim(radius) == 0 else radius


def radius_cap(n: int, alpha: float, sigma: float) -> float:
    """Largest radius CERTIFY can return with ``n`` estimation samples: ``σ Φ⁻¹(α^{1/n})``.

    Reached when all ``n`` noisy samples vote for the guessed class (e.g. 3.81σ for n = 10⁵, α = 10⁻³).
    """
    check_int(n, "n", minimum=1)
    check_alpha(alpha)
    return certified_radius(float(alpha) ** (1.0 / n), sigma)


def _as_numpy(values: torch.Tensor | np.ndarray | Sequence, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional (one entry per example); got shape {array.shape}")
    return array


def certified_accuracy(
    predictions: torch.Tensor | np.ndarray | Sequence[int],
    labels: torch.Tensor | np.ndarray | Sequence[int],
    radii: torch.Tensor | np.ndarray | Sequence[float],
    radius_grid: Sequence[float] | np.ndarray,
) -> np.ndarray:
    """Approximate certified accuracy at each radius r of ``radius_grid`` (Cohen et al., Sec. 4).

    The fraction of examples with ``prediction == label`` and ``radius ≥ r``; abstentions
    (``prediction == ABSTAIN``) always count as wrong. Returns a float64 array shaped like the grid.
    """
    pred = _as_numpy(predictions, "predictions").astype(np.int64)
    label = _as_numpy(labels, "labels").astype(np.int64)
    radius = _as_numpy(radii, "radii").astype(np.float64)
    grid = np.asarray(radius_grid, dtype=np.float64).reshape(-1)
    if not (len(pred) == len(label) == len(radius)):
        raise ValueError(
            f"predictions, labels and radii must have the same length; got {len(pred)}, {len(label)}, {len(radius)}"
        )
    if len(pred) == 0:
        raise ValueError("certified_accuracy needs at least one example")
    if np.any(~np.isfinite(grid)) or np.any(grid < 0):
        raise ValueError(f"radius_grid must hold finite radii >= 0; got {grid.tolist()}")
    correct = (pred == label) & (pred != ABSTAIN)
    return (correct[None, :] & (radius[None, :] >= grid[:, None])).mean(axis=1)
