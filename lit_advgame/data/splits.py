"""Seeded, stratified train/val/test splits of a labelled dataset."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.model_selection import train_test_split


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
    to val; the rest to train. The split is stratified by scikit-learn's
    ``train_test_split(stratify=...)`` (a ``StratifiedShuffleSplit``), twice: test is split off
    all examples, then val off the rest, each class in proportion to its size (up to rounding),
    with ``random_state = seed mod 2**32`` (NumPy's seed range). The result depends only on
    ``labels`` and ``seed``. Every class needs at least two examples, and each split at least
    as many examples as there are classes (a ``ValueError`` says which does not hold).

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
    y = labels.numpy()
    classes, counts = np.unique(y, return_counts=True)
    if counts.min() < 2:
        raise ValueError(
            f"labels: cannot stratify by class, class {int(classes[counts.argmin()])} has a single example "
            "(every class needs at least 2)"
        )
    random_state = int(seed) % 2**32
    rest, test = np.arange(n), np.arange(0)
    try:
        if n_test > 0:
            rest, test = train_test_split(rest, test_size=n_test, stratify=y, random_state=random_state)
        train, val = train_test_split(rest, test_size=n_val, stratify=y[rest], random_state=random_state)
    except ValueError as err:  # a split smaller than the number of classes, or a class all used up by test
        raise ValueError(
            f"cannot split {n} examples of {len(classes)} classes stratified by class with "
            f"val_fraction={val_fraction}, test_fraction={test_fraction} (train={n_train}, val={n_val}, "
            f"test={n_test}): {err}"
        ) from err
    return tuple(torch.from_numpy(np.sort(part)).long() for part in (train, val, test))
