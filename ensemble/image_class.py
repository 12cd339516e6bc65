"""Image-level cell-type probabilities from a classifier, for ``fusion.image_class: classifier``.

The probability file is written by ``tools/classify_images.py`` (``custom_modules.cls.predict``)::

    {"format": "cell-type-probabilities", "version": 1, "classes": ["shsy5y", "astro", "cort"],
     "images": {"<kaggle id>": [p_shsy5y, p_astro, p_cort], ...}, ...}

Rule (:func:`classifier_label`): an image takes the classifier's most probable class when that probability is at
least ``threshold``; otherwise (or when the image is missing from the file) it keeps the detectors' majority class.
Framework-free (numpy only).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from celldata import CLASSES

__all__ = [
    "FORMAT",
    "read_class_probabilities",
    "load_class_probabilities",
    "classifier_label",
    "image_labels",
    "classifier_image_label",
]

FORMAT = "cell-type-probabilities"


def read_class_probabilities(path: str | os.PathLike) -> tuple[list[str], dict[str, np.ndarray]]:
    """Read and check a class probability file.

    Returns:
        ``(classes, {kaggle id: float64 (C,) probabilities})``.

    Raises:
        ValueError: unreadable file, wrong ``format``, classes not a subset of the known classes, or a row that is
            not ``C`` probabilities summing to 1 (the image id named).
    """
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read class probability file ({e})") from e
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise ValueError(f"{path}: field 'format' must be {FORMAT!r}")
    classes = d.get("classes")
    if not isinstance(classes, list) or not classes or not set(classes) <= set(CLASSES):
        raise ValueError(
            f"{path}: field 'classes' must list class names out of {list(CLASSES)}, got {classes!r}"
        )
    images = d.get("images")
    if not isinstance(images, dict):
        raise ValueError(f"{path}: field 'images' must map image ids to probability lists")
    out = {}
    for kid, p in images.items():
        try:
            arr = np.asarray(p, dtype=np.float64)
        except (TypeError, ValueError):
            arr = np.zeros(0)
        if (
            arr.shape != (len(classes),)
            or not np.isfinite(arr).all()
            or (arr < 0).any()
            or abs(arr.sum() - 1) > 1e-4
        ):
            raise ValueError(f"{path}: images[{kid!r}] must be {len(classes)} probabilities summing to 1")
        out[str(kid)] = arr
    return list(classes), out


@functools.lru_cache(maxsize=4)
def _cached(path: str, mtime: float) -> tuple[list[str], dict[str, np.ndarray]]:
    return read_class_probabilities(path)


def load_class_probabilities(path: str | os.PathLike) -> tuple[list[str], dict[str, np.ndarray]]:
    """:func:`read_class_probabilities`, cached per path and modification time (one read per ensemble run).

    Raises:
        ValueError: missing file or bad content.
    """
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise ValueError(f"class probability file not found: {p}")
    return _cached(p, os.path.getmtime(p))


def classifier_label(
    probs: np.ndarray | Sequence[float] | None,
    prob_classes: Sequence[str],
    fallback: int | None,
    threshold: float,
    classes: Sequence[str] = CLASSES,
) -> tuple[int | None, bool]:
    """The image's label under ``image_class: classifier``.

    Args:
        probs: ``(C,)`` class probabilities of the image, or ``None`` when the classifier did not see it.
        prob_classes: Class names of ``probs`` (the file's ``classes``).
        fallback: Label to keep below the threshold (the detectors' majority; may be ``None``).
        threshold: Minimum top probability for the classifier to decide.
        classes: The ensemble's class names (labels index them).

    Returns:
        ``(label, from_classifier)``.
    """
    if probs is None:
        return fallback, False
    p = np.asarray(probs, dtype=np.float64)
    top = int(np.argmax(p))
    if p[top] < threshold:
        return fallback, False
    return list(classes).index(prob_classes[top]), True


def image_labels(
    majority: Mapping[str, int | None], probs_path: str | os.PathLike, threshold: float
) -> dict[str, tuple[int | None, bool]]:
    """:func:`classifier_label` of many images at once (``{image id: majority label}`` in, same keys out)."""
    prob_classes, probs = load_class_probabilities(probs_path)
    return {k: classifier_label(probs.get(k), prob_classes, v, threshold) for k, v in majority.items()}


def classifier_image_label(
    image_id: str, majority: int | None, probs_path: str | os.PathLike, threshold: float
) -> int | None:
    """The label of one image under ``fusion.image_class: classifier`` (used by ``ensemble.masks``).

    Args:
        image_id: Kaggle image id.
        majority: The detectors' score-weighted majority label (the fallback).
        probs_path: Class probability file.
        threshold: Minimum top probability for the classifier to decide.

    Returns:
        The classifier's label, or ``majority``.
    """
    prob_classes, probs = load_class_probabilities(probs_path)
    return classifier_label(probs.get(str(image_id)), prob_classes, majority, threshold)[0]
