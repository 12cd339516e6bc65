"""Evaluation metrics registered in the mmdet registry."""

from .sartorius_metric import SartoriusMetric

__all__ = ["SartoriusMetric"]
