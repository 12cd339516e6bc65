"""Cellpose-style flows (celldata.flows): the target definition, decoding, the round trip on hand-made and real cells."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from celldata.flows import (
    FLOW_SCALE,
    cell_probability,
    decode_flow_map,
    fill_holes_and_remove_small,
    flip_flow_map,
    flow_errors,
    flow_targets,
    flows_to_labels,
    instances_to_labels,
    is_flow_model_config,
    labels_to_flows,
    labels_to_instances,
    remove_bad_flow_masks,
)
from celldata.instances import InstanceMasks

REAL_TRAIN = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sartorius_real_train"


def _disk(shape: tuple[int, int], cy: int, cx: int, r: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _touching_cells() -> np.ndarray:
    """Five hand-made cells on a 64x80 image: two touching disks, a rectangle touching one of them, an L shape
    touching the rectangle, and a lone small disk."""
    lab = np.zeros((64, 80), dtype=np.int32)
    lab[_disk(lab.shape, 20, 20, 9)] = 1
    lab[_disk(lab.shape, 20, 38, 9) & (lab == 0)] = 2  # touches disk 1 along a line
    lab[30:44, 30:50] = 3  # touches disk 2 from below
    lab[44:60, 30:36] = 4  # L shape: vertical bar under the rectangle ...
    lab[54:60, 36:60] = 4  # ... and its foot
    lab[_disk(lab.shape, 50, 12, 4)] = 5
    return lab


def _match_ious(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """IoU of every truth label (1..K) with the predicted label that covers most of it."""
    out = []
    for v in range(1, int(truth.max()) + 1):
        m = truth == v
        hits = pred[m]
        hits = hits[hits > 0]
        if hits.size == 0:
            out.append(0.0)
            continue
        best = np.bincount(hits).argmax()
        p = pred == best
        out.append((m & p).sum() / (m | p).sum())
    return np.array(out)


# ------------------------------------------------------------------------------------------ definition
def test_flows_point_to_centre_unit_norm_zero_outside():
    lab = np.zeros((41, 51), dtype=np.int32)
    lab[_disk(lab.shape, 20, 25, 12)] = 7
    flows = labels_to_flows(lab)
    assert flows.shape == (2, 41, 51) and flows.dtype == np.float32
    inside = lab > 0
    norm = np.hypot(flows[0], flows[1])
    assert np.all(flows[:, ~inside] == 0)
    # unit norm everywhere inside except possibly the centre (the gradient vanishes at the heat maximum)
    centre = np.zeros_like(inside)
    centre[20, 25] = True
    np.testing.assert_allclose(norm[inside & ~centre], 1.0, atol=1e-5)
    yy, xx = np.mgrid[:41, :51]
    to_c = np.stack([20 - yy, 25 - xx]).astype(np.float64)
    to_c /= np.maximum(np.hypot(to_c[0], to_c[1]), 1e-9)
    cos = (flows * to_c).sum(axis=0)[inside & ~centre]
    assert cos.min() > 0.9  # a disk: flows point (almost exactly) at its centre
    assert np.median(cos) > 0.99


def test_flows_follow_a_non_convex_cell():
    """In a U shape the heat flows around the bend: from the tip of one arm the flow first points along the arm."""
    lab = np.zeros((40, 40), dtype=np.int32)
    lab[5:35, 5:11] = 1  # left arm
    lab[29:35, 5:35] = 1  # bottom
    lab[5:35, 29:35] = 1  # right arm
    flows = labels_to_flows(lab)
    # the centre (nearest pixel to the median) lies on the bottom bar; at the top of the left arm flows point down
    assert flows[0, 7, 8] > 0.9
    assert flows[0, 7, 31] > 0.9


def test_flow_targets_and_probability():
    lab = _touching_cells()
    t = flow_targets(lab)
    assert t.shape == (3, *lab.shape) and t.dtype == np.float32
    np.testing.assert_array_equal(t[:2], labels_to_flows(lab))
    np.testing.assert_array_equal(t[2], cell_probability(lab))
    assert set(np.unique(t[2])) == {0.0, 1.0}
    assert FLOW_SCALE == 5.0


def test_flows_equivariant_under_flips_and_rot90():
    lab = _touching_cells()
    lab[_disk(lab.shape, 10, 66, 5)] = 6
    # keep cells whose median pixel is unique under the transforms: disks centred on pixels, odd rectangles
    lab = np.where(np.isin(lab, [1, 5, 6]), lab, 0)
    f = labels_to_flows(lab)
    np.testing.assert_allclose(labels_to_flows(lab[:, ::-1]), np.stack([f[0], -f[1]])[:, :, ::-1], atol=1e-5)
    np.testing.assert_allclose(labels_to_flows(lab[::-1]), np.stack([-f[0], f[1]])[:, ::-1], atol=1e-5)
    # np.rot90 (counter-clockwise): new[y, x] = old[x, W-1-y]; a vector (dy, dx) becomes (-dx, dy)
    rot = labels_to_flows(np.rot90(lab))
    np.testing.assert_allclose(rot, np.stack([np.rot90(-f[1]), np.rot90(f[0])]), atol=1e-5)


def test_labels_to_flows_rejects_bad_input():
    with pytest.raises(ValueError):
        labels_to_flows(np.zeros((2, 3, 4), dtype=np.int32))
    with pytest.raises(ValueError):
        labels_to_flows(-np.ones((3, 3), dtype=np.int32))
    assert not labels_to_flows(np.zeros((5, 6), dtype=np.int32)).any()


# --------------------------------------------------------------------------------------------- decoding
def test_round_trip_touching_cells():
    lab = _touching_cells()
    dec = flows_to_labels(cell_probability(lab), labels_to_flows(lab))
    assert dec.dtype == np.int32 and dec.max() == lab.max()
    ious = _match_ious(lab, dec)
    assert ious.min() > 0.95, ious
    # one-to-one: every decoded label matches one truth label
    assert len({int(np.bincount(dec[lab == v]).argmax()) for v in range(1, 6)}) == 5


def test_round_trip_with_scaled_network_output_and_soft_probability():
    """A network predicts FLOW_SCALE * flows and a logit; decoding takes unit flows and a probability."""
    lab = _touching_cells()
    net_flows = FLOW_SCALE * labels_to_flows(lab)
    logit = np.where(lab > 0, 3.0, -3.0)
    dec = flows_to_labels(1 / (1 + np.exp(-logit)), net_flows / FLOW_SCALE)
    assert _match_ious(lab, dec).min() > 0.95


def test_bad_flows_are_removed():
    lab = _touching_cells()
    flows = labels_to_flows(lab)
    rng = np.random.default_rng(0)
    m = lab == 3
    flows[:, m] = 0.0
    flows[1, m] = 1.0  # cell 3's flows all point right: it collapses onto its right edge, the flows disagree
    err = flow_errors(lab, flows)
    assert err.shape == (5,) and err[2] > 0.4 and np.all(np.delete(err, 2) < 1e-6)
    kept = remove_bad_flow_masks(lab, flows, 0.4)
    assert not (kept == 3).any() and (kept == 1).sum() == (lab == 1).sum()
    noisy = labels_to_flows(lab) + rng.normal(0, 0.01, size=flows.shape).astype(np.float32)
    assert flow_errors(lab, noisy).max() < 0.01


def test_fill_holes_and_remove_small():
    lab = np.zeros((30, 30), dtype=np.int32)
    lab[2:12, 2:12] = 4
    lab[5:8, 5:8] = 0  # a hole
    lab[20:23, 20:23] = 9  # 9 pixels: removed with min_size=15
    lab[15:25, 2:12] = 2
    lab[18:22, 5:9] = 5  # 16 px, enclosed by label 2: kept (holes are filled with background only)
    out = fill_holes_and_remove_small(lab, min_size=5)
    assert out.max() == 4 and set(np.unique(out)) == {0, 1, 2, 3, 4}
    assert (out[2:12, 2:12] > 0).all()
    out = fill_holes_and_remove_small(lab, min_size=15)
    assert not out[20:23, 20:23].any() and (out[18:22, 5:9] > 0).all()


def test_decode_empty_and_shape_errors():
    assert not flows_to_labels(np.zeros((8, 9)), np.zeros((2, 8, 9))).any()
    with pytest.raises(ValueError):
        flows_to_labels(np.zeros((8, 9)), np.zeros((2, 9, 8)))


# ---------------------------------------------------------------------------------------------- overlaps
def test_instances_to_labels_smaller_wins_and_fragments_drop():
    h, w = 30, 40
    big = np.zeros((h, w), dtype=bool)
    big[5:25, 5:35] = True
    small = np.zeros((h, w), dtype=bool)
    small[10:15, 10:15] = True
    bar = np.zeros((h, w), dtype=bool)
    bar[0:30, 19:22] = True  # cuts the big cell in two: its smaller half becomes background
    inst = InstanceMasks.from_full(np.stack([big, small, bar]))
    lab = instances_to_labels(inst)
    assert lab.dtype == np.int32 and lab.shape == (h, w)
    assert (lab[small] == 2).all()  # the smallest instance keeps all its pixels
    assert (lab[bar] == 3).all()  # the bar (90 px) is smaller than the big cell
    assert (lab == 1).sum() == 13 * 20  # the big cell keeps its larger component (x 22..34)
    assert not lab[5:25, 5:19].any() or (lab[5:25, 5:19] == 2).any()  # the left fragment is not label 1
    assert not (lab[5:25, 5:19] == 1).any()
    # deterministic and order-free for equal areas: ties go to the lower index
    a = np.zeros((h, w), dtype=bool)
    a[0:10, 0:10] = True
    b = np.zeros((h, w), dtype=bool)
    b[5:15, 5:15] = True
    lab2 = instances_to_labels(InstanceMasks.from_full(np.stack([a, b])))
    assert (lab2[5:10, 5:10] == 1).all()


# ------------------------------------------------------------------------------------------- instances
def test_labels_to_instances_feeds_image_predictions():
    from ensemble import CLASSES
    from ensemble.predictions import ImagePredictions

    lab = _touching_cells()
    prob = np.where(lab > 0, 0.8, 0.1).astype(np.float32)
    prob[lab == 2] = 0.6
    out = labels_to_instances(lab, prob)
    assert len(out) == 5
    np.testing.assert_array_equal(out.label_values, [1, 2, 3, 4, 5])
    np.testing.assert_allclose(out.scores, [0.8, 0.6, 0.8, 0.8, 0.8], atol=1e-6)
    assert out.boxes.dtype == np.float32 and out.boxes.shape == (5, 4)
    np.testing.assert_array_equal(out.boxes, out.masks.boxes.astype(np.float32))
    np.testing.assert_array_equal(out.masks.to_label_image(), lab)
    x0, y0, x1, y1 = out.masks.boxes[0]
    crop = out.mask_probs[0]
    assert crop.shape == (y1 - y0, x1 - x0)
    sub = lab[y0:y1, x0:x1]
    assert (crop[sub == 2] == 0).all() and (crop[sub == 1] == np.float32(0.8)).all()  # exclusive soft masks
    plain = labels_to_instances(lab, prob, exclusive=False)
    assert (plain.mask_probs[0][sub == 2] == np.float32(0.6)).all()
    pred = ImagePredictions(
        image_id="x",
        height=lab.shape[0],
        width=lab.shape[1],
        boxes=out.boxes,
        scores=out.scores,
        labels=np.zeros(len(out), dtype=np.int64),
        masks=out.masks,
        mask_probs=out.mask_probs,
    )
    assert len(pred.boxes) == 5 and CLASSES
    empty = labels_to_instances(np.zeros((4, 5), dtype=np.int32), np.zeros((4, 5)))
    assert len(empty) == 0 and empty.boxes.shape == (0, 4)


def test_labels_to_instances_non_consecutive_labels():
    lab = np.zeros((10, 12), dtype=np.int32)
    lab[1:4, 1:5] = 7
    lab[6:9, 8:11] = 3
    out = labels_to_instances(lab, (lab > 0).astype(np.float32))
    np.testing.assert_array_equal(out.label_values, [3, 7])
    np.testing.assert_array_equal(out.masks.boxes, [[8, 6, 11, 9], [1, 1, 5, 4]])
    assert all(c.all() for c in out.masks.crops)


# ------------------------------------------------------------------------------------------- inference
def test_flip_flow_map_is_the_flow_map_of_the_flipped_labels():
    lab = _touching_cells()
    lab = np.where(np.isin(lab, [1, 5]), lab, 0)  # unique median pixels under flips (see the test above)
    maps = np.concatenate([labels_to_flows(lab), (lab > 0)[None].astype(np.float32)])
    for direction, flip in (("horizontal", lambda a: a[:, ::-1]), ("vertical", lambda a: a[::-1])):
        flipped = labels_to_flows(np.ascontiguousarray(flip(lab)))
        got = flip_flow_map(maps, direction)
        np.testing.assert_allclose(got[:2], flipped, atol=1e-5)  # mirrored, flow component negated
        np.testing.assert_array_equal(got[2], flip(maps[2]))
        np.testing.assert_array_equal(flip_flow_map(got, direction), maps)  # self-inverse
    with pytest.raises(ValueError):
        flip_flow_map(maps, "diagonal")
    with pytest.raises(ValueError):
        flip_flow_map(maps[0], "vertical")


def test_decode_flow_map_recovers_cells_and_checks_parameters():
    lab = _touching_cells()
    maps = np.concatenate([labels_to_flows(lab), np.where(lab > 0, 6.0, -6.0)[None]]).astype(np.float32)
    inst, prob = decode_flow_map(maps)
    assert len(inst) == 5 and prob.shape == lab.shape
    assert (_match_ious(lab, inst.masks.to_label_image()) > 0.9).all()
    assert np.allclose(inst.scores, 1 / (1 + np.exp(-6.0)), atol=1e-5)
    assert len(decode_flow_map(maps, {"min_size": 200})[0]) < 5  # the small disk and the L are under 200 px
    with pytest.raises(ValueError, match="unknown"):
        decode_flow_map(maps, {"minsize": 3})
    with pytest.raises(ValueError):
        decode_flow_map(maps[:2])


def test_is_flow_model_config():
    assert is_flow_model_config({"type": "FlowEncoderDecoder", "decode_head": {"type": "FCNHead"}})
    assert is_flow_model_config({"type": "EncoderDecoder", "decode_head": {"type": "mmseg.FlowUPerHead"}})
    assert not is_flow_model_config({"type": "EncoderDecoder", "decode_head": {"type": "UPerHead"}})
    assert not is_flow_model_config({"type": "MaskRCNN", "roi_head": {}})
    assert not is_flow_model_config(None)


# ------------------------------------------------------------------------------------------- real data
def _real_round_trip(n_per_class: int | None) -> dict[str, np.ndarray]:
    from celldata.kaggle_csv import read_train_csv

    if not (REAL_TRAIN / "train.csv").is_file():
        pytest.skip(f"real Sartorius training data not available: {REAL_TRAIN / 'train.csv'} is absent")
    images = read_train_csv(REAL_TRAIN / "train.csv")
    seen: dict[str, int] = {}
    ious: dict[str, list[np.ndarray]] = {}
    for im in images:
        if n_per_class is not None and seen.get(im.cell_type, 0) >= n_per_class:
            continue
        seen[im.cell_type] = seen.get(im.cell_type, 0) + 1
        inst = im.to_instances()
        lab = instances_to_labels(inst)
        dec = flows_to_labels(cell_probability(lab), labels_to_flows(lab))
        dec_area = np.bincount(dec.ravel())
        # IoU of every *original* annotation (overlaps included) with its best decoded mask
        per = np.zeros(len(inst))
        for i in range(len(inst)):
            x0, y0, x1, y1 = inst.boxes[i]
            c = inst.crops[i]
            hits = dec[y0:y1, x0:x1][c]
            hits = hits[hits > 0]
            if hits.size:
                v = np.bincount(hits).argmax()
                inter = (hits == v).sum()
                per[i] = inter / (c.sum() + dec_area[v] - inter)
        ious.setdefault(im.cell_type, []).append(per)
    return {k: np.concatenate(v) for k, v in ious.items()}


def test_round_trip_real_images_subset():
    """Two real images per cell type (seconds); the full set is the slow test below."""
    ious = _real_round_trip(2)
    allv = np.concatenate(list(ious.values()))
    assert np.mean(allv >= 0.9) >= 0.9, {k: float(np.mean(v >= 0.9)) for k, v in ious.items()}


@pytest.mark.slow
def test_round_trip_real_images_all():
    ious = _real_round_trip(None)
    allv = np.concatenate(list(ious.values()))
    assert allv.size > 2000
    assert np.mean(allv >= 0.9) >= 0.95, {k: float(np.mean(v >= 0.9)) for k, v in ious.items()}
    assert np.mean(ious["shsy5y"] >= 0.9) >= 0.99
