"""Grouped, stratified k-fold splits of classifier samples: the detectors' folds (:func:`celldata.prepare.make_folds`).

A classifier sample (an image tile or an instance crop) belongs to an image; the folds are made over the images
(one cell type and one ``sample_id`` each) with the same algorithm and seed as ``tools/prepare_sartorius.py``, and
every sample follows its image. So for the same images and seed, classifier fold ``k`` holds exactly the images of
the detectors' fold ``k``. Shared by the classifier cross-validation and the SVM baseline.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from celldata import CLASSES
from celldata.prepare import make_folds

__all__ = ["grouped_stratified_folds"]


def _image_table(
    labels: np.ndarray, groups: np.ndarray, image_ids: np.ndarray, classes: Sequence[str]
) -> tuple[list[str], list[str], list[str], np.ndarray]:
    """The images of the samples: ids, cell types (their samples' most common class), groups, sample -> image.

    Raises:
        ValueError: an image whose samples have different groups.
    """
    keys, image_of = np.unique(image_ids.astype(str), return_inverse=True)
    group_of: dict[int, str] = {}
    votes: list[Counter] = [Counter() for _ in keys]
    for i, (k, g, lab) in enumerate(zip(image_of.tolist(), groups.tolist(), labels.tolist())):
        if group_of.setdefault(k, str(g)) != str(g):
            raise ValueError(f"image {keys[k]!r}: sample {i} has group {g!r}, earlier ones {group_of[k]!r}")
        votes[k][int(lab)] += 1
    types = []
    for v in votes:
        top = max(v.items(), key=lambda kv: (kv[1], -kv[0]))[0]  # most common class, ties: lowest label
        types.append(classes[top] if 0 <= top < len(classes) else str(top))
    return keys.tolist(), types, [group_of[k] for k in range(len(keys))], image_of


def grouped_stratified_folds(
    labels: Sequence[int],
    groups: Sequence[Any],
    n_folds: int = 5,
    seed: int = 0,
    *,
    image_ids: Sequence[Any] | None = None,
    classes: Sequence[str] = CLASSES,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold split that keeps every group in one fold: the detectors' folds, applied to samples.

    The folds are those of :func:`celldata.prepare.make_folds` over the samples' images (an image's cell type is
    ``classes[label]`` of its samples' most common label, its group its samples' group); every sample goes to
    its image's fold.

    Args:
        labels: ``(N,)`` class index of every sample.
        groups: ``(N,)`` group key (``sample_id``) of every sample.
        n_folds: Number of folds (>= 2).
        seed: Fold seed (the ``--seed`` of ``tools/prepare_sartorius.py``).
        image_ids: ``(N,)`` image of every sample (several samples per image: tiles, instance crops); ``None``:
            every sample is an image of its own.
        classes: Class names of the label indices (their order breaks ties between cell types as in
            ``make_folds``).

    Returns:
        ``n_folds`` pairs ``(train_indices, test_indices)`` (int64, sorted).

    Raises:
        ValueError: fewer than ``n_folds`` distinct groups, ``n_folds`` < 2, mismatched lengths, or an image
            whose samples have different groups.
    """
    labels = np.asarray(labels).reshape(-1)
    groups = np.asarray(groups, dtype=object).reshape(-1)
    ids = np.arange(len(labels)) if image_ids is None else np.asarray(image_ids, dtype=object).reshape(-1)
    if not len(labels) == len(groups) == len(ids):
        raise ValueError(
            f"{len(labels)} labels, {len(groups)} groups and {len(ids)} image ids: lengths differ"
        )
    if n_folds < 2:
        raise ValueError(f"folds must be >= 2, got {n_folds}")
    keys, types, image_groups, image_of = _image_table(labels, groups, ids, classes)
    fold_of = make_folds(keys, types, image_groups, n_folds=n_folds, seed=seed)[image_of]
    idx = np.arange(len(labels), dtype=np.int64)
    return [(idx[fold_of != k], idx[fold_of == k]) for k in range(n_folds)]
