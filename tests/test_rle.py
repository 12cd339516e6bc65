"""Kaggle and COCO RLE: round trips (random and real masks), the one-pass label-image encoder, malformed input."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from celldata.instances import InstanceMasks
from celldata.rle import (
    coco_rle_area,
    coco_rle_counts,
    coco_rle_decode,
    coco_rle_encode,
    coco_rle_to_crop,
    coco_rle_to_kaggle_rle,
    kaggle_rle_decode,
    kaggle_rle_encode,
    kaggle_rle_encode_label_image,
    kaggle_rle_runs,
    kaggle_rle_to_coco_rle,
    runs_to_crop,
)


def _random_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    kind = rng.integers(0, 4)
    if kind == 0:
        return rng.random((h, w)) < rng.uniform(0.05, 0.95)
    if kind == 1:  # a blob
        yy, xx = np.mgrid[:h, :w]
        return ((yy - rng.uniform(0, h)) / rng.uniform(1, h)) ** 2 + (
            (xx - rng.uniform(0, w)) / rng.uniform(1, w)
        ) ** 2 <= 1
    if kind == 2:  # touches image corners / wraps rows
        m = np.zeros((h, w), dtype=bool)
        m[:, -1] = True
        m[:, 0] = True
        m[0, :] = rng.random(w) < 0.5
        return m
    return np.zeros((h, w), dtype=bool) if rng.random() < 0.5 else np.ones((h, w), dtype=bool)


def test_kaggle_round_trip_random_masks() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        h, w = (int(v) for v in rng.integers(1, 40, size=2))
        m = _random_mask(rng, h, w)
        rle = kaggle_rle_encode(m)
        np.testing.assert_array_equal(kaggle_rle_decode(rle, h, w), m)
        # row-major, 1-based: pixel (y, x) is number y * w + x + 1
        if m.any():
            y, x = np.argwhere(m)[0]
            assert int(rle.split()[0]) == y * w + x + 1
        else:
            assert rle == ""


def test_kaggle_format_is_row_major_and_1_based() -> None:
    m = np.zeros((3, 4), dtype=bool)
    m[0, 3] = m[1, 0] = m[1, 1] = True  # a run that wraps from row 0 into row 1
    m[2, 2] = True
    assert kaggle_rle_encode(m) == "4 3 11 1"
    np.testing.assert_array_equal(kaggle_rle_decode("4 3 11 1", 3, 4), m)


def test_label_image_encoder_matches_per_label_encoding() -> None:
    rng = np.random.default_rng(1)
    for _ in range(30):
        h, w = (int(v) for v in rng.integers(1, 50, size=2))
        labels = rng.integers(0, 12, size=(h, w)) * (rng.random((h, w)) < 0.7)
        labels = labels.astype(rng.choice([np.int32, np.uint16, np.int64]))
        got = kaggle_rle_encode_label_image(labels)
        present = [int(v) for v in np.unique(labels) if v > 0]
        assert list(got) == present
        for v in present:
            assert got[v] == kaggle_rle_encode(labels == v)


def test_label_image_encoder_validates() -> None:
    with pytest.raises(ValueError, match="2-D"):
        kaggle_rle_encode_label_image(np.zeros((2, 2, 2), dtype=np.int32))
    with pytest.raises(ValueError, match="integer dtype"):
        kaggle_rle_encode_label_image(np.zeros((2, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="negative label -1"):
        kaggle_rle_encode_label_image(np.array([[0, -1]], dtype=np.int32))
    assert kaggle_rle_encode_label_image(np.zeros((3, 3), dtype=np.int32)) == {}


def test_label_image_encoder_is_one_pass_fast() -> None:
    # 800 labels on a 520 x 704 image: a per-label scan would need 800 full-image passes
    rng = np.random.default_rng(2)
    labels = np.zeros((520, 704), dtype=np.int32)
    ys, xs = rng.integers(0, 500, 800), rng.integers(0, 690, 800)
    for i, (y, x) in enumerate(zip(ys, xs), start=1):
        labels[y : y + 18, x : x + 14] = i
    t0 = time.perf_counter()
    out = kaggle_rle_encode_label_image(labels)
    elapsed = time.perf_counter() - t0
    assert len(out) == len(np.unique(labels)) - 1
    for v in list(out)[:: len(out) // 20]:
        assert out[v] == kaggle_rle_encode(labels == v)
    assert elapsed < 1.0, f"label-image encoding took {elapsed:.2f}s"


def test_coco_round_trip_and_conversions() -> None:
    rng = np.random.default_rng(3)
    for _ in range(100):
        h, w = (int(v) for v in rng.integers(1, 40, size=2))
        m = _random_mask(rng, h, w)
        c = coco_rle_encode(m)
        assert isinstance(c["counts"], str) and c["size"] == [h, w]
        json.dumps(c)
        np.testing.assert_array_equal(coco_rle_decode(c), m)
        assert coco_rle_area(c) == m.sum()
        # uncompressed counts (column-major) read the same
        counts = coco_rle_counts(c)
        flat = m.ravel(order="F")
        assert counts.sum() == h * w and (counts[0] == 0) == bool(flat[0])
        np.testing.assert_array_equal(coco_rle_decode({"size": [h, w], "counts": counts.tolist()}), m)
        # Kaggle <-> COCO
        k = kaggle_rle_encode(m)
        np.testing.assert_array_equal(coco_rle_decode(kaggle_rle_to_coco_rle(k, h, w)), m)
        assert coco_rle_to_kaggle_rle(c) == k
        # straight into a tight crop
        box, crop = coco_rle_to_crop(c)
        full = np.zeros((h, w), dtype=bool)
        full[box[1] : box[3], box[0] : box[2]] = crop
        np.testing.assert_array_equal(full, m)
        if m.any():
            ys, xs = np.nonzero(m)
            assert box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_runs_to_crop_with_wrapping_runs() -> None:
    starts, lengths = kaggle_rle_runs("4 3 11 1", 3, 4)
    box, crop = runs_to_crop(starts, starts + lengths, 4)
    assert box == (0, 0, 4, 3)
    np.testing.assert_array_equal(crop, kaggle_rle_decode("4 3 11 1", 3, 4))


def test_real_rows_coco_to_kaggle_and_back(real_coco_path: Path) -> None:
    data = json.loads(real_coco_path.read_text())
    anns = data["annotations"][::14]  # ~520 real instances across all 56 images
    assert isinstance(anns[0]["segmentation"]["counts"], list)  # uncompressed column-major
    for a in anns:
        seg = a["segmentation"]
        h, w = seg["size"]
        ref = mask_utils.decode(mask_utils.frPyObjects(seg, h, w)).astype(bool)
        k = coco_rle_to_kaggle_rle(seg)
        np.testing.assert_array_equal(kaggle_rle_decode(k, h, w), ref)
        back = kaggle_rle_to_coco_rle(k, h, w)
        np.testing.assert_array_equal(coco_rle_decode(back), ref)
        assert coco_rle_counts(back).tolist() == list(seg["counts"])  # identical runs after the round trip
        assert coco_rle_area(back) == a["area"]
        x, y, bw, bh = a["bbox"]
        box, crop = coco_rle_to_crop(seg)
        assert box == (x, y, x + bw, y + bh)
        assert crop.sum() == a["area"]
        # InstanceMasks from the Kaggle string gives the same Kaggle string back
        assert InstanceMasks.from_kaggle_rles([k], h, w).to_kaggle_rles() == [k]


@pytest.mark.parametrize(
    ("rle", "message"),
    [
        ("1 2 3", "odd number of tokens"),
        ("1 2.5", "'2.5' is not an integer"),
        ("a 3", "'a' is not an integer"),
        ("1_0 3", "'1_0' is not an integer"),
        ("1\u00a03", "non-ASCII whitespace"),
        ("1 0", "non-positive length 0"),
        ("1 -3", "non-positive length -3"),
        ("0 3", "start 0 < 1"),
        ("-2 3", "start -2 < 1"),
        ("11 3", "runs past the image end"),
        ("13 1", "runs past the image end"),
        ("99999999999999999999999 1", "out of range"),
        ("5 2 1 2", "unsorted"),
        ("1 3 3 2", "overlapping"),
    ],
)
def test_malformed_kaggle_rle(rle: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        kaggle_rle_decode(rle, 3, 4)


def test_kaggle_rle_edge_inputs() -> None:
    assert not kaggle_rle_decode("", 3, 4).any()
    assert not kaggle_rle_decode("   ", 3, 4).any()
    assert kaggle_rle_decode("12 1", 3, 4)[2, 3]  # last pixel
    assert kaggle_rle_decode(" 1  2 \t5 1\n", 3, 4).sum() == 3  # any ASCII whitespace separates tokens
    assert kaggle_rle_decode("1 2 3 1", 3, 4).sum() == 3  # adjacent runs are allowed
    with pytest.raises(ValueError, match="must be a string"):
        kaggle_rle_decode(5, 3, 4)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="2-D"):
        kaggle_rle_encode(np.zeros(4, dtype=bool))


@pytest.mark.parametrize(
    ("rle", "message"),
    [
        ({"size": [2, 2], "counts": [1, 2]}, "sum to 3, expected 2x2 = 4"),
        ({"size": [2, 2], "counts": [5, -1]}, "count 1 is negative"),
        ({"size": [2, 2], "counts": [1.5, 2.5]}, "must be integers"),
        ({"size": [2, 2], "counts": "0~"}, "invalid character"),
        ({"size": [2, 2], "counts": "0`"}, "ends inside a count"),
        ({"size": [2], "counts": [4]}, "'size' must be"),
        ({"counts": [4]}, "dict with 'size' and 'counts'"),
        ({"size": [2, 2], "counts": 4}, "must be a list or a string"),
    ],
)
def test_malformed_coco_rle(rle: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        coco_rle_decode(rle)


def test_compressed_counts_decoder_matches_pycocotools() -> None:
    rng = np.random.default_rng(4)
    for _ in range(50):
        m = _random_mask(rng, 37, 23)
        enc = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        ref = mask_utils.frPyObjects(
            {"size": [37, 23], "counts": coco_rle_counts(enc).tolist()}, 37, 23
        )  # re-compressing our decoded counts must give pycocotools' exact string
        assert ref["counts"] == enc["counts"]


def test_batch_kaggle_encoder_matches_per_mask_encoder() -> None:
    """InstanceMasks.to_kaggle_rles (one numba pass over packed crops) equals kaggle_rle_encode of each full
    frame, including crops spanning the full width, whose runs continue across row ends."""
    from celldata.instances import InstanceMasks
    from celldata.rle import kaggle_rles_from_crops

    rng = np.random.default_rng(0)
    for _ in range(150):
        h, w = int(rng.integers(1, 25)), int(rng.integers(1, 25))
        n = int(rng.integers(1, 6))
        frames = rng.random((n, h, w)) < rng.uniform(0, 1)
        frames[0] = rng.random((h, w)) < 0.9
        assert InstanceMasks.from_full(frames).to_kaggle_rles() == [kaggle_rle_encode(f) for f in frames]
    assert InstanceMasks.empty(4, 5).to_kaggle_rles() == []
    with pytest.raises(ValueError, match="offsets"):
        kaggle_rles_from_crops(np.ones(4, np.uint8), np.array([0, 3]), np.array([[0, 0, 2, 2]]), 5)


def test_instances_from_packed_round_trip() -> None:
    """InstanceMasks.from_packed gives the same masks, areas and RLEs as the crop-list constructor, packed() returns
    its buffer without a copy (and the concatenation otherwise), and mismatched offsets/values/windows raise."""
    rng = np.random.default_rng(3)
    frames = rng.random((6, 9, 11)) < 0.4
    frames[2] = False  # an empty mask (0x0 crop)
    ref = InstanceMasks.from_full(frames)
    flat, offs = ref.packed()
    assert flat.dtype == np.uint8 and offs.tolist()[0] == 0 and offs[-1] == flat.size
    got = InstanceMasks.from_packed(ref.height, ref.width, ref.boxes, flat.copy(), offs)
    assert np.array_equal(got.to_full(), frames)
    assert all(c.dtype == bool for c in got.crops)
    assert got.areas().tolist() == frames.sum(axis=(1, 2)).tolist() == ref.areas().tolist()
    assert got.to_kaggle_rles() == ref.to_kaggle_rles() == [kaggle_rle_encode(f) for f in frames]
    gflat, goffs = got.packed()
    assert np.shares_memory(gflat, got.crops[0]) and np.array_equal(goffs, offs)
    got.crops = [c.copy() for c in got.crops[::-1]]  # a new list: packed() concatenates it again
    assert np.array_equal(got.packed()[0], InstanceMasks(9, 11, ref.boxes[::-1], ref.crops[::-1]).packed()[0])
    with pytest.raises(ValueError, match="offsets"):
        InstanceMasks.from_packed(9, 11, ref.boxes, flat, offs + 1)
    with pytest.raises(ValueError, match="0/1"):
        InstanceMasks.from_packed(9, 11, ref.boxes, flat * 2, offs)
    with pytest.raises(ValueError, match="outside"):
        InstanceMasks.from_packed(8, 11, np.array([[0, 0, 11, 9]]), np.ones(99, np.uint8), np.array([0, 99]))


def test_packed_crops_behave_as_a_read_only_list_and_stay_packed() -> None:
    """Masks built packed expose PackedCrops: indexing (negative, out of range), slices and iteration give the
    same crops as the list form; the sequence cannot be changed; subset() of packed masks stays packed (one
    buffer, same masks as the list subset); from_crops_packed checks like the constructor; the decoders
    (Kaggle runs, COCO RLE) return packed masks."""
    from celldata.instances import PackedCrops, gather_packed
    from celldata.rle import coco_rle_encode

    rng = np.random.default_rng(5)
    frames = rng.random((7, 12, 10)) < 0.35
    frames[3] = False
    ref = InstanceMasks.from_full(frames)
    got = InstanceMasks.from_crops_packed(ref.height, ref.width, ref.boxes, ref.crops)
    assert isinstance(got.crops, PackedCrops) and len(got.crops) == 7
    for i in (0, 3, 6, -1, -7):
        assert np.array_equal(got.crops[i], ref.crops[i]) and got.crops[i].dtype == bool
    assert all(np.array_equal(a, b) for a, b in zip(got.crops, ref.crops, strict=True))
    assert [c.shape for c in got.crops[1:6:2]] == [c.shape for c in ref.crops[1:6:2]]
    with pytest.raises(IndexError):
        got.crops[7]
    with pytest.raises(TypeError):
        got.crops[0] = ref.crops[0]  # type: ignore[index]
    sel = np.array([5, 0, 3, 5, 2])
    sub = got.subset(sel)
    assert isinstance(sub.crops, PackedCrops)
    assert (
        np.array_equal(sub.to_full(), ref.subset(sel).to_full())
        and sub.boxes.tolist() == ref.boxes[sel].tolist()
    )
    assert sub.to_kaggle_rles() == ref.subset(sel).to_kaggle_rles()
    assert np.array_equal(got.subset(np.array([True, False] * 3 + [True])).to_full(), frames[[0, 2, 4, 6]])
    flat, offs = got.packed()
    gflat, goffs = gather_packed(flat, offs, sel)
    want = np.concatenate([flat[offs[i] : offs[i + 1]] for i in sel])
    assert np.array_equal(gflat, want) and goffs[-1] == want.size
    with pytest.raises(ValueError, match="crop 0 has shape"):
        InstanceMasks.from_crops_packed(12, 10, ref.boxes[:1], [np.zeros((1, 1), bool)])
    import copy
    import pickle

    for q in (pickle.loads(pickle.dumps(got)), copy.deepcopy(got)):  # tuning workers receive masks pickled
        assert isinstance(q.crops, PackedCrops) and np.array_equal(q.to_full(), frames)
        assert np.shares_memory(q.crops[1], q.packed()[0])  # one buffer again, not a copy per view
    runs = [ref.kaggle_runs(i) for i in range(len(ref))]
    from_runs = InstanceMasks.from_runs([(s, e - s) for s, e in runs], 12, 10)
    from_coco = InstanceMasks.from_coco_rles([coco_rle_encode(f) for f in frames])
    for m in (from_runs, from_coco):
        assert isinstance(m.crops, PackedCrops) and np.array_equal(m.to_full(), frames)


def test_pack_crops_any_layout() -> None:
    """pack_crops gives the row-major 0/1 concatenation for contiguous bool/uint8 crops (byte join), views with
    strides and other dtypes (concatenation), writable; a size mismatch with the windows raises."""
    from celldata.instances import pack_crops

    a = np.random.default_rng(1).random((10, 12)) < 0.5
    crops = [a, a[2:7, 3:9], a.astype(np.uint8), np.zeros((0, 0), bool), a[1:].astype(np.float32)]
    boxes = np.array([[0, 0, 12, 10], [0, 0, 6, 5], [0, 0, 12, 10], [0, 0, 0, 0], [0, 0, 12, 9]])
    for sel in ([0, 2], [0, 1, 2, 3, 4]):
        flat, offs = pack_crops([crops[i] for i in sel], boxes[sel])
        assert flat.dtype == np.uint8 and flat.flags.writeable
        assert np.array_equal(flat, np.concatenate([np.asarray(crops[i], np.uint8).ravel() for i in sel]))
        assert offs.tolist() == [0, *np.cumsum([crops[i].size for i in sel]).tolist()]
    with pytest.raises(ValueError, match="pixels"):
        pack_crops([a], boxes[[1]])
