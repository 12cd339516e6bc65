"""mmengine metric for Sartorius instance predictions: competition score + COCO mAP.

Registered in mmdet's ``METRICS`` as ``SartoriusMetric``. Ground truth comes from the packed data samples (the
dataset's raw ``instances`` with COCO-RLE ``mask``, plus ``kaggle_id`` and ``cell_type``; add them to
``PackDetInputs.meta_keys`` as ``configs/_base_/datasets/sartorius_instance.py`` does), so no annotation file
path has to be repeated in the evaluator and ``--cfg-options data_root=...`` keeps working.

Reported keys (prefix ``sartorius/`` added by mmengine):

* ``score`` — competition metric (mean over images of the mean precision over IoU 0.50:0.95), computed as a
  submission would be: predictions with ``score >= score_thr``, made disjoint by overlap removal
  (:func:`ensemble.masks.remove_overlaps`: highest score first, ``max_lost_frac``), then :func:`ensemble.metrics.evaluate`;
* ``score_<cell type>`` — the same over the images of one cell type; ``score@0.50`` ... ``score@0.95`` —
  per IoU threshold;
* ``bbox_mAP``, ``bbox_mAP_50``, ``bbox_mAP_75``, ``segm_mAP``, ... — COCO mAP over all predictions (pycocotools
  via :func:`ensemble.metrics.coco_map`, per-class categories, up to ``max_dets`` detections per image).

Cost: the competition score is computed at every evaluation; COCO mAP (pycocotools over up to ``max_dets``
detections per image, the slow part on dense images) only at every ``coco_interval``-th evaluation during
training and always at the last one (and in ``tools/test.py``), so ``save_best`` should use ``sartorius/score``.

Box-only detectors (YOLOX): with ``box_as_mask=True`` the competition score is computed on filled boxes (a lower
bound that tracks localisation quality); ``segm`` is then skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from mmdet.registry import METRICS
from mmengine.evaluator import BaseMetric
from mmengine.logging import MMLogger

from celldata import CLASSES
from celldata.instances import InstanceMasks
from custom_modules.conversion import boxes_to_instances, masks_to_instances, remove_overlaps, to_numpy
from ensemble.metrics import THRESHOLD_KEYS, coco_map, evaluate

__all__ = ["SartoriusMetric", "gt_from_data_sample"]


def gt_from_data_sample(sample: dict) -> tuple[InstanceMasks, np.ndarray]:
    """Ground-truth masks and 0-based labels of one packed data sample.

    Args:
        sample: A data sample dict with ``ori_shape`` and ``instances`` (mmdet raw instances: ``mask`` COCO RLE,
            ``bbox_label``, ``ignore_flag``); falls back to ``gt_instances.masks``/``labels`` when present.

    Returns:
        ``(masks, labels)``: true instance masks and int64 (N,) labels (crowd/ignored instances left out).

    Raises:
        ValueError: If the sample carries no ground truth.
    """
    h, w = (int(v) for v in sample["ori_shape"][:2])
    if "instances" in sample:
        inst = [a for a in sample["instances"] if not a.get("ignore_flag", 0)]
        rles = []
        for a in inst:
            m = a.get("mask")
            if not isinstance(m, dict) or "counts" not in m:
                raise ValueError(
                    f"image {sample.get('kaggle_id', sample.get('img_id'))}: ground-truth instance without a "
                    "COCO-RLE 'mask' (polygons are not supported)"
                )
            if isinstance(m["counts"], bytes):
                m = dict(m, counts=m["counts"].decode())
            rles.append(m)
        masks = InstanceMasks.from_coco_rles(rles) if rles else InstanceMasks.empty(h, w)
        labels = np.asarray([a["bbox_label"] for a in inst], dtype=np.int64)
        return masks, labels
    gt = sample.get("gt_instances")
    if gt is not None and "masks" in gt:
        return masks_to_instances(to_numpy(gt["masks"]), h, w), to_numpy(gt["labels"]).astype(np.int64)
    raise ValueError(
        f"image {sample.get('img_id')}: no ground truth in the data sample; add 'instances' to "
        "PackDetInputs.meta_keys (see configs/_base_/datasets/sartorius_instance.py)"
    )


@METRICS.register_module()
class SartoriusMetric(BaseMetric):
    """Competition metric and COCO mAP of instance predictions.

    Args:
        score_thr: Minimum confidence of predictions kept for the competition score.
        max_lost_frac: Overlap removal drops an instance losing more than this fraction of its pixels.
        iou_types: COCO mAP types to report, subset of ``('bbox', 'segm')``.
        box_as_mask: Score box-only predictions as filled rectangles (else the competition score is skipped
            for predictions without masks).
        max_dets: Max detections per image for COCO mAP.
        coco_interval: During training, compute COCO mAP only at every ``coco_interval``-th evaluation and at the
            last one (training's last iteration); ``0`` = only at the last one. Outside training (test loop,
            direct use) it is always computed.
        collect_device: ``'cpu'`` or ``'gpu'`` for collecting results across ranks.
        prefix: Key prefix of the reported metrics.
    """

    default_prefix: str | None = "sartorius"

    def __init__(
        self,
        score_thr: float = 0.3,
        max_lost_frac: float = 0.5,
        iou_types: Sequence[str] = ("bbox", "segm"),
        box_as_mask: bool = False,
        max_dets: int = 1000,
        coco_interval: int = 1,
        collect_device: str = "cpu",
        prefix: str | None = None,
    ) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        bad = [t for t in iou_types if t not in ("bbox", "segm")]
        if bad:
            raise ValueError(f"SartoriusMetric: unknown iou_types {bad}; expected 'bbox' and/or 'segm'")
        self.score_thr = float(score_thr)
        self.max_lost_frac = float(max_lost_frac)
        self.iou_types = tuple(iou_types)
        self.box_as_mask = bool(box_as_mask)
        self.max_dets = int(max_dets)
        if int(coco_interval) < 0:
            raise ValueError(f"SartoriusMetric: coco_interval must be >= 0, got {coco_interval}")
        self.coco_interval = int(coco_interval)
        self._n_evals = 0

    def _coco_due(self) -> bool:
        """Whether this evaluation computes COCO mAP (see ``coco_interval``)."""
        self._n_evals += 1
        from mmengine.logging import MessageHub

        hub = MessageHub.get_current_instance()
        if hub.get_info("loop_stage") != "val":
            return True  # test loop or direct use
        it, max_iters = hub.get_info("iter"), hub.get_info("max_iters")
        if it is None or max_iters is None or int(it) + 1 >= int(max_iters):
            return True  # unknown progress, or the last evaluation of training
        return self.coco_interval > 0 and self._n_evals % self.coco_interval == 0

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        """Convert one batch of predictions and ground truths to compact numpy records.

        Args:
            data_batch: Unused (mmengine interface).
            data_samples: Packed data samples (dicts) with ``pred_instances`` (``bboxes`` (N, 4) xyxy at the
                original scale, ``scores`` (N,), ``labels`` (N,), optional ``masks`` bool (N, H, W)).
        """
        for sample in data_samples:
            h, w = (int(v) for v in sample["ori_shape"][:2])
            image_id = str(sample.get("kaggle_id", sample.get("img_id")))
            gt_masks, gt_labels = gt_from_data_sample(sample)
            pred = sample["pred_instances"]
            boxes = to_numpy(pred["bboxes"]).astype(np.float32).reshape(-1, 4)
            scores = to_numpy(pred["scores"]).astype(np.float32).reshape(-1)
            labels = to_numpy(pred["labels"]).astype(np.int64).reshape(-1)
            if "masks" in pred:
                masks = masks_to_instances(pred["masks"], h, w)
            else:
                masks = None
            self.results.append(
                dict(
                    image_id=image_id,
                    cell_type=str(sample.get("cell_type", "") or ""),
                    gt_masks=gt_masks,
                    gt_labels=gt_labels,
                    boxes=boxes,
                    scores=scores,
                    labels=labels,
                    masks=masks,
                )
            )

    @staticmethod
    def _masks_or_boxes(record: dict, pred_masks: dict[str, InstanceMasks]) -> InstanceMasks:
        """Predicted masks of a record, or its boxes as rectangles (only their boxes matter for bbox mAP)."""
        if record["image_id"] in pred_masks:
            return pred_masks[record["image_id"]]
        gt = record["gt_masks"]
        return boxes_to_instances(record["boxes"], gt.height, gt.width)

    def compute_metrics(self, results: list) -> dict[str, float]:
        """Competition score (per class, per threshold) and COCO mAP over all processed images.

        Args:
            results: Records from :meth:`process` (gathered from all ranks).

        Returns:
            Metric name -> value.
        """
        logger = MMLogger.get_current_instance()
        out: dict[str, float] = {}
        truth = {r["image_id"]: r["gt_masks"] for r in results}
        has_masks = all(r["masks"] is not None for r in results)
        pred_masks: dict[str, InstanceMasks] = {}
        for r in results:
            if r["masks"] is not None:
                pred_masks[r["image_id"]] = r["masks"]
            elif self.box_as_mask:
                pred_masks[r["image_id"]] = boxes_to_instances(
                    r["boxes"], r["gt_masks"].height, r["gt_masks"].width
                )
        if len(pred_masks) == len(results):
            submitted = {}
            for r in results:
                keep = r["scores"] >= self.score_thr
                m = pred_masks[r["image_id"]].subset(np.flatnonzero(keep))
                submitted[r["image_id"]], _ = remove_overlaps(m, r["scores"][keep], self.max_lost_frac)
            cell_types = {r["image_id"]: r["cell_type"] for r in results if r["cell_type"]}
            report = evaluate(truth, submitted, cell_types or None)
            out["score"] = report.score
            for name in CLASSES:
                if name in report.per_class:
                    out[f"score_{name}"] = report.per_class[name]
            for key in THRESHOLD_KEYS:
                out[f"score@{key}"] = report.per_threshold[key]
            logger.info("competition metric (score_thr=%s):\n%s", self.score_thr, report.format_table())
        types = [t for t in self.iou_types if t == "bbox" or has_masks]
        if types and not self._coco_due():
            logger.info("COCO mAP skipped at this evaluation (coco_interval=%d)", self.coco_interval)
            types = []
        if types:
            scores = {r["image_id"]: r["scores"] for r in results}
            coco = coco_map(
                truth,
                {r["image_id"]: self._masks_or_boxes(r, pred_masks) for r in results},
                scores,
                truth_labels={r["image_id"]: r["gt_labels"] for r in results},
                pred_labels={r["image_id"]: r["labels"] for r in results},
                pred_boxes={r["image_id"]: r["boxes"] for r in results},
                iou_types=types,
                max_dets=self.max_dets,
            )
            out.update({k: float(v) for k, v in coco.items()})
        return out
