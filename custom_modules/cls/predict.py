"""Image-level cell-type probabilities from a trained image-tile classifier (for the ensemble's ``image_class``).

Every tile of an image (the config's ``test_dataloader.dataset`` tile settings) goes through the model; the image's
probabilities are the mean of its tiles' softmax outputs.

Output file (JSON, written atomically), keyed by the Kaggle image id (the file stem)::

    {"format": "cell-type-probabilities", "version": 1,
     "classes": ["shsy5y", "astro", "cort"],
     "config": "...", "checkpoint": "...", "tile_size": 128, "tile_mode": "grid",
     "images": {"<kaggle id>": [p_shsy5y, p_astro, p_cort], ...}}

Each probability row sums to 1. :func:`ensemble.image_class.read_class_probabilities` reads and checks it.
"""

from __future__ import annotations

import os
import os.path as osp
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from celldata.fileio import atomic_write_json
from celldata.images import ImageItem, list_images
from ensemble.image_class import FORMAT, read_class_probabilities

from .data import image_tiles, read_gray

__all__ = [
    "FORMAT",
    "source_images",
    "predict_image_probabilities",
    "write_image_probabilities",
    "read_class_probabilities",
]


def source_images(source: str | os.PathLike, data_root: str | os.PathLike | None = None) -> list[ImageItem]:
    """The images of a folder or a COCO json: :func:`celldata.images.list_images` of whichever ``source`` is.

    Args:
        source: Folder of images, or a COCO json whose ``file_name`` entries are relative to ``data_root``.
        data_root: Root of a COCO json's ``file_name`` (default: the json's grandparent, the prepared layout
            ``<root>/annotations/x.json``).

    Returns:
        The images (id = Kaggle id), in a deterministic order.

    Raises:
        ValueError: no images, unreadable json; FileNotFoundError: missing source or listed image.
    """
    src = Path(source)
    if src.is_dir():
        return list_images(images_dir=src)
    return list_images(ann_file=src, data_root=data_root)


@torch.no_grad()
def predict_image_probabilities(
    config: str | os.PathLike,
    checkpoint: str | os.PathLike,
    source: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    batch_size: int = 64,
    device: str = "cpu",
    cfg_options: Mapping[str, Any] | None = None,
) -> tuple[list[str], dict[str, list[float]], dict[str, Any]]:
    """Class probabilities of every image of ``source``.

    Args:
        config: Image-tile classifier config (``test_dataloader.dataset.type == 'SartoriusImageTileDataset'``).
        checkpoint: Trained checkpoint.
        source: Folder of images or COCO json (see :func:`source_images`).
        data_root: Root of a COCO json's ``file_name`` entries.
        batch_size: Tiles per forward pass.
        device: Torch device.
        cfg_options: Config overrides.

    Returns:
        ``(classes, {kaggle id: [p per class]}, meta)``; ``meta`` holds config, checkpoint and tile settings.

    Raises:
        ValueError: not an image-tile config, bad source; FileNotFoundError: missing checkpoint or source.
    """
    from mmengine.registry import MODELS
    from mmengine.runner import load_checkpoint

    from custom_modules.config import load_config
    from custom_modules.runner_utils import register_library

    if not osp.isfile(checkpoint):
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    cfg = load_config(config, cfg_options)
    register_library(cfg)
    ds = cfg.test_dataloader.dataset
    if ds.get("type") != "SartoriusImageTileDataset":
        raise ValueError(
            f"{config}: image-level probabilities need an image-tile classifier config "
            f"(test dataset SartoriusImageTileDataset), got {ds.get('type')!r}"
        )
    tile, mode, stride = int(ds.get("tile_size", 128)), ds.get("mode", "grid"), ds.get("stride")
    classes = list(ds.get("classes", cfg.get("classes", ("shsy5y", "astro", "cort"))))
    model = MODELS.build(cfg.model)
    load_checkpoint(model, str(checkpoint), map_location="cpu", logger="silent")
    model.to(device).eval()
    probs: dict[str, list[float]] = {}
    for item in source_images(source, data_root):
        kid, path = item.image_id, item.path
        tiles = np.stack([t for _, t in image_tiles(read_gray(path), tile, mode, stride)])
        scores = []
        for i in range(0, len(tiles), batch_size):
            x = torch.from_numpy(tiles[i : i + batch_size]).float()[:, None]
            data = model.data_preprocessor({"inputs": x, "data_samples": None}, False)
            scores.append(model(data["inputs"], mode="tensor").softmax(1).cpu())
        p = torch.cat(scores).mean(0)
        probs[kid] = (p / p.sum()).tolist()
    meta = {"config": str(config), "checkpoint": str(checkpoint), "tile_size": tile, "tile_mode": mode}
    return classes, probs, meta


def write_image_probabilities(
    path: str | os.PathLike,
    classes: Sequence[str],
    probs: Mapping[str, Sequence[float]],
    meta: Mapping | None = None,
) -> None:
    """Write the probability file (see the module docstring) atomically."""
    payload = {"format": FORMAT, "version": 1, "classes": list(classes), **dict(meta or {})}
    payload["images"] = {k: [float(v) for v in p] for k, p in probs.items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, payload)
