"""Stratified k-fold splits grouped by ``sample_id``, shared by the classifier cross-validation and the SVM baseline."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

__all__ = ["grouped_stratified_folds"]


def grouped_stratified_folds(
    labels: Sequence[int], groups: Sequence[Any], n_folds: int = 5, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold split that keeps every group in one fold.

    Args:
        labels: ``(N,)`` class of every sample.
        groups: ``(N,)`` group key (``sample_id``) of every sample.
        n_folds: Number of folds (>= 2).
        seed: Shuffle seed.

    Returns:
        ``n_folds`` pairs ``(train_indices, test_indices)`` (int64, sorted).

    Raises:
        ValueError: fewer than ``n_folds`` distinct groups, or ``n_folds`` < 2.
    """
    labels = np.asarray(labels)
    groups = np.asarray(groups, dtype=object)
    if n_folds < 2:
        raise ValueError(f"folds must be >= 2, got {n_folds}")
    n_groups = len(set(groups.tolist()))
    if n_groups < n_folds:
        raise ValueError(f"only {n_groups} distinct sample_id value(s) for {n_folds} grouped folds")
    _, group_codes = np.unique(groups.astype(str), return_inverse=True)
    skf = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return [
        (np.sort(tr).astype(np.int64), np.sort(te).astype(np.int64))
        for tr, te in skf.split(np.zeros(len(labels)), labels, group_codes)
    ]
