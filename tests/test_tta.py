"""ensemble.tta: flip mapping, the TTA merge, prediction limits and fold merging (torch-free)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from celldata.instances import InstanceMasks
from ensemble.predictions import ImagePredictions, load_predictions, save_predictions
from ensemble.tta import (
    flip_boxes,
    flip_image,
    flip_instance_masks,
    flip_predictions,
    limit_predictions,
    merge_fold_files,
    merge_tta,
)

H, W = 52, 70


# ------------------------------------------------------------------------------------------ flips (pure numpy)
def test_flip_boxes_known_values_and_involution() -> None:
    b = np.array([[10.0, 5.0, 30.5, 20.0], [0.0, 0.0, 70.0, 52.0]], dtype=np.float32)
    hb = flip_boxes(b, "horizontal", H, W)
    assert hb.tolist() == [[39.5, 5.0, 60.0, 20.0], [0.0, 0.0, 70.0, 52.0]]
    vb = flip_boxes(b, "vertical", H, W)
    assert vb.tolist() == [[10.0, 32.0, 30.5, 47.0], [0.0, 0.0, 70.0, 52.0]]
    for d in ("horizontal", "vertical"):
        assert np.allclose(flip_boxes(flip_boxes(b, d, H, W), d, H, W), b)
    with pytest.raises(ValueError, match="direction"):
        flip_boxes(b, "diagonal", H, W)


def test_flip_boxes_match_flipped_mask_extent() -> None:
    m = np.zeros((H, W), dtype=bool)
    m[7:19, 11:40] = True
    box = np.array([[11, 7, 40, 19]], dtype=np.float32)  # exclusive pixel box of the mask
    for d in ("horizontal", "vertical"):
        fm = flip_image(m, d)
        ys, xs = np.nonzero(fm)
        assert flip_boxes(box, d, H, W)[0].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_flip_instance_masks_equals_flipping_full_frames() -> None:
    rng = np.random.default_rng(0)
    full = rng.random((3, H, W)) > 0.97
    full[1] = False
    inst = InstanceMasks.from_full(full)
    for d in ("horizontal", "vertical"):
        got = flip_instance_masks(inst, d).to_full()
        want = full[:, :, ::-1] if d == "horizontal" else full[:, ::-1, :]
        assert np.array_equal(got, want)


def _pred(
    boxes, scores, labels, masks=None, semantic=None, image_id="img", mask_probs=None
) -> ImagePredictions:
    return ImagePredictions(
        image_id,
        H,
        W,
        np.asarray(boxes, np.float32).reshape(-1, 4),
        scores,
        labels,
        masks,
        semantic,
        mask_probs,
    )


def test_flip_predictions_round_trip_and_semantic() -> None:
    full = np.zeros((2, H, W), dtype=bool)
    full[0, 2:10, 3:20] = True
    full[1, 30:50, 40:69] = True
    sem = np.linspace(0, 1, H * W, dtype=np.float32).reshape(H, W)
    p = _pred([[3, 2, 20, 10], [40, 30, 69, 50]], [0.9, 0.8], [0, 2], InstanceMasks.from_full(full), sem)
    for d in ("horizontal", "vertical"):
        back = flip_predictions(flip_predictions(p, d), d)
        assert np.allclose(back.boxes, p.boxes) and np.array_equal(back.masks.to_full(), full)
        assert np.array_equal(back.semantic, sem)


def test_merge_tta_boxes_and_masks() -> None:
    full = np.zeros((2, H, W), dtype=bool)
    full[0, 2:10, 3:20] = True
    full[1, 30:50, 40:69] = True
    boxes = [[3, 2, 20, 10], [40, 30, 69, 50]]
    pm = _pred(boxes, [0.9, 0.6], [0, 1], InstanceMasks.from_full(full))
    extra = full.copy()
    extra[0, 10, 3:20] = True  # one pass has one more row on cell 0: a minority, voted away
    pe = _pred(boxes, [0.9, 0.6], [0, 1], InstanceMasks.from_full(extra))
    merged = merge_tta([pm, pm, pe])
    assert len(merged) == 2
    order = np.argsort(merged.labels)
    assert np.array_equal(merged.masks.subset(order).to_full(), full)
    assert np.allclose(merged.scores[order], [0.9, 0.6], atol=1e-6)
    # a detection seen in one pass only: kept with its score divided by the number of passes ('avg')
    lonely = _pred([[3, 2, 20, 10]], [0.9], [0], InstanceMasks.from_full(full[:1]))
    none = _pred(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int), InstanceMasks.empty(H, W))
    m2 = merge_tta([lonely, none, none])
    assert len(m2) == 1 and m2.scores[0] == pytest.approx(0.3)
    # box-only passes: WBF of the boxes
    pb = _pred(boxes, [0.9, 0.6], [0, 1])
    pb2 = _pred([[4, 2, 21, 10], [40, 30, 69, 50]], [0.7, 0.6], [0, 1])
    mb = merge_tta([pb, pb2, pb])
    assert mb.masks is None and len(mb) == 2
    b0 = mb.boxes[np.argmax(mb.scores)]
    assert b0[0] == pytest.approx((3 * 0.9 * 2 + 4 * 0.7) / (0.9 * 2 + 0.7), abs=1e-3)


def test_merge_tta_soft_masks_average_probabilities() -> None:
    """Passes with soft masks merge to the score-weighted mean probability over the union window."""
    win = np.array([[3, 2, 8, 6]])
    pa = np.full((4, 5), 0.9, np.float32)
    pb = np.full((4, 5), 0.2, np.float32)
    a = _pred([[3, 2, 8, 6]], [0.8], [0], InstanceMasks(H, W, win, [pa >= 0.5]), mask_probs=[pa])
    b = _pred(
        [[3, 2, 8, 6]], [0.4], [0], InstanceMasks(H, W, win + [1, 0, 1, 0], [pb >= 0.5]), mask_probs=[pb]
    )
    m = merge_tta([a, b])
    assert len(m) == 1 and m.masks.boxes.tolist() == [[3, 2, 9, 6]]
    want = np.zeros((4, 6))
    want[:, :5] += 0.8 * 0.9
    want[:, 1:] += 0.4 * 0.2
    want /= 1.2
    np.testing.assert_allclose(m.mask_probs[0], want, atol=1e-6)
    np.testing.assert_array_equal(m.masks.crops[0], want >= 0.5)
    assert m.scores[0] == pytest.approx(0.6)
    # one cell labelled differently in two passes: one instance of the majority class (score-weighted), full score
    b2 = _pred([[3, 2, 8, 6]], [0.8], [2], InstanceMasks(H, W, win, [pb >= 0.5]), mask_probs=[pb])
    m2 = merge_tta([a, b2, a])
    assert len(m2) == 1 and m2.labels.tolist() == [0] and m2.scores[0] == pytest.approx(0.8)
    assert len(merge_tta([a, b2, a], image_class="per_instance")) == 2


def test_merge_tta_drops_label_twins_under_majority() -> None:
    """A multi-class box head outputs one cell twice (another label, nearly the same box): under one class per
    image the lower-scored twin does not join the cluster (its mask and score would count twice)."""
    win = np.array([[3, 2, 8, 6]])
    good = np.full((4, 5), 0.9, np.float32)
    bad = np.full((4, 5), 0.1, np.float32)
    masks = InstanceMasks(H, W, np.concatenate([win, win]), [good >= 0.5, bad >= 0.5])
    twin = _pred([[3, 2, 8, 6], [3, 2, 8, 6.2]], [0.8, 0.3], [0, 2], masks, mask_probs=[good, bad])
    m = merge_tta([twin, twin])
    assert len(m) == 1 and m.labels.tolist() == [0]
    assert m.scores[0] == pytest.approx(0.8)  # not (0.8 + 0.3) / 2: the twin is not a cluster member
    np.testing.assert_allclose(m.mask_probs[0], good, atol=1e-6)
    # twin_iou=1.0 keeps boxes that are not identical: the twin then joins and drags score and probability down
    kept = merge_tta([twin, twin], twin_iou=1.0)
    assert len(kept) == 1 and kept.scores[0] < 0.8 and kept.mask_probs[0].max() < 0.9
    # box-only passes follow the same rule
    boxes_only = _pred([[3, 2, 8, 6], [3, 2, 8, 6.2]], [0.8, 0.3], [0, 2])
    assert merge_tta([boxes_only, boxes_only]).scores.tolist() == pytest.approx([0.8])


def test_limit_predictions() -> None:
    p = _pred([[0, 0, 5, 5]] * 4, [0.1, 0.9, 0.5, 0.04], [0, 1, 2, 0])
    q = limit_predictions(p, score_thr=0.05, max_per_img=2)
    assert q.scores.tolist() == pytest.approx([0.9, 0.5]) and q.labels.tolist() == [1, 2]


def test_merge_fold_files_merges_like_tta_and_checks_images(tmp_path: Path) -> None:
    m = InstanceMasks.from_full(np.pad(np.ones((1, 6, 8), bool), ((0, 0), (2, 44), (3, 59))))
    a = _pred([[3, 2, 11, 8]], [0.9], [1], masks=m, image_id="img0")
    b = _pred([[3, 2, 11, 8]], [0.5], [1], masks=m, image_id="img0")
    for name, p in (("f0", a), ("f1", b)):
        save_predictions(tmp_path / f"{name}.npz", [p], meta={"name": "mask_rcnn", "fold": name})
    parts = [tmp_path / "f0.npz", tmp_path / "f1.npz"]
    assert merge_fold_files(parts, tmp_path / "m.npz", name="member") == 1
    got, meta = load_predictions(tmp_path / "m.npz")
    want = merge_tta([a, b])
    assert np.allclose(got["img0"].scores, want.scores) and np.array_equal(
        got["img0"].masks.to_full(), m.to_full()
    )
    assert meta["name"] == "member" and meta["folds_merged"] == [str(p) for p in parts]
    assert merge_fold_files(parts[:1], tmp_path / "one.npz") == 1
    assert load_predictions(tmp_path / "one.npz")[1]["name"] == "mask_rcnn"
    save_predictions(tmp_path / "other.npz", [_pred([], [], [], image_id="img9")], meta={})
    with pytest.raises(ValueError, match="other.npz: predicts other images"):
        merge_fold_files([parts[0], tmp_path / "other.npz"], tmp_path / "bad.npz")
    assert not (tmp_path / "bad.npz").exists()


def test_merging_fold_files_imports_no_torch() -> None:
    """Fold and TTA merging run on cached prediction files: neither imports torch nor OpenMMLab."""
    code = (
        "import sys, ensemble.tta, ensemble.predictions\n"
        "bad = {m.split('.')[0] for m in sys.modules} & {'torch', 'mmcv', 'mmdet', 'mmengine', 'mmseg'}\n"
        "print(sorted(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
