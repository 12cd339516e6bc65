"""Foreground (cell vs background) IoU and Dice for mmseg validation, complementing ``IoUMetric``.

The counting is :func:`ensemble.metrics.foreground_counts`, the stack's one foreground IoU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from mmengine.evaluator import BaseMetric
from mmseg.registry import METRICS

from ensemble.metrics import ForegroundCounts, foreground_counts


@METRICS.register_module()
class ForegroundIoUMetric(BaseMetric):
    """Dataset-level binary IoU and Dice of "any cell class" vs background, in percent.

    Pixels whose ground truth equals ``ignore_index`` are excluded. Reported keys: ``fgIoU``, ``fgDice``
    (accumulated over all pixels of all images) and ``fgIoU_img`` (mean of per-image IoUs; an image with
    empty prediction and empty truth counts as 100).

    Args:
        background_labels: Labels counted as background (default ``(0,)``); all others are foreground, so
            the ``boundary`` class of the boundary dataset counts as cell.
        ignore_index: Ground-truth label to ignore.
    """

    default_prefix: str | None = None

    def __init__(
        self,
        background_labels: Sequence[int] = (0,),
        ignore_index: int = 255,
        collect_device: str = 'cpu',
        prefix: str | None = None,
    ) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.background_labels = tuple(int(b) for b in background_labels)
        self.ignore_index = int(ignore_index)

    def _foreground(self, labels: torch.Tensor) -> torch.Tensor:
        fg = torch.ones_like(labels, dtype=torch.bool)
        for b in self.background_labels:
            fg &= labels != b
        return fg

    def process(self, data_batch: dict, data_samples: Sequence[dict]) -> None:
        """Accumulate the foreground confusion counts of every image from ``pred_sem_seg`` / ``gt_sem_seg``."""
        for sample in data_samples:
            pred = sample['pred_sem_seg']['data'].squeeze()
            gt = sample['gt_sem_seg']['data'].squeeze().to(pred.device)
            if pred.shape != gt.shape:
                raise ValueError(
                    f'ForegroundIoUMetric: prediction {tuple(pred.shape)} != truth {tuple(gt.shape)}'
                )
            valid = (gt != self.ignore_index).cpu().numpy()
            p = self._foreground(pred).cpu().numpy()
            t = self._foreground(gt).cpu().numpy()
            self.results.append(foreground_counts(p, t, valid))

    def compute_metrics(self, results: list) -> dict[str, float]:
        """Return ``{'fgIoU', 'fgDice', 'fgIoU_img'}`` in percent (2 decimals)."""
        pooled = sum(results, ForegroundCounts())
        per_image = [r.iou for r in results]
        iou_img = sum(per_image) / len(per_image) if per_image else float('nan')
        return dict(
            fgIoU=round(100 * pooled.iou, 2),
            fgDice=round(100 * pooled.dice, 2),
            fgIoU_img=round(100 * iou_img, 2),
        )
