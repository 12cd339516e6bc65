"""``ensemble.image_class.label_twins``: one model's differently labelled duplicates of one object."""

from __future__ import annotations

import numpy as np
import pytest

from ensemble.image_class import label_twins


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _reference(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, thr: float) -> np.ndarray:
    """Plain greedy loop over every pair (the definition)."""
    order = np.argsort(-scores, kind="stable")
    drop = np.zeros(len(boxes), bool)
    for r, i in enumerate(order):
        if drop[i]:
            continue
        for j in order[r + 1 :]:
            if not drop[j] and labels[j] != labels[i] and _iou(boxes[i], boxes[j]) >= thr:
                drop[j] = True
    return drop


def test_hand_case() -> None:
    boxes = np.array(
        [
            [10, 10, 30, 30],  # cell A as shsy5y, 0.9
            [10.5, 10, 30, 30.5],  # cell A again as cort, 0.4: twin -> dropped
            [11, 11, 29, 29],  # cell A as shsy5y again, 0.3: same label -> the model's own NMS, kept here
            [50, 50, 70, 70],  # cell B as cort, 0.2
            [51, 50, 70, 71],  # cell B as astro, 0.6: B's top -> keeps, drops the cort one
            [60, 60, 80, 80],  # touching neighbour (IoU 0.14 with B): kept
        ]
    )
    scores = np.array([0.9, 0.4, 0.3, 0.2, 0.6, 0.5])
    labels = np.array([0, 2, 0, 2, 1, 2])
    assert label_twins(boxes, scores, labels, 0.8).tolist() == [False, True, False, True, False, False]
    assert not label_twins(boxes, scores, labels, 1.0).any()  # only exact duplicates at 1.0
    assert label_twins(boxes, scores, np.zeros(6, int), 0.5).sum() == 0  # one label: nothing is a twin


@pytest.mark.parametrize("seed", range(12))
def test_matches_the_pairwise_definition(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 160))
    xy = rng.uniform(0, 300, (n, 2))
    wh = rng.uniform(3, 60, (n, 2))
    boxes = np.concatenate([xy, xy + wh], 1)
    # a third of the boxes get a jittered twin with another label, as a multi-class box head produces
    k = n // 3
    twins = boxes[:k] + rng.normal(0, 1.0, (k, 4))
    boxes = np.concatenate([boxes, twins])
    labels = rng.integers(0, 3, len(boxes))
    labels[n:] = (labels[:k] + 1 + rng.integers(0, 2, k)) % 3
    scores = rng.uniform(0, 1, len(boxes))
    scores[int(rng.integers(len(boxes)))] = scores[0]  # a tie
    for thr in (0.5, 0.8, 0.95):
        got = label_twins(boxes, scores, labels, thr)
        np.testing.assert_array_equal(got, _reference(boxes, scores, labels, thr))
    assert label_twins(boxes, scores, labels, 0.5).sum() > 0


@pytest.mark.parametrize("seed", range(40))
def test_matches_the_definition_at_exact_iou_ties(seed: int) -> None:
    """Small integer boxes (and the same /16) hit IoU exactly at the thresholds: the kernel's x-window pruning
    must not lose a pair whose IoU equals ``iou_thr``."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 40))
    xy = rng.integers(0, 12, (n, 2))
    boxes = np.concatenate([xy, xy + rng.integers(0, 8, (n, 2))], 1).astype(float)
    labels = rng.integers(0, 3, n)
    scores = rng.integers(0, 5, n).astype(float)  # many ties
    for scale in (1.0, 1 / 16):
        for thr in (0.25, 0.5, 0.6, 2 / 3, 0.75, 0.8, 1.0):
            got = label_twins(boxes * scale, scores, labels, thr)
            np.testing.assert_array_equal(got, _reference(boxes * scale, scores, labels, thr))


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="iou_thr"):
        label_twins(np.zeros((2, 4)), np.zeros(2), np.zeros(2, int), 0.0)
    with pytest.raises(ValueError, match="3 boxes, 2 scores"):
        label_twins(np.zeros((3, 4)), np.zeros(2), np.zeros(3, int), 0.5)
    assert label_twins(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int), 0.5).shape == (0,)


def test_fusion_drops_a_models_label_twin_under_one_class_per_image() -> None:
    """Mask R-CNN style output: one cell as shsy5y (0.9, good mask) and as cort (0.3, poor mask, nearly the same
    box). Under 'majority' the twin does not join the cluster: the cell keeps the other model's agreement score and
    the twin's pixels do not vote; nor does the twin vote for the image's class."""
    from celldata.instances import InstanceMasks
    from ensemble.masks import FusionParams, fuse_image
    from ensemble.predictions import ImagePredictions

    h, w = 40, 48
    good = np.zeros((10, 10), bool)
    good[1:9, 1:9] = True
    poor = np.ones((10, 12), bool)  # bleeds 2 px to the right
    mrcnn = ImagePredictions(
        "img", h, w, np.array([[10, 10, 20, 20], [10, 10, 22, 20]], np.float32), np.array([0.9, 0.3], np.float32),
        np.array([0, 2]), InstanceMasks(h, w, np.array([[10, 10, 20, 20], [10, 10, 22, 20]]), [good, poor]), None,
    )  # fmt: skip
    other = ImagePredictions(
        "img", h, w, np.array([[10, 10, 20, 20]], np.float32), np.array([0.9], np.float32), np.array([0]),
        InstanceMasks(h, w, np.array([[10, 10, 20, 20]]), [good]), None,
    )  # fmt: skip
    out = fuse_image([mrcnn, other], [1.0, 1.0], FusionParams(iou_thr=0.5))
    assert len(out) == 1 and out.labels.tolist() == [0]
    assert out.scores[0] == pytest.approx(0.9, rel=1e-6)
    full = out.masks.to_full()
    assert full.sum() == good.sum() and not full[:, 20:].any()
    # with twins kept (twin_iou=None) the twin is a third member of a 2-model cluster: the score is averaged down
    kept = fuse_image([mrcnn, other], [1.0, 1.0], FusionParams(iou_thr=0.5, twin_iou=None))
    assert kept.scores.max() < 0.9
    with pytest.raises(ValueError, match="twin_iou"):
        FusionParams(twin_iou=0.0)


def test_majority_without_twins_votes_after_dropping_twins() -> None:
    """A model's twin must not vote twice: model A sees a cell as shsy5y (0.9) and again as cort (0.85), model B
    sees another cell as cort (0.5). With twins dropped shsy5y wins 0.9 to 0.5 (twin's score returned as 0);
    kept, cort would win 1.35 to 0.9. ``min_score`` keeps low detections out of the vote."""
    from ensemble.image_class import majority_without_twins

    boxes = [np.array([[10, 10, 30, 30], [10, 10, 30, 31]], float), np.array([[50, 50, 70, 70]], float)]
    scores = [np.array([0.9, 0.85]), np.array([0.5])]
    labels = [np.array([0, 2]), np.array([2])]
    label, out = majority_without_twins(boxes, scores, labels, twin_iou=0.8)
    assert label == 0 and out[0].tolist() == [0.9, 0.0] and out[1].tolist() == [0.5]
    label, out = majority_without_twins(boxes, scores, labels, twin_iou=None)
    assert label == 2 and out[0].tolist() == [0.9, 0.85]
    weighted = majority_without_twins(boxes, scores, labels, weights=[1.0, 2.0], twin_iou=0.8)
    assert weighted[0] == 2  # shsy5y 0.9 < cort 2 * 0.5
    assert majority_without_twins(boxes, scores, labels, twin_iou=0.8, min_score=0.95)[0] is None
