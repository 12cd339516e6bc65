"""tools/prepare_livecell.py / celldata.livecell on a small LIVECell-format dataset built here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from celldata.livecell import convert_livecell, parse_class_map
from celldata.rle import coco_rle_decode

REPO = Path(__file__).resolve().parents[1]
H, W = 48, 64


def square(x0: float, y0: float, x1: float, y1: float) -> list[float]:
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def build_livecell(root: Path, single_category: bool = False) -> Path:
    """Three tif images in a nested folder and one LIVECell-style json (dict-form annotations)."""
    img_dir = root / "images" / "livecell_train_val_images" / "nested"
    img_dir.mkdir(parents=True)
    names = [
        "SHSY5Y_Phase_A10_1_00d04h00m_1.tif",
        "A172_Phase_C7_1_00d00h00m_2.tif",
        "BV2_Phase_D4_2_01d12h00m_3.tif",
    ]
    lines = ["shsy5y", "a172", "bv2"]
    images, anns = [], {}
    for i, name in enumerate(names):
        cv2.imwrite(str(img_dir / name), np.full((H, W), 100 + i, np.uint8))
        images.append({"id": 100 + i, "file_name": name, "width": W, "height": H})
        polys = [[square(5, 5, 20.5, 15.5)], [square(18, 12, 30, 30), square(40, 2, 44, 6)]]
        for j, seg in enumerate(polys):
            aid = 1000 + 10 * i + j
            anns[str(aid)] = {
                "id": aid,
                "image_id": 100 + i,
                "category_id": 1 if single_category else i + 1,
                "segmentation": seg,
                "bbox": [0, 0, 1, 1],  # deliberately wrong: the converter recomputes it from the mask
                "area": 1.0,
                "iscrowd": 0,
            }
    cats = (
        [{"id": 1, "name": "cell"}]
        if single_category
        else [{"id": i + 1, "name": n} for i, n in enumerate(lines)]
    )
    path = root / ("livecell_single.json" if single_category else "livecell_train.json")
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")} if root.exists() else set()


def test_convert_sartorius_categories(tmp_path: Path) -> None:
    ann = build_livecell(tmp_path)
    out = tmp_path / "out"
    summary = convert_livecell([ann], tmp_path / "images", out, show_progress=False)
    coco = json.loads((out / "annotations" / "livecell_train.json").read_text())
    src = json.loads(ann.read_text())
    assert [c["name"] for c in coco["categories"]] == ["shsy5y", "astro", "cort"]
    assert len(coco["images"]) == 3 and len(coco["annotations"]) == 6
    by_stem = {im["kaggle_id"]: im for im in coco["images"]}
    expect_cat = {"SHSY5Y": 1, "A172": 2, "BV2": 3}
    for im in coco["images"]:
        assert im["file_name"] == f"images/{im['kaggle_id']}.png"
        png = cv2.imread(str(out / im["file_name"]), cv2.IMREAD_UNCHANGED)
        assert png.dtype == np.uint8 and png.shape == (H, W)
    src_by_file = {im["file_name"]: im["id"] for im in src["images"]}
    for a in coco["annotations"]:
        im = next(i for i in coco["images"] if i["id"] == a["image_id"])
        assert a["category_id"] == expect_cat[im["kaggle_id"].split("_")[0]]
        m = coco_rle_decode(a["segmentation"])
        assert a["area"] == int(m.sum()) > 0
        ys, xs = np.nonzero(m)
        assert a["bbox"] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
    # masks equal pycocotools' own polygon rasterisation, in order
    for stem, im in by_stem.items():
        src_id = src_by_file[stem + ".tif"]
        src_anns = sorted(
            (a for a in src["annotations"].values() if a["image_id"] == src_id), key=lambda a: a["id"]
        )
        mine = [a for a in coco["annotations"] if a["image_id"] == im["id"]]
        for s, m in zip(src_anns, mine):
            ref = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(s["segmentation"], H, W))).astype(
                bool
            )
            assert np.array_equal(coco_rle_decode(m["segmentation"]), ref)
    assert summary["per_category"] == {"shsy5y": 2, "astro": 2, "cort": 2}


def test_single_cell_category_and_class_map(tmp_path: Path) -> None:
    ann = build_livecell(tmp_path, single_category=True)
    out = tmp_path / "out"
    convert_livecell([ann], tmp_path / "images", out, categories="cell", show_progress=False)
    coco = json.loads((out / "annotations" / "livecell_single.json").read_text())
    assert coco["categories"] == [{"id": 1, "name": "cell", "supercategory": "cell"}]
    assert {a["category_id"] for a in coco["annotations"]} == {1} and len(coco["annotations"]) == 6
    assert sorted(im["livecell_cell_type"] for im in coco["images"]) == ["a172", "bv2", "shsy5y"]
    # single-category file, Sartorius targets: the cell line comes from the file name; a172 skipped by the map
    out2 = tmp_path / "out2"
    s = convert_livecell(
        [ann],
        tmp_path / "images",
        out2,
        class_map=parse_class_map("A-172=skip,bv2=astro"),
        show_progress=False,
    )
    coco2 = json.loads((out2 / "annotations" / "livecell_single.json").read_text())
    assert sorted(a["category_id"] for a in coco2["annotations"]) == [1, 1, 2, 2]
    assert s["skipped"] == {"class_map_skip": 2}


def test_parse_class_map_rejects_bad_target() -> None:
    assert parse_class_map("SH-SY5Y=cort, bv2=skip") == {"shsy5y": "cort", "bv2": "skip"}
    with pytest.raises(ValueError, match="target"):
        parse_class_map("a172=hela")
    with pytest.raises(ValueError, match="NAME=TARGET"):
        parse_class_map("a172")


@pytest.mark.parametrize("case", ["unknown line", "missing image", "size mismatch"])
def test_bad_input_names_file_and_writes_nothing(case: str, tmp_path: Path) -> None:
    ann = build_livecell(tmp_path)
    data = json.loads(ann.read_text())
    img_dir = tmp_path / "images" / "livecell_train_val_images" / "nested"
    if case == "unknown line":
        data["categories"][1]["name"] = "HeLa"
        ann.write_text(json.dumps(data))
        pattern = r"livecell_train\.json: annotation 10\d\d of image A172.*unknown cell line 'hela'"
    elif case == "missing image":
        (img_dir / "BV2_Phase_D4_2_01d12h00m_3.tif").unlink()
        pattern = r"livecell_train\.json: image 102: file BV2_Phase_D4_2_01d12h00m_3\.tif not found"
    else:
        cv2.imwrite(str(img_dir / "A172_Phase_C7_1_00d00h00m_2.tif"), np.zeros((H, W + 2), np.uint8))
        pattern = (
            rf"livecell_train\.json: image 101: file .*A172.* is {W + 2}x{H} but the json says width={W}"
        )
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=pattern):
        convert_livecell([ann], tmp_path / "images", out, show_progress=False)
    assert not out.exists()


def test_cli(tmp_path: Path) -> None:
    ann = build_livecell(tmp_path)
    cmd = [
        sys.executable,
        "tools/prepare_livecell.py",
        "--ann",
        str(ann),
        "--images-dir",
        str(tmp_path / "images"),
    ]
    ok = subprocess.run(
        [*cmd, "--out", str(tmp_path / "o"), "--no-progress"], cwd=REPO, capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["files"]["annotations/livecell_train.json"] == {"images": 3, "instances": 6}
    bad = subprocess.run(
        [*cmd, "--out", str(tmp_path / "p"), "--class-map", "a172=hela", "--no-progress"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "target" in bad.stderr and "Traceback" not in bad.stderr
