"""Prediction file format: round trip, compactness, atomic writing and a corpus of malformed files."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest

from celldata.instances import InstanceMasks
from ensemble.predictions import FORMAT, ImagePredictions, load_predictions, save_predictions

H, W = 520, 704


def _random_instances(
    rng: np.random.Generator, n: int, h: int = H, w: int = W
) -> tuple[np.ndarray, InstanceMasks]:
    boxes = np.zeros((n, 4), dtype=np.int32)
    crops = []
    for i in range(n):
        bh, bw = int(rng.integers(1, 40)), int(rng.integers(1, 40))
        y0, x0 = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
        boxes[i] = (x0, y0, x0 + bw, y0 + bh)
        crops.append(rng.random((bh, bw)) < 0.6)
    return boxes.astype(np.float32), InstanceMasks(h, w, boxes, crops)


def _random_preds(rng: np.random.Generator) -> list[ImagePredictions]:
    preds = []
    for k, (n, with_masks, with_sem) in enumerate(
        [(30, True, True), (0, True, False), (5, False, True), (700, True, False), (3, False, False)]
    ):
        boxes, masks = _random_instances(rng, n)
        boxes[:, 2:] -= rng.random((n, 2)).astype(np.float32)  # non-integer boxes
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2])
        sem = rng.random((H, W)).astype(np.float32) if with_sem else None
        if sem is not None:
            sem[:10] = 0.0
            sem[-10:] = 1.0
        preds.append(
            ImagePredictions(
                f"img{k:02d}",
                H,
                W,
                boxes,
                rng.random(n).astype(np.float32),
                rng.integers(0, 3, n),
                masks if with_masks else None,
                sem,
            )
        )
    return preds


def test_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    preds = _random_preds(rng)
    meta = {"model": "mask-rcnn_r50", "fold": 0, "weights": [1.0, 2.0]}
    path = tmp_path / "sub" / "model.npz"
    save_predictions(path, preds, meta)
    loaded, meta2 = load_predictions(path)
    assert meta2 == meta
    assert list(loaded) == [p.image_id for p in preds]
    for p in preds:
        q = loaded[p.image_id]
        assert (q.height, q.width) == (p.height, p.width)
        np.testing.assert_array_equal(q.boxes, p.boxes)
        np.testing.assert_array_equal(q.scores, p.scores)
        np.testing.assert_array_equal(q.labels, p.labels)
        assert q.boxes.dtype == np.float32 and q.scores.dtype == np.float32 and q.labels.dtype == np.int64
        if p.masks is None:
            assert q.masks is None
        else:
            np.testing.assert_array_equal(q.masks.boxes, p.masks.boxes)
            assert len(q.masks) == len(p.masks)
            for a, b in zip(q.masks.crops, p.masks.crops):
                np.testing.assert_array_equal(a, b)
            # loaded packed: fusion, metric and RLE take the file's buffer as it is (no re-join of the crops)
            flat, offs = q.masks.packed()
            assert flat is q.masks.packed()[0] and offs[-1] == sum(c.size for c in p.masks.crops)
        if p.semantic is None:
            assert q.semantic is None
        else:
            assert q.semantic.dtype == np.float32
            assert np.abs(q.semantic - p.semantic).max() <= 1 / 510 + 1e-7
            assert (q.semantic[:10] == 0).all() and (q.semantic[-10:] == 1).all()
    # empty file
    save_predictions(tmp_path / "empty.npz", [], None)
    loaded, meta3 = load_predictions(tmp_path / "empty.npz")
    assert loaded == {} and meta3 == {}


def test_file_is_compact(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    _, masks = _random_instances(rng, 800)
    boxes = masks.boxes.astype(np.float32)
    p = ImagePredictions("dense", H, W, boxes, rng.random(800), np.zeros(800, int), masks, None)
    save_predictions(tmp_path / "dense.npz", [p])
    n_pixels = sum(c.size for c in masks.crops)
    # random crop bits do not compress: ~1 bit per crop pixel plus small per-detection arrays
    assert (tmp_path / "dense.npz").stat().st_size < n_pixels / 8 * 1.1 + 800 * 64 + 4096


def test_atomic_write_leaves_old_file_on_failure(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    preds = _random_preds(rng)[:1]
    path = tmp_path / "m.npz"
    save_predictions(path, preds)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="JSON"):
        save_predictions(path, preds, meta={"bad": object()})
    with pytest.raises(ValueError, match="more than once"):
        save_predictions(path, preds + preds)
    assert path.read_bytes() == before
    assert sorted(x.name for x in tmp_path.iterdir()) == ["m.npz"]


def test_image_predictions_validation() -> None:
    boxes = np.array([[0, 0, 10, 10]], dtype=np.float32)
    ok = dict(image_id="a", height=H, width=W, boxes=boxes, scores=[0.5], labels=[1])
    ImagePredictions(**ok)
    with pytest.raises(ValueError, match="image a: detection 0 has label 3"):
        ImagePredictions(**{**ok, "labels": [3]})
    with pytest.raises(ValueError, match="image a: detection 0 has a non-finite score"):
        ImagePredictions(**{**ok, "scores": [np.nan]})
    with pytest.raises(ValueError, match="image a: detection 0 box"):
        ImagePredictions(**{**ok, "boxes": [[0, 0, W + 5, 10]]})
    with pytest.raises(ValueError, match="image a: detection 0 box"):
        ImagePredictions(**{**ok, "boxes": [[10, 0, 5, 10]]})
    with pytest.raises(ValueError, match="1 boxes, 2 scores"):
        ImagePredictions(**{**ok, "scores": [0.5, 0.4]})
    with pytest.raises(ValueError, match="semantic map has shape"):
        ImagePredictions(**ok, semantic=np.zeros((10, 10)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ImagePredictions(**ok, semantic=np.full((H, W), 1.5))
    with pytest.raises(ValueError, match="0 masks for 1 detections"):
        ImagePredictions(**ok, masks=InstanceMasks.empty(H, W))
    with pytest.raises(ValueError, match="masks are for a 10x10 image"):
        ImagePredictions(**ok, masks=InstanceMasks(10, 10, [[0, 0, 1, 1]], [np.ones((1, 1), bool)]))


def _valid_arrays(tmp_path: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    path = tmp_path / "valid.npz"
    save_predictions(path, _random_preds(rng)[:3], {"m": 1})
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _write(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    np.savez(path, **arrays)
    return path


def _malformed_cases(a: dict[str, np.ndarray]) -> list[tuple[str, dict | bytes, str]]:
    n = len(a["scores"])
    labels_bad = a["labels"].copy()
    labels_bad[a["det_offsets"][2] + 1] = 7  # third image (the second has no detections)
    scores_nan = a["scores"].copy()
    scores_nan[0] = np.nan
    boxes_out = a["boxes"].copy()
    boxes_out[0, 2] = W + 50
    ids_dup = a["image_ids"].copy()
    ids_dup[1] = ids_dup[0]
    no_meta = {k: v for k, v in a.items() if k != "meta_json"}
    buf = io.BytesIO()
    np.savez(buf, **a)
    return [
        ("garbage", b"this is not a zip file", "not a readable"),
        ("truncated", buf.getvalue()[: len(buf.getvalue()) // 2], "not a readable|unreadable"),
        ("missing_key", no_meta, r"missing member\(s\) \['meta_json'\]"),
        ("format", {**a, "format": np.array("other/9")}, "format is not"),
        ("bad_meta", {**a, "meta_json": np.array("{not json")}, "meta_json is not valid JSON"),
        ("classes", {**a, "classes": np.array(["a", "b", "c"])}, "classes"),
        ("scores_shape", {**a, "scores": a["scores"][:-1]}, "scores has shape"),
        ("boxes_shape", {**a, "boxes": a["boxes"][:, :3]}, "boxes has shape"),
        ("offsets", {**a, "det_offsets": a["det_offsets"][::-1].copy()}, "det_offsets"),
        ("labels_range", {**a, "labels": labels_bad}, "image img02: detection 1 has label 7"),
        ("nan_score", {**a, "scores": scores_nan}, "image img00: detection 0 has a non-finite score"),
        ("box_outside", {**a, "boxes": boxes_out}, "image img00: detection 0 box"),
        ("dup_ids", {**a, "image_ids": ids_dup}, "duplicate image ids"),
        ("mask_bits_short", {**a, "mask_bits": a["mask_bits"][:-3]}, "mask_bits holds"),
        ("mask_boxes_shape", {**a, "mask_boxes": a["mask_boxes"][: n - 1]}, "mask_boxes must have shape"),
        ("semantic_short", {**a, "semantic_q": a["semantic_q"][:-1]}, "semantic_q holds"),
        (
            "semantic_dtype",
            {**a, "semantic_q": a["semantic_q"].astype(np.float32)},
            "semantic_q must be uint8",
        ),
        ("has_masks_dtype", {**a, "has_masks": a["has_masks"].astype(np.int8)}, "has_masks must be bool"),
        ("pickled", {**a, "meta_json": np.array([{"x": 1}], dtype=object)}, "unreadable"),
    ]


def test_malformed_corpus(tmp_path: Path) -> None:
    a = _valid_arrays(tmp_path)
    assert str(a["format"]) == FORMAT
    for name, content, match in _malformed_cases(a):
        path = tmp_path / f"{name}.npz"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            _write(path, content)
        with pytest.raises(ValueError, match=match) as exc:
            load_predictions(path)
        assert str(path) in str(exc.value), name
    with pytest.raises(FileNotFoundError):
        load_predictions(tmp_path / "absent.npz")


def test_negative_crop_window_is_named(tmp_path: Path) -> None:
    a = _valid_arrays(tmp_path)
    mb = a["mask_boxes"].copy()
    mb[2] = [10, 10, 5, 20]
    with pytest.raises(ValueError, match="image img00: mask 2 has a negative crop window"):
        load_predictions(_write(tmp_path / "neg.npz", {**a, "mask_boxes": mb}))


# ------------------------------------------------------------------------------------------------- soft masks
def _soft_preds(rng: np.random.Generator) -> list[ImagePredictions]:
    """Images with soft masks (probabilities incl. exact 0, 1 and the 0.5 rounding edge), binary and none."""
    out = []
    for k, (n, soft) in enumerate([(40, True), (0, True), (6, False), (3, True)]):
        boxes, masks = _random_instances(rng, n)
        probs = [rng.random(c.shape).astype(np.float32) for c in masks.crops]
        for c in probs:
            c.flat[:3] = [0.0, 1.0, 0.5][: c.size]
        masks = InstanceMasks(H, W, masks.boxes, [c >= 0.5 for c in probs])
        out.append(
            ImagePredictions(
                f"s{k}",
                H,
                W,
                boxes,
                rng.random(n),
                rng.integers(0, 3, n),
                masks,
                None,
                probs if soft else None,
            )
        )
    return out


def test_soft_mask_round_trip(tmp_path: Path) -> None:
    """Mask probabilities come back within 1/510 (uint8 q = round(255 p)); binary masks and windows exactly."""
    preds = _soft_preds(np.random.default_rng(7))
    path = tmp_path / "soft.npz"
    save_predictions(path, preds)
    loaded, _ = load_predictions(path)
    with np.load(path) as z:
        assert str(z["format"]) == FORMAT == "sartorius-predictions/2"
        assert z["mask_q"].dtype == np.uint8
    worst = 0.0
    for p in preds:
        q = loaded[p.image_id]
        np.testing.assert_array_equal(q.masks.boxes, p.masks.boxes)
        for a, b in zip(q.masks.crops, p.masks.crops):
            np.testing.assert_array_equal(a, b)
        if p.mask_probs is None:
            assert q.mask_probs is None
            continue
        assert q.mask_probs is not None and len(q.mask_probs) == len(p.mask_probs)
        for a, b in zip(q.mask_probs, p.mask_probs):
            assert a.dtype == np.float32 and a.shape == b.shape
            if a.size:
                worst = max(worst, float(np.abs(a - b).max()))
                if a.size >= 2:
                    assert a.flat[0] == 0.0 and a.flat[1] == 1.0  # 0 and 1 stay exact
    assert 0.0 < worst <= 1 / 510 + 1e-7
    # a second round trip is exact (already quantized values survive unchanged)
    save_predictions(tmp_path / "again.npz", list(loaded.values()))
    again, _ = load_predictions(tmp_path / "again.npz")
    for k, q in loaded.items():
        for a, b in zip(again[k].mask_probs or [], q.mask_probs or []):
            np.testing.assert_array_equal(a, b)


def test_version_1_files_still_load(tmp_path: Path) -> None:
    """A file written before soft masks (format /1, no has_mask_probs / mask_q members) loads unchanged."""
    a = _valid_arrays(tmp_path)
    v1 = {k: v for k, v in a.items() if k not in ("has_mask_probs", "mask_q")}
    v1["format"] = np.array("sartorius-predictions/1")
    new, _ = load_predictions(tmp_path / "valid.npz")
    old, meta = load_predictions(_write(tmp_path / "v1.npz", v1))
    assert meta == {"m": 1} and list(old) == list(new)
    for k in new:
        assert old[k].mask_probs is None
        np.testing.assert_array_equal(old[k].boxes, new[k].boxes)
        assert (old[k].masks is None) == (new[k].masks is None)
    # a version 2 file must have the new members
    with pytest.raises(ValueError, match=r"missing member\(s\) \['mask_q'\]"):
        load_predictions(_write(tmp_path / "v2_short.npz", {k: v for k, v in a.items() if k != "mask_q"}))


def test_malformed_soft_masks(tmp_path: Path) -> None:
    preds = _soft_preds(np.random.default_rng(8))
    save_predictions(tmp_path / "soft.npz", preds)
    with np.load(tmp_path / "soft.npz") as z:
        a = {k: z[k] for k in z.files}
    no_masks = a["has_masks"].copy()
    no_masks[0] = False
    cases = [
        ("q_short", {**a, "mask_q": a["mask_q"][:-1]}, "mask_q holds"),
        ("q_dtype", {**a, "mask_q": a["mask_q"].astype(np.float32)}, "mask_q must be uint8"),
        (
            "probs_without_masks",
            {**a, "has_masks": no_masks},
            "has_mask_probs set for an image without masks",
        ),
        ("flag_shape", {**a, "has_mask_probs": a["has_mask_probs"][:-1]}, "has_mask_probs must be bool"),
    ]
    for name, arrays, match in cases:
        with pytest.raises(ValueError, match=match) as exc:
            load_predictions(_write(tmp_path / f"{name}.npz", arrays))
        assert str(tmp_path / f"{name}.npz") in str(exc.value)
    # in memory: probabilities need masks, one crop per mask of the same shape, values in [0, 1]
    p = preds[0]
    with pytest.raises(ValueError, match="mask_probs need masks"):
        ImagePredictions("x", H, W, p.boxes, p.scores, p.labels, None, None, p.mask_probs)
    with pytest.raises(ValueError, match="mask probability crop 0 has shape"):
        ImagePredictions("x", H, W, p.boxes, p.scores, p.labels, p.masks, None, [c.T for c in p.mask_probs])
    bad = [c.copy() for c in p.mask_probs]
    bad[1][0, 0] = 1.5
    with pytest.raises(ValueError, match=r"image x: mask probability crop 1 must hold finite probabilities"):
        ImagePredictions("x", H, W, p.boxes, p.scores, p.labels, p.masks, None, bad)


def test_atomic_write_gives_the_usual_permissions(tmp_path: Path) -> None:
    """Files written atomically get what ``open()`` would give (0666 & ~umask), not mkstemp's 0600."""
    from celldata.fileio import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.csv", "id,predicted\n")
        os.umask(0o002)
        atomic_write_text(tmp_path / "b.csv", "id,predicted\n")
    finally:
        os.umask(old)
    assert (tmp_path / "a.csv").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.csv").stat().st_mode & 0o777 == 0o664
