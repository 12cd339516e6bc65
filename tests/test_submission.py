"""Submission CSV writing/reading and ground-truth readers: round trips and a malformed-input corpus."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from celldata.instances import InstanceMasks
from celldata.rle import coco_rle_encode, kaggle_rle_encode
from ensemble.submission import (
    find_overlap,
    load_truth,
    read_coco_truth,
    read_kaggle_truth,
    read_submission,
    write_submission,
)

H, W = 20, 30


def _instances(rng: np.random.Generator, n: int, overlapping: bool = False) -> InstanceMasks:
    """n disjoint random masks (columns stripes with holes), or overlapping blobs."""
    full = np.zeros((n, H, W), dtype=bool)
    for i in range(n):
        if overlapping:
            full[i, 2 : 10 + i, 3 : 12 + i] = True
        else:
            x0 = 3 * i
            full[i, rng.integers(0, 8) : rng.integers(10, H), x0 : x0 + 2] = True
            full[i, rng.integers(0, H), x0] = False
    return InstanceMasks.from_full(full)


def _same(a: InstanceMasks, b: InstanceMasks) -> bool:
    return len(a) == len(b) and bool(np.array_equal(a.to_full(), b.to_full()))


def test_write_read_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    preds = {"img_a": _instances(rng, 5), "img_b": InstanceMasks.empty(H, W), "img_c": _instances(rng, 1)}
    ids = ["img_a", "img_b", "img_c", "img_d"]  # img_d has no entry at all
    path = tmp_path / "sub" / "submission.csv"
    n = write_submission(path, ids, preds)
    assert n == 6
    lines = path.read_text().splitlines()
    assert lines[0] == "id,predicted"
    assert lines.count("img_b,") == 1 and lines.count("img_d,") == 1
    assert len(lines) == 1 + 6 + 2
    assert [ln.split(",")[0] for ln in lines[1:]] == ["img_a"] * 5 + ["img_b", "img_c", "img_d"]
    back = read_submission(path, H, W, expected_ids=ids)
    assert list(back) == ids
    assert _same(back["img_a"], preds["img_a"]) and _same(back["img_c"], preds["img_c"])
    assert len(back["img_b"]) == 0 and len(back["img_d"]) == 0
    assert not list(tmp_path.glob("sub/.*tmp"))  # no temp file left behind


def test_write_submission_refuses_bad_input_and_writes_nothing(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    path = tmp_path / "s.csv"
    with pytest.raises(ValueError, match=r"image x: instances 0 and 1 overlap"):
        write_submission(path, ["x"], {"x": _instances(rng, 3, overlapping=True)})
    with pytest.raises(ValueError, match="not in image_ids: y"):
        write_submission(path, ["x"], {"y": _instances(rng, 1)})
    with pytest.raises(ValueError, match="duplicate image id"):
        write_submission(path, ["x", "x"], {})
    with pytest.raises(ValueError, match="comma"):
        write_submission(path, ["a,b"], {})
    assert not path.exists() and not list(tmp_path.iterdir())
    # an existing file is not touched by a failed write
    write_submission(path, ["x"], {})
    before = path.read_text()
    with pytest.raises(ValueError):
        write_submission(path, ["x"], {"x": _instances(rng, 2, overlapping=True)})
    assert path.read_text() == before


def test_find_overlap() -> None:
    rng = np.random.default_rng(2)
    assert find_overlap(_instances(rng, 4)) is None
    assert find_overlap(_instances(rng, 3, overlapping=True)) == (0, 1)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


M1 = kaggle_rle_encode(np.pad(np.ones((2, 2), bool), ((0, H - 2), (0, W - 2))))  # top-left 2x2
M2 = kaggle_rle_encode(np.pad(np.ones((2, 2), bool), ((1, H - 3), (1, W - 3))))  # overlaps M1 at (1, 1)
M3 = kaggle_rle_encode(np.pad(np.ones((2, 2), bool), ((5, H - 7), (5, W - 7))))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty file"),
        ("ImageId,EncodedPixels\na,1 2\n", "expected exactly 'id,predicted'"),
        ("id,predicted,extra\na,1 2,\n", "expected exactly 'id,predicted'"),
        ("id,predicted\na,1 2\nid,predicted\n", r"row 2 \(line 3\): duplicate header row"),
        ("id,predicted\na,1 2,3\n", r"row 1 \(line 2\): 3 fields"),
        ("id,predicted\n,1 2\n", "row 1 .*empty id"),
        ("id,predicted\na,1 2\nzzz,1 2\n", r"row 2 \(line 3\), id 'zzz': unknown image id"),
        ("id,predicted\na,1 2 3\n", r"row 1 \(line 2\), id 'a', field 'predicted': .*odd number"),
        ("id,predicted\na,1 x\n", "id 'a', field 'predicted': RLE token 'x' is not an integer"),
        ("id,predicted\na,599 5\n", "id 'a', field 'predicted': .*past the image end"),
        ("id,predicted\na,5 2 1 2\n", "id 'a', field 'predicted': .*unsorted"),
        ("id,predicted\na,1 0\n", "id 'a', field 'predicted': .*non-positive length"),
        (
            f"id,predicted\na,{M3}\nb,{M1}\na,{M1}\nb,{M2}\n",
            r"row 4 \(line 5\), id 'b': mask overlaps .* row 2",
        ),
    ],
)
def test_read_submission_malformed_corpus(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path / "bad.csv", text)
    with pytest.raises(ValueError, match=message) as info:
        read_submission(path, H, W, expected_ids=["a", "b"])
    assert str(path) in str(info.value)


def test_read_submission_details(tmp_path: Path) -> None:
    path = _write(tmp_path / "ok.csv", f"id,predicted\r\na,{M1}\r\n\r\nb,\r\na,{M3}\r\n")
    got = read_submission(path, H, W)  # CRLF line ends, a blank line, no expected ids
    assert list(got) == ["a", "b"] and len(got["a"]) == 2 and len(got["b"]) == 0
    with pytest.raises(ValueError, match="not found"):
        read_submission(tmp_path / "missing.csv")
    # per-image sizes override the default
    got = read_submission(path, expected_ids=["a", "b"], heights_widths={"a": (H, W), "b": (H, W)})
    assert got["a"].height == H and got["a"].width == W


# ------------------------------------------------------------------------------------------------ truth readers


TRUTH_HEADER = "id,annotation,width,height,cell_type,plate_time,sample_date,sample_id,elapsed_timedelta\n"


def test_read_kaggle_truth_keeps_overlaps(tmp_path: Path) -> None:
    text = TRUTH_HEADER + "".join(
        f"{i},{r},{W},{H},{ct},x,y,s,z\n"
        for i, r, ct in [("b", M1, "astro"), ("b", M2, "astro"), ("a", M3, "cort")]
    )
    truth, types = read_kaggle_truth(_write(tmp_path / "train.csv", text))
    assert list(truth) == ["a", "b"] and types == {"a": "cort", "b": "astro"}
    assert len(truth["b"]) == 2 and find_overlap(truth["b"]) == (0, 1)  # overlapping truth is kept
    assert truth["b"].areas().tolist() == [4, 4]
    # minimal columns, no cell type
    truth2, types2 = read_kaggle_truth(
        _write(tmp_path / "min.csv", f"id,annotation,width,height\na,{M1},{W},{H}\n")
    )
    assert types2 == {} and len(truth2["a"]) == 1
    assert load_truth(tmp_path / "min.csv")[0]["a"].areas().tolist() == [4]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("id,annotation,height\na,1 2,3\n", "missing column.*width"),
        (
            TRUTH_HEADER + f"a,{M1},x,{H},astro,,,s,\n",
            r"row 1 \(line 2\), id 'a', field 'width': 'x' is not an integer",
        ),
        (TRUTH_HEADER + f"a,{M1},{W},0,astro,,,s,\n", "field 'height': must be > 0"),
        (
            TRUTH_HEADER + f"a,{M1},{W},{H},astro,,,s,\na,{M3},{W},{H + 1},astro,,,s,\n",
            r"row 2 .*'height'/'width'",
        ),
        (TRUTH_HEADER + f"a,{M1},{W},{H},astro,,,s,\na,{M3},{W},{H},cort,,,s,\n", "row 2 .*'cell_type'"),
        (TRUTH_HEADER + f"a,,{W},{H},astro,,,s,\n", "field 'annotation': empty mask"),
        (TRUTH_HEADER + f"a,1 2 3,{W},{H},astro,,,s,\n", "field 'annotation': .*odd number"),
        (TRUTH_HEADER + f"a,{M1},{W},{H},astro\n", "wrong number of fields"),
        (TRUTH_HEADER, "no data rows"),
    ],
)
def test_read_kaggle_truth_malformed(tmp_path: Path, rows: str, message: str) -> None:
    path = _write(tmp_path / "train.csv", rows)
    with pytest.raises(ValueError, match=message):
        read_kaggle_truth(path)


def test_read_coco_truth(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    a = _instances(rng, 3)
    coco = {
        "images": [
            {"id": 1, "kaggle_id": "k1", "height": H, "width": W, "file_name": "train/k1.png"},
            {"id": 2, "height": H, "width": W, "file_name": "train/2.png", "cell_type": "cort"},
        ],
        "annotations": [
            {"id": i + 1, "image_id": 1, "category_id": 2, "segmentation": coco_rle_encode(a.mask(i))}
            for i in range(3)
        ],
        "categories": [{"id": 1, "name": "shsy5y"}, {"id": 2, "name": "astro"}, {"id": 3, "name": "cort"}],
    }
    # uncompressed column-major counts are read too
    coco["annotations"][0]["segmentation"] = {
        "size": [H, W],
        "counts": _uncompressed(a.mask(0)),
    }
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(coco))
    truth, types = load_truth(path)
    assert list(truth) == ["2", "k1"] and types == {"2": "cort", "k1": "astro"}
    assert _same(truth["k1"], a) and len(truth["2"]) == 0
    coco["annotations"][1]["segmentation"]["counts"] = "0~"
    path.write_text(json.dumps(coco))
    with pytest.raises(ValueError, match="annotation 2: .*invalid character"):
        read_coco_truth(path)
    with pytest.raises(ValueError, match="must be a train.csv-format"):
        load_truth(tmp_path / "gt.txt")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not valid json"):
        read_coco_truth(tmp_path / "bad.json")


def _uncompressed(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO counts: alternating background/foreground run lengths, column-major."""
    flat = mask.ravel(order="F").astype(np.int8)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    counts = np.diff(bounds).tolist()
    return [0, *counts] if flat[0] else counts


def test_real_truth_readers_agree(real_coco_path: Path, tmp_path: Path) -> None:
    truth, types = read_coco_truth(real_coco_path)
    assert len(truth) == 56 and sum(len(m) for m in truth.values()) == 7339
    assert set(types.values()) == {"shsy5y", "astro", "cort"}
    ids = sorted(truth)[:6]
    rows = [TRUTH_HEADER]
    for k in ids:
        m = truth[k]
        rows += [f"{k},{r},{m.width},{m.height},{types[k]},,,s,\n" for r in m.to_kaggle_rles()]
    truth2, types2 = read_kaggle_truth(_write(tmp_path / "train.csv", "".join(rows)))
    assert list(truth2) == ids and types2 == {k: types[k] for k in ids}
    for k in ids:
        np.testing.assert_array_equal(truth2[k].boxes, truth[k].boxes)
        assert all(np.array_equal(x, y) for x, y in zip(truth2[k].crops, truth[k].crops))


def test_kaggle_id_one_rule_for_coco_images() -> None:
    """kaggle_id, then image_id, then file stem, then the numeric id; empty values are skipped."""
    from celldata.coco import kaggle_id

    assert kaggle_id({"id": 3, "kaggle_id": "abc", "image_id": "zzz", "file_name": "train/q.png"}) == "abc"
    assert kaggle_id({"id": 3, "kaggle_id": "", "image_id": "zzz", "file_name": "train/q.png"}) == "zzz"
    assert kaggle_id({"id": 3, "file_name": "train/0a6ecc5fe78a.png"}) == "0a6ecc5fe78a"
    assert kaggle_id({"id": 3}) == "3"
    with pytest.raises(ValueError, match="without kaggle_id"):
        kaggle_id({"height": 5})


def test_coco_truth_ids_follow_kaggle_id(tmp_path: Path) -> None:
    from ensemble.submission import read_coco_truth

    seg = {"size": [4, 5], "counts": [2, 3, 15]}
    data = {
        "images": [
            {"id": 1, "height": 4, "width": 5, "file_name": "train/stem_only.png"},
            {"id": 2, "height": 4, "width": 5, "image_id": "by_image_id", "file_name": "train/x.png"},
        ],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": seg}],
        "categories": [{"id": 1, "name": "shsy5y"}],
    }
    path = tmp_path / "t.json"
    path.write_text(json.dumps(data))
    truth, _ = read_coco_truth(path)
    assert sorted(truth) == ["by_image_id", "stem_only"] and len(truth["stem_only"]) == 1
