"""Datasets registered in the mmdet registry."""

from .sartorius_coco import SartoriusCocoDataset

__all__ = ["SartoriusCocoDataset"]
