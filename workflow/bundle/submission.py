"""Checking a submission CSV against the test images, as Kaggle reads it (the notebook's last cell)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["validate_submission"]


def validate_submission(csv_path: str | os.PathLike, images_dir: str | os.PathLike) -> dict[str, Any]:
    """Check a submission against the test images with the project's reader (as Kaggle would).

    Every ``<id>.png`` of ``images_dir`` must have at least one row; every RLE must decode for that image's size;
    no two masks of one image may overlap; no unknown id.

    Args:
        csv_path: The submission (``id,predicted``).
        images_dir: The test images (``<id>.png``).

    Returns:
        ``{'images': I, 'instances': N, 'empty_images': E, 'per_image': {id: n}}``.

    Raises:
        ValueError: Naming the file, row and id (from :func:`ensemble.submission.read_submission`), or the ids
            without any row.
    """
    from celldata.images import read_image_size
    from ensemble.submission import read_submission

    images = sorted(Path(images_dir).glob("*.png"))
    if not images:
        raise ValueError(f"{images_dir}: no .png test images")
    sizes = {p.stem: read_image_size(p) for p in images}
    masks = read_submission(csv_path, expected_ids=sizes, heights_widths=sizes)
    missing = sorted(set(sizes) - set(masks))
    if missing:
        raise ValueError(f"{csv_path}: {len(missing)} test image(s) without any row, e.g. {missing[:3]}")
    per_image = {k: len(v) for k, v in masks.items()}
    return {
        "images": len(per_image),
        "instances": int(sum(per_image.values())),
        "empty_images": sum(1 for n in per_image.values() if n == 0),
        "per_image": per_image,
    }
