"""Seeded, stratified train/val/test splits of a labelled dataset."""

from __future__ import annotations

import torch


def _check_fraction(value: float, name: str, *, allow_zero: bool) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number; got {value!r}") from None
    low_ok = v >= 0 if allow_zero else v > 0
    if not (low_ok and v < 1):
        interval = "[0, 1)" if allow_zero else "(0, 1)"
        raise ValueError(f"{name} must be in {interval}; got {value!r}")
    return v


def check_fractions(val_fraction: float, test_fraction: float, *, allow_zero_test: bool = False) -> None:
    """Validate split fractions: ``val_fraction`` in (0, 1), ``test_fraction`` in (0, 1)
    (or [0, 1) with ``allow_zero_test``) and their sum < 1 so the training split is non-empty."""
    v = _check_fraction(val_fraction, "val_fraction", allow_zero=False)
    t = _check_fraction(test_fraction, "test_fraction", allow_zero=allow_zero_test)
    if v + t >= 1:
        raise ValueError(f"val_fraction + test_fraction must be < 1 to leave a training split; got {v} + {t} = {v + t}")


def stratified_split(
    labels: torch.Tensor, val_fraction: float, test_fraction: float, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split ``range(len(labels))`` into disjoint, covering (train, val, test) index tensors.

    Exactly ``round(N * test_fraction)`` examples go to test and ``round(N * val_fraction)``
    to val; the rest to train. The split is stratified: every example gets its quantile
    ``(j + 0.5) / n_c`` inside a seeded random permutation of its class ``c`` (``n_c``
    examples); examples sorted by quantile (ties broken by a seeded random key) are dealt
    to test, then val, then train, so each class is spread over the splits in proportion
    to its size (up to rounding). The result depends only on ``labels`` and ``seed``.

    Returns three sorted int64 index tensors. ``test_fraction`` may be 0 (empty test split).

    >>> labels = torch.arange(20) % 2
    >>> train, val, test = stratified_split(labels, 0.2, 0.1, seed=0)
    >>> len(train), len(val), len(test), labels[val].tolist().count(1)
    (14, 4, 2, 2)
    """
    check_fractions(val_fraction, test_fraction, allow_zero_test=True)
    labels = torch.as_tensor(labels).flatten().long()
    n = labels.numel()
    n_test = int(round(n * test_fraction))
    n_val = int(round(n * val_fraction))
    n_train = n - n_val - n_test
    if n_val < 1 or n_train < 1 or (test_fraction > 0 and n_test < 1):
        raise ValueError(
            f"cannot split {n} examples with val_fraction={val_fraction}, test_fraction={test_fraction}: "
            f"sizes would be train={n_train}, val={n_val}, test={n_test} (each must be >= 1)"
        )
    generator = torch.Generator().manual_seed(int(seed))
    quantile = torch.empty(n, dtype=torch.float64)
    for c in torch.unique(labels).tolist():
        members = torch.nonzero(labels == c).flatten()
        order = members[torch.randperm(members.numel(), generator=generator)]
        quantile[order] = (torch.arange(members.numel(), dtype=torch.float64) + 0.5) / members.numel()
    # Sort by quantile, ties in random order: shuffle first, then a stable sort by quantile.
    shuffled = torch.randperm(n, generator=generator)
    order = shuffled[torch.argsort(quantile[shuffled], stable=True)]
    test_idx = order[:n_test]
    val_idx = order[n_test : n_test + n_val]
    train_idx = order[n_test + n_val :]
    return train_idx.sort().values, val_idx.sort().values, test_idx.sort().values
