"""COCO image records of the Sartorius data: the one rule that gives an image's Kaggle id.

Every module that maps a COCO image to a Kaggle id (ground-truth readers, inference, the mmdet dataset, the dataset
report) uses :func:`kaggle_id`, so the three possible sources can never disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

__all__ = ["kaggle_id"]


def kaggle_id(image: Mapping[str, Any]) -> str:
    """The Kaggle id of a COCO ``images`` record.

    Order: its ``kaggle_id``, then its ``image_id`` (both written by ``celldata.prepare``), then the stem of its
    ``file_name``, then its numeric ``id`` as a string. Empty strings and None are skipped.

    Args:
        image: one entry of a COCO json's ``images`` list.

    Returns:
        The id string.

    Raises:
        ValueError: the record has none of these fields.
    """
    for key in ("kaggle_id", "image_id"):
        v = image.get(key)
        if v is not None and str(v) != "":
            return str(v)
    name = image.get("file_name")
    if name:
        return PurePosixPath(str(name).replace("\\", "/")).stem
    if image.get("id") is not None:
        return str(image["id"])
    raise ValueError(f"COCO image record without kaggle_id, image_id, file_name or id: {dict(image)!r}")
