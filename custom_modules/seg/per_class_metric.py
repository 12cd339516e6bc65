"""mmseg ``IoUMetric`` that also reports every class's IoU as a metric key (not only in the log table)."""

from __future__ import annotations

import numpy as np
from mmseg.evaluation import IoUMetric
from mmseg.registry import METRICS


@METRICS.register_module()
class PerClassIoUMetric(IoUMetric):
    """``IoUMetric`` (same arguments) adding ``IoU.<class name>`` keys, in percent, to its results.

    The keys reach the message hub as ``val/IoU.<class>`` scalars, so hyperparameter searches
    (``tools/search.py --metric IoU.cell``) and studies can use a single class's IoU.
    """

    def compute_metrics(self, results: list) -> dict[str, float]:
        """The ``IoUMetric`` summary plus ``IoU.<class>`` for each class of ``dataset_meta``."""
        metrics = super().compute_metrics(results)
        if self.format_only or not results:
            return metrics
        cols = tuple(zip(*results))
        intersect = sum(cols[0])
        union = sum(cols[1])
        iou = (
            (intersect / union).cpu().numpy() if hasattr(intersect, 'cpu') else np.asarray(intersect / union)
        )
        for name, value in zip(self.dataset_meta['classes'], iou, strict=True):
            metrics[f'IoU.{name}'] = float(np.round(value * 100, 2))
        return metrics
