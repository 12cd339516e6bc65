"""Sartorius instance dataset for mmdet: COCO json from ``tools/prepare_sartorius.py``.

The json's ``file_name`` is relative to the data root (``train/<id>.png``), so the image prefix defaults to the
data root itself. Every image record also carries the Kaggle id (``kaggle_id`` or ``image_id``, a string) and
its ``cell_type``; both are copied into the data info (``kaggle_id``, ``cell_type``) so that they can be packed
as meta keys and reach :class:`custom_modules.det.SartoriusMetric` (per-cell-type scores) and
``tools/infer.py`` (prediction files keyed by Kaggle id).

Images are 8-bit grayscale PNGs; ``LoadImageFromFile`` (``color_type='color'``, the default) decodes them with
OpenCV as 3 identical BGR channels, so ImageNet-style 3-channel backbones and normalisation apply unchanged.
"""

from __future__ import annotations

from mmdet.datasets import CocoDataset
from mmdet.registry import DATASETS

from celldata import CLASSES
from celldata.coco import kaggle_id

__all__ = ["SartoriusCocoDataset"]


@DATASETS.register_module()
class SartoriusCocoDataset(CocoDataset):
    """COCO-format Sartorius dataset (classes shsy5y, astro, cort; category ids 1..3).

    Differences from :class:`mmdet.datasets.CocoDataset`:

    * ``METAINFO`` holds the three cell types (label ``i`` = ``ensemble.CLASSES[i]``).
    * ``data_prefix=dict(img='')`` (the default here) resolves ``file_name`` against ``data_root``.
    * Each data info gets ``kaggle_id`` (str; falls back to ``str(img_id)``) and ``cell_type`` (str or ``''``).
    """

    METAINFO = {
        "classes": CLASSES,
        "palette": [(220, 20, 60), (0, 160, 255), (60, 200, 60)],
    }

    def __init__(self, *args, data_prefix: dict | None = None, **kwargs) -> None:
        super().__init__(
            *args, data_prefix=data_prefix if data_prefix is not None else dict(img=""), **kwargs
        )

    def _join_prefix(self) -> None:
        """Join ``data_root`` with the prefixes; an empty image prefix means the data root itself."""
        super()._join_prefix()
        if not self.data_prefix.get("img") and self.data_root:
            self.data_prefix["img"] = self.data_root

    def parse_data_info(self, raw_data_info: dict) -> dict:
        """Parse one image record (see :meth:`CocoDataset.parse_data_info`) and add Kaggle id and cell type.

        Args:
            raw_data_info: ``{'raw_img_info': dict, 'raw_ann_info': list[dict]}``.

        Returns:
            The mmdet data info with extra ``kaggle_id`` and ``cell_type`` keys.
        """
        info = super().parse_data_info(raw_data_info)
        img = raw_data_info["raw_img_info"]
        info["kaggle_id"] = kaggle_id(img)
        info["cell_type"] = str(img.get("cell_type", "") or "")
        return info
