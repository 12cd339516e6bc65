"""tools/prepare_sartorius.py / celldata.prepare: COCO folds, semantic maps, splits, and input validation."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pytest

from celldata import CLASSES
from celldata.kaggle_csv import KAGGLE_COLUMNS
from celldata.prepare import make_folds, prepare_sartorius
from celldata.rle import coco_rle_decode, kaggle_rle_decode, kaggle_rle_encode

REPO = Path(__file__).resolve().parents[1]
H, W = 48, 64


def rect(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def disk(cx: int, cy: int, r: int) -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def build_dataset(root: Path, columns: Sequence[str] = KAGGLE_COLUMNS) -> list[dict]:
    """12 tiny images (4 per cell type, 2 samples of 2 images per type), written in the Kaggle layout.

    Image 0 holds an overlapping pair (rows 1-2) and a touching pair (rows 3-4).
    """
    (root / "train").mkdir(parents=True)
    rows = []
    k = 0
    for t, cell_type in enumerate(CLASSES):
        for s in range(2):
            for j in range(2):
                image_id = f"{t}{s}{j}abcdef012"[:12]
                if k == 0:
                    masks = [rect(2, 2, 12, 10), rect(8, 6, 20, 14), rect(30, 5, 36, 15), rect(36, 5, 42, 15)]
                else:
                    masks = [disk(10 + 3 * k, 20, 4 + k % 3), rect(40, 30, 44 + k % 5, 40)]
                k += 1
                for m in masks:
                    rows.append(
                        {
                            "id": image_id,
                            "annotation": kaggle_rle_encode(m),
                            "width": str(W),
                            "height": str(H),
                            "cell_type": cell_type,
                            "plate_time": f"{j:02d}h00m00s",
                            "sample_date": "2020-01-01",
                            "sample_id": f"{cell_type}_S{s}",
                            "elapsed_timedelta": f"0 days {j:02d}:00:00",
                        }
                    )
                cv2.imwrite(str(root / "train" / f"{image_id}.png"), np.full((H, W), 128, np.uint8))
    write_csv(root, rows, columns)
    (root / "test").mkdir()
    cv2.imwrite(str(root / "test" / "aaaaaaaaaaaa.png"), np.zeros((H, W), np.uint8))
    return rows


def write_csv(root: Path, rows: list[dict], columns: Sequence[str] = KAGGLE_COLUMNS) -> None:
    with open(root / "train.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


def tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict], dict]:
    root = tmp_path_factory.mktemp("kaggle")
    rows = build_dataset(root)
    (root / "train_semi_supervised").mkdir()
    cv2.imwrite(str(root / "train_semi_supervised" / "bbbbbbbbbbbb.png"), np.zeros((H, W), np.uint8))
    summary = prepare_sartorius(root, folds=2, seed=0, show_progress=False)
    return root, rows, summary


def load(root: Path, name: str) -> dict:
    return json.loads((root / "annotations" / name).read_text())


def test_annotations_match_rows_area_bbox(prepared: tuple[Path, list[dict], dict]) -> None:
    root, rows, summary = prepared
    coco = load(root, "train_all.json")
    assert summary["n_images"] == 12 and summary["n_instances"] == len(rows)
    assert [c["name"] for c in coco["categories"]] == list(CLASSES)
    assert [c["id"] for c in coco["categories"]] == [1, 2, 3]
    by_id = {im["id"]: im for im in coco["images"]}
    assert len(coco["annotations"]) == len(rows)
    # annotations keep the csv order within each image (images sorted by id; rows are already sorted)
    for a, r in zip(coco["annotations"], rows):
        im = by_id[a["image_id"]]
        assert im["kaggle_id"] == r["id"] == im["image_id"]
        assert im["file_name"] == f"train/{r['id']}.png"
        assert isinstance(a["segmentation"]["counts"], str)
        m = coco_rle_decode(a["segmentation"])
        assert np.array_equal(m, kaggle_rle_decode(r["annotation"], H, W))
        assert a["area"] == int(m.sum())
        ys, xs = np.nonzero(m)
        assert a["bbox"] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
        assert a["category_id"] == CLASSES.index(r["cell_type"]) + 1
        assert a["iscrowd"] == 0
    assert len({a["id"] for a in coco["annotations"]}) == len(rows)


def test_overlapping_instances_are_kept(prepared: tuple[Path, list[dict], dict]) -> None:
    root, _, _ = prepared
    coco = load(root, "train_all.json")
    first = [a for a in coco["annotations"] if a["image_id"] == 1]
    assert len(first) == 4
    m0, m1 = coco_rle_decode(first[0]["segmentation"]), coco_rle_decode(first[1]["segmentation"])
    assert (m0 & m1).sum() == 4 * 4  # rect(2,2,12,10) & rect(8,6,20,14)
    assert first[1]["area"] == 12 * 8  # not cut by the overlap


def test_folds_grouped_stratified_disjoint(prepared: tuple[Path, list[dict], dict]) -> None:
    root, rows, summary = prepared
    all_ids = {r["id"] for r in rows}
    sample_of = {r["id"]: r["sample_id"] for r in rows}
    type_of = {r["id"]: r["cell_type"] for r in rows}
    int_ids = {im["kaggle_id"]: im["id"] for im in load(root, "train_all.json")["images"]}
    vals = []
    for k in range(2):
        tr = load(root, f"fold{k}_train.json")
        va = load(root, f"fold{k}_val.json")
        tr_ids = {im["kaggle_id"] for im in tr["images"]}
        va_ids = {im["kaggle_id"] for im in va["images"]}
        assert tr_ids.isdisjoint(va_ids) and tr_ids | va_ids == all_ids
        assert {sample_of[i] for i in tr_ids}.isdisjoint({sample_of[i] for i in va_ids})
        assert all(int_ids[im["kaggle_id"]] == im["id"] for im in tr["images"] + va["images"])
        va_img_ids = {im["id"] for im in va["images"]}
        assert all(a["image_id"] in va_img_ids for a in va["annotations"])
        assert len(tr["annotations"]) + len(va["annotations"]) == len(rows)
        # stratified: every fold validates 2 images (one sample) of each cell type
        assert sorted(type_of[i] for i in va_ids) == sorted([c for c in CLASSES for _ in range(2)])
        assert summary["folds"][k]["val_per_class"] == {c: 2 for c in CLASSES}
        # split lists for mmseg match the json
        assert set((root / "splits" / f"fold{k}_val.txt").read_text().split()) == va_ids
        assert set((root / "splits" / f"fold{k}_train.txt").read_text().split()) == tr_ids
        vals.append(va_ids)
    assert vals[0].isdisjoint(vals[1])


def test_make_folds_balances_cell_types_and_is_seeded() -> None:
    rng = np.random.default_rng(0)
    n = 60
    types = [CLASSES[i % 3] for i in range(n)]
    groups = [f"{types[i]}_{i // 6}_{rng.integers(2)}" for i in range(n)]
    folds = make_folds([str(i) for i in range(n)], types, groups, n_folds=5, seed=1)
    assert np.array_equal(folds, make_folds([str(i) for i in range(n)], types, groups, n_folds=5, seed=1))
    for g in set(groups):
        assert len({int(folds[i]) for i in range(n) if groups[i] == g}) == 1
    biggest = max(groups.count(g) for g in set(groups))
    for c in CLASSES:
        per_fold = [sum(1 for i in range(n) if types[i] == c and folds[i] == f) for f in range(5)]
        assert max(per_fold) - min(per_fold) <= biggest
    with pytest.raises(ValueError, match="sample_id"):
        make_folds(["a", "b"], ["cort", "cort"], ["s", "s"], n_folds=2)


def test_semantic_maps(prepared: tuple[Path, list[dict], dict]) -> None:
    root, rows, _ = prepared
    first = rows[0]["id"]
    sem = cv2.imread(str(root / "semantic/train" / f"{first}.png"), cv2.IMREAD_UNCHANGED)
    bnd = cv2.imread(str(root / "semantic/train_boundary" / f"{first}.png"), cv2.IMREAD_UNCHANGED)
    assert sem.dtype == np.uint8 and sem.shape == (H, W)
    union = np.zeros((H, W), bool)
    for r in rows[:4]:
        union |= kaggle_rle_decode(r["annotation"], H, W)
    assert np.array_equal(sem, union.astype(np.uint8) * 1)  # shsy5y = 1
    assert (bnd[6:10, 8:12] == 4).all()  # overlap
    assert (bnd[5:15, 35:37] == 4).all()  # contact line of the touching pair
    assert bnd[20, 38] != 4 and bnd[4, 4] == 1  # interior stays class, far background stays 0
    assert np.array_equal(bnd[bnd != 4], sem[bnd != 4])
    # another cell type paints its own label
    astro = next(r["id"] for r in rows if r["cell_type"] == "astro")
    sem2 = cv2.imread(str(root / "semantic/train" / f"{astro}.png"), cv2.IMREAD_UNCHANGED)
    assert set(np.unique(sem2)) == {0, 2}
    assert len(list((root / "semantic/train").glob("*.png"))) == 12


def test_unlabeled_image_lists(prepared: tuple[Path, list[dict], dict]) -> None:
    root, _, summary = prepared
    test = load(root, "test.json")
    semi = load(root, "semi_supervised.json")
    assert [im["file_name"] for im in test["images"]] == ["test/aaaaaaaaaaaa.png"]
    assert [im["file_name"] for im in semi["images"]] == ["train_semi_supervised/bbbbbbbbbbbb.png"]
    assert test["annotations"] == [] and semi["annotations"] == []
    assert (test["images"][0]["height"], test["images"][0]["width"]) == (H, W)
    train_ids = {im["id"] for im in load(root, "train_all.json")["images"]}
    assert test["images"][0]["id"] not in train_ids
    assert summary["n_test"] == 1 and summary["n_semi_supervised"] == 1


def test_rerun_is_identical(prepared: tuple[Path, list[dict], dict]) -> None:
    root, _, _ = prepared
    before = {n: (root / "annotations" / n).read_bytes() for n in ("fold0_val.json", "train_all.json")}
    prepare_sartorius(root, folds=2, seed=0, show_progress=False)
    assert all((root / "annotations" / n).read_bytes() == b for n, b in before.items())
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no staging left


def _corrupt_row(rows: list[dict], i: int, **kw: str) -> list[dict]:
    rows = [dict(r) for r in rows]
    rows[i].update(kw)
    return rows


def rows_id(i: int) -> str:
    """Image id of data row i (0-based) in build_dataset: image 0 has 4 rows, the others 2."""
    k = 0 if i < 4 else 1 + (i - 4) // 2
    t, rest = divmod(k, 4)
    s, j = divmod(rest, 2)
    return f"{t}{s}{j}abcdef012"[:12]


BAD_CASES = {
    "missing column": (
        lambda root, rows: write_csv(root, rows, [c for c in KAGGLE_COLUMNS if c != "cell_type"]),
        [r"train\.csv: header", "missing column", "'cell_type'"],
    ),
    "rle past the image": (
        lambda root, rows: write_csv(root, _corrupt_row(rows, 2, annotation=f"{H * W - 5} 10")),
        [r"train\.csv: row 3, field 'annotation'", "past the image end"],
    ),
    "rle odd tokens": (
        lambda root, rows: write_csv(root, _corrupt_row(rows, 1, annotation="5 3 7")),
        [r"train\.csv: row 2, field 'annotation'", "odd number"],
    ),
    "rle not integer": (
        lambda root, rows: write_csv(root, _corrupt_row(rows, 1, annotation="5 x")),
        [r"train\.csv: row 2, field 'annotation'", "not an integer"],
    ),
    "rle unsorted": (
        lambda root, rows: write_csv(root, _corrupt_row(rows, 5, annotation="50 3 10 3")),
        [r"train\.csv: row 6, field 'annotation'", "unsorted"],
    ),
    "unknown cell type": (
        lambda root, rows: write_csv(root, _corrupt_row(rows, 3, cell_type="hela")),
        [r"train\.csv: row 4, field 'cell_type'", "hela"],
    ),
    "bad width": (
        lambda root, rows: write_csv(root, _corrupt_row(rows, 6, width="abc")),
        [r"train\.csv: row 7, field 'width'", "not an integer"],
    ),
    "missing image": (
        lambda root, rows: (root / "train" / f"{rows[4]['id']}.png").unlink(),
        [r"train\.csv: row 5, field 'id'", rf"{rows_id(4)}\.png", "not found"],
    ),
    "image size mismatch": (
        lambda root, rows: cv2.imwrite(
            str(root / "train" / f"{rows[4]['id']}.png"), np.zeros((H, W + 1), np.uint8)
        ),
        [r"train\.csv: row 5, field 'width'", rf"{rows_id(4)}\.png", f"{W + 1}x{H}"],
    ),
    "truncated image, header intact": (
        lambda root, rows: _truncate(root / "train" / f"{rows[4]['id']}.png"),
        [rf"train/{rows_id(4)}\.png: truncated file"],
    ),
    "corrupt image data": (
        lambda root, rows: _flip_byte(root / "train" / f"{rows[4]['id']}.png"),
        [rf"train/{rows_id(4)}\.png: corrupt chunk 'IDAT' \(CRC mismatch\)"],
    ),
    "truncated test image": (
        lambda root, rows: _truncate(root / "test" / "aaaaaaaaaaaa.png"),
        [r"test/aaaaaaaaaaaa\.png: truncated file"],
    ),
}


def _noisy_png(path: Path) -> None:
    """A PNG of random pixels (several kB of image data, so that cutting it keeps the header)."""
    rng = np.random.default_rng(0)
    h, w = cv2.imread(str(path), cv2.IMREAD_UNCHANGED).shape[:2]
    cv2.imwrite(str(path), rng.integers(0, 255, (h, w), dtype=np.uint8))


def _truncate(path: Path) -> None:
    _noisy_png(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_byte(path: Path) -> None:
    _noisy_png(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_clear_error_and_nothing_written(case: str, tmp_path: Path) -> None:
    rows = build_dataset(tmp_path)
    corrupt, patterns = BAD_CASES[case]
    corrupt(tmp_path, rows)
    before = tree(tmp_path)
    with pytest.raises(ValueError) as err:
        prepare_sartorius(tmp_path, folds=2, show_progress=False)
    for pat in patterns:
        assert re.search(pat, str(err.value)), (pat, str(err.value))
    assert tree(tmp_path) == before


def test_cli_ok_and_bad_input(tmp_path: Path) -> None:
    rows = build_dataset(tmp_path)
    ok = subprocess.run(
        [
            sys.executable,
            "tools/prepare_sartorius.py",
            "--data-root",
            str(tmp_path),
            "--folds",
            "2",
            "--no-progress",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["n_instances"] == len(rows)
    write_csv(tmp_path, _corrupt_row(rows, 2, cell_type="hela"))
    bad = subprocess.run(
        [sys.executable, "tools/prepare_sartorius.py", "--data-root", str(tmp_path), "--no-progress"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "train.csv: row 3, field 'cell_type'" in bad.stderr and "Traceback" not in bad.stderr
    write_csv(tmp_path, rows)
    _truncate(tmp_path / "train" / f"{rows[0]['id']}.png")
    before = tree(tmp_path)
    bad = subprocess.run(
        [sys.executable, "tools/prepare_sartorius.py", "--data-root", str(tmp_path), "--no-progress"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "truncated file" in bad.stderr
    assert f"{rows[0]['id']}.png" in bad.stderr and tree(tmp_path) == before


def test_real_geometry_round_trip(real_coco_path: Path, tmp_path: Path) -> None:
    """Real masks -> Kaggle csv (via --from-coco) -> prepare: areas and boxes equal the real json's."""
    from celldata.synthetic import generate_synthetic_dataset

    generate_synthetic_dataset(
        tmp_path, n_images=8, n_test=0, seed=0, from_coco=real_coco_path, show_progress=False
    )
    prepare_sartorius(tmp_path, folds=2, seed=0, show_progress=False)
    real = json.loads(real_coco_path.read_text())
    mine = load(tmp_path, "train_all.json")
    kaggle_of = {im["id"]: im["kaggle_id"] for im in mine["images"]}
    assert len(kaggle_of) == 8
    got: dict[str, list] = {}
    for a in mine["annotations"]:
        got.setdefault(kaggle_of[a["image_id"]], []).append((a["area"], tuple(a["bbox"])))
    for image_id, items in got.items():
        truth = sorted(
            (a["area"], tuple(a["bbox"])) for a in real["annotations"] if a["image_id"] == image_id
        )
        assert sorted(items) == truth


def test_every_bad_row_is_reported(tmp_path: Path) -> None:
    """read_train_csv goes on after a bad row: one error lists all of them, in row order."""
    from celldata.kaggle_csv import TrainCsvError, read_train_csv

    rows = build_dataset(tmp_path)
    rows = _corrupt_row(rows, 1, annotation="5 3 7")
    rows = _corrupt_row(rows, 3, cell_type="hela")
    rows = _corrupt_row(rows, 6, width="abc")
    write_csv(tmp_path, rows)
    with pytest.raises(TrainCsvError) as err:
        read_train_csv(tmp_path / "train.csv")
    assert err.value.n_errors == 3
    assert [re.search(r"row (\d+), field '(\w+)'", e).groups() for e in err.value.errors] == [
        ("2", "annotation"),
        ("4", "cell_type"),
        ("7", "width"),
    ]
    assert str(err.value).startswith(f"{tmp_path / 'train.csv'}: 3 bad rows:")


def test_bad_rows_listed_up_to_the_limit_then_counted(tmp_path: Path) -> None:
    from celldata.kaggle_csv import TrainCsvError, read_train_csv

    rows = build_dataset(tmp_path)
    for i in range(len(rows)):
        rows = _corrupt_row(rows, i, annotation="1 0")
    write_csv(tmp_path, rows)
    with pytest.raises(TrainCsvError) as err:
        read_train_csv(tmp_path / "train.csv", max_errors=5)
    assert err.value.n_errors == len(rows) and len(err.value.errors) == 5
    assert f"... and {len(rows) - 5} more bad row(s)" in str(err.value)
    assert "row 5, field 'annotation'" in str(err.value) and "row 6," not in str(err.value)
