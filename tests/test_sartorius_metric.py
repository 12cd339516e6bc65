"""SartoriusMetric (competition score + COCO mAP inside mmengine evaluation) and the result conversions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("mmdet")

from celldata.instances import InstanceMasks  # noqa: E402
from celldata.rle import coco_rle_encode  # noqa: E402
from custom_modules.conversion import boxes_to_instances, masks_to_instances, remove_overlaps  # noqa: E402
from custom_modules.det import SartoriusMetric  # noqa: E402

H, W = 64, 80


def _disc_masks(n: int, seed: int = 0) -> np.ndarray:
    """n disjoint rectangles-with-holes as full-frame bool masks (n, H, W)."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, H, W), dtype=bool)
    for i in range(n):
        x0, y0 = 2 + (i % 4) * 19, 2 + (i // 4) * 20
        w, h = rng.integers(8, 16), rng.integers(8, 17)
        masks[i, y0 : y0 + h, x0 : x0 + w] = True
        masks[i, y0 + 2, x0 + 2] = False  # not a plain rectangle
    return masks


def _sample(
    image_id: str, cell_type: str, gt: np.ndarray, gt_labels, pred: np.ndarray | None, pred_labels, scores
):
    inst = []
    for m, lab in zip(gt, gt_labels):
        ys, xs = np.nonzero(m)
        inst.append(
            dict(
                bbox=[float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)],
                bbox_label=int(lab),
                mask=coco_rle_encode(m),
                ignore_flag=0,
            )
        )
    pi = {}
    if pred is not None:
        boxes = []
        for m in pred:
            ys, xs = np.nonzero(m)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        pi = dict(
            bboxes=torch.tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)),
            scores=torch.tensor(np.asarray(scores, dtype=np.float32)),
            labels=torch.tensor(np.asarray(pred_labels, dtype=np.int64)),
            masks=torch.from_numpy(pred),
        )
    return dict(
        ori_shape=(H, W), img_id=0, kaggle_id=image_id, cell_type=cell_type, instances=inst, pred_instances=pi
    )


def _run(metric: SartoriusMetric, samples: list[dict]) -> dict[str, float]:
    metric.process({}, samples)
    return metric.compute_metrics(metric.results)


def test_perfect_predictions_score_one() -> None:
    g1, g2 = _disc_masks(8, 0), _disc_masks(6, 1)
    l1, l2 = np.zeros(8, int), np.full(6, 2)
    s1 = _sample("a", "shsy5y", g1, l1, g1, l1, np.linspace(0.9, 0.5, 8))
    s2 = _sample("b", "cort", g2, l2, g2, l2, np.full(6, 0.8))
    out = _run(SartoriusMetric(score_thr=0.3), [s1, s2])
    assert out["score"] == pytest.approx(1.0)
    assert out["score_shsy5y"] == pytest.approx(1.0) and out["score_cort"] == pytest.approx(1.0)
    assert out["score@0.95"] == pytest.approx(1.0)
    assert out["segm_mAP"] == pytest.approx(1.0)
    assert out["bbox_mAP"] == pytest.approx(1.0)


def test_known_case_half_found_and_score_threshold() -> None:
    g = _disc_masks(8, 2)
    labels = np.zeros(8, int)
    # image a: exactly half of the cells predicted -> TP 4, FN 4, FP 0 -> precision 0.5 at every threshold
    sa = _sample("a", "shsy5y", g, labels, g[:4], labels[:4], np.full(4, 0.9))
    # image b: all cells, but half below score_thr -> they are not submitted -> 0.5 as well
    sb = _sample("b", "astro", g, labels, g, labels, np.r_[np.full(4, 0.9), np.full(4, 0.1)])
    out = _run(SartoriusMetric(score_thr=0.3), [sa, sb])
    assert out["score"] == pytest.approx(0.5)
    assert out["score_shsy5y"] == pytest.approx(0.5) and out["score_astro"] == pytest.approx(0.5)
    # COCO segm AP of image b is 1 (every cell found, ranked above nothing wrong); of a: recall 0.5
    assert 0.5 <= out["segm_mAP"] < 1.0


def test_box_only_predictions_scored_as_rectangles() -> None:
    rect = np.zeros((1, H, W), dtype=bool)
    rect[0, 10:30, 20:50] = True
    s = _sample("a", "cort", rect, [2], rect, [2], [0.9])
    del s["pred_instances"]["masks"]
    out = _run(SartoriusMetric(iou_types=("bbox",), box_as_mask=True), [s])
    assert out["score"] == pytest.approx(1.0) and out["bbox_mAP"] == pytest.approx(1.0)
    assert "segm_mAP" not in out
    # without box_as_mask a box-only model gets COCO bbox mAP only
    s2 = _sample("a", "cort", rect, [2], rect, [2], [0.9])
    del s2["pred_instances"]["masks"]
    out2 = _run(SartoriusMetric(iou_types=("bbox", "segm")), [s2])
    assert "score" not in out2 and out2["bbox_mAP"] == pytest.approx(1.0)


def test_overlapping_duplicate_is_removed_before_scoring() -> None:
    g = _disc_masks(4, 3)
    labels = np.zeros(4, int)
    dup = np.concatenate([g, g[:1]])  # a duplicate of cell 0 with a lower score: overlap removal empties it
    s = _sample("a", "shsy5y", g, labels, dup, np.zeros(5, int), [0.9, 0.9, 0.9, 0.9, 0.5])
    out = _run(SartoriusMetric(score_thr=0.3), [s])
    assert out["score"] == pytest.approx(1.0)


def test_masks_to_instances_matches_reference_and_boxes_to_instances() -> None:
    m = _disc_masks(5, 4)
    m[2] = False  # an empty mask
    ref = InstanceMasks.from_full(m)
    for src in (m, torch.from_numpy(m)):
        got = masks_to_instances(src)
        assert np.array_equal(got.boxes, ref.boxes)
        assert np.array_equal(got.to_full(), m)
    empty = masks_to_instances(np.zeros((0, H, W), bool))
    assert len(empty) == 0 and (empty.height, empty.width) == (H, W)
    r = boxes_to_instances(np.array([[1.2, 2.6, 10.4, 5.5], [-3, -3, 200, 4]]), H, W)
    assert r.boxes.tolist() == [[1, 3, 10, 6], [0, 0, W, 4]]
    assert r.areas().tolist() == [27, 4 * W]


def test_remove_overlaps_gives_pixels_to_the_higher_score() -> None:
    a = np.zeros((2, H, W), dtype=bool)
    a[0, 0:10, 0:10] = True
    a[1, 5:15, 5:15] = True
    kept, idx = remove_overlaps(InstanceMasks.from_full(a), np.array([0.2, 0.9]), max_lost_frac=0.5)
    assert sorted(idx.tolist()) == [0, 1]
    full = kept.to_full()
    assert full.sum(axis=0).max() == 1
    assert full[list(idx).index(1)].sum() == 100 and full[list(idx).index(0)].sum() == 75


def test_boxes_to_instances_non_finite_box_is_an_empty_mask() -> None:
    """A diverged detector's NaN box stays aligned with its score as an empty mask (no cast warning)."""
    import warnings

    import numpy as np

    from custom_modules.conversion import boxes_to_instances

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        m = boxes_to_instances(np.array([[1.0, 2.0, 5.0, 6.0], [np.nan] * 4]), 20, 30)
    assert len(m) == 2 and m.areas().tolist() == [16, 0]
