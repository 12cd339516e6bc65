"""Synthetic Kaggle-layout generator: determinism, valid rows and images, real-like statistics, --from-coco."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from celldata import CLASSES, IMAGE_HEIGHT, IMAGE_WIDTH
from celldata.kaggle_csv import KAGGLE_COLUMNS
from celldata.rle import coco_rle_decode, kaggle_rle_decode
from celldata.synthetic import generate_synthetic_dataset, synthesize_image

REPO = Path(__file__).resolve().parents[1]


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("syn") / "a"
    generate_synthetic_dataset(root, n_images=12, n_test=2, seed=0, density=0.2, show_progress=False)
    return root


def test_same_seed_same_bytes_other_seed_differs(small: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    generate_synthetic_dataset(again, n_images=12, n_test=2, seed=0, density=0.2, show_progress=False)
    assert _files(small) == _files(again)
    other = tmp_path / "other"
    generate_synthetic_dataset(other, n_images=12, n_test=2, seed=1, density=0.2, show_progress=False)
    a, b = _files(small), _files(other)
    assert a["train.csv"] != b["train.csv"]
    assert set(k for k in a if k.startswith("train/")) != set(k for k in b if k.startswith("train/"))


def test_kaggle_layout_rows_and_images(small: Path) -> None:
    with open(small / "train.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == KAGGLE_COLUMNS
    data = rows[1:]
    assert data and all(len(r) == 9 for r in data)
    ids = {r[0] for r in data}
    assert len(ids) == 12
    assert all(re.fullmatch(r"[0-9a-f]{12}", i) for i in ids)
    for r in data:
        w, h = int(r[2]), int(r[3])
        assert (w, h) == (IMAGE_WIDTH, IMAGE_HEIGHT)
        assert r[4] in CLASSES
        assert kaggle_rle_decode(r[1], h, w).sum() > 0  # validating decoder: inside the image, well formed
        assert all(r[k] for k in range(5, 9))
    # one cell type per image, several images per sample_id
    types = {}
    samples: dict[str, set[str]] = {}
    for r in data:
        types.setdefault(r[0], set()).add(r[4])
        samples.setdefault(r[7], set()).add(r[0])
    assert all(len(t) == 1 for t in types.values())
    assert set().union(*types.values()) == set(CLASSES)
    assert max(len(s) for s in samples.values()) >= 2
    for i in ids:
        img = cv2.imread(str(small / "train" / f"{i}.png"), cv2.IMREAD_UNCHANGED)
        assert img.dtype == np.uint8 and img.shape == (IMAGE_HEIGHT, IMAGE_WIDTH)
        assert 120 <= img.mean() <= 136 and img.std() > 2
    test_ids = sorted(p.stem for p in (small / "test").glob("*.png"))
    assert len(test_ids) == 2
    with open(small / "sample_submission.csv", newline="") as f:
        sub = list(csv.reader(f))
    assert sub[0] == ["id", "predicted"]
    assert sorted(r[0] for r in sub[1:]) == test_ids


def test_cells_are_visible_in_the_image() -> None:
    """Pixels under cells differ from the background (the rendering carries the geometry)."""
    sim = synthesize_image(np.random.default_rng(3), "cort")
    fg = np.zeros(sim.image.shape, bool)
    for i in range(len(sim.instances)):
        fg |= sim.instances.mask(i)
    dil = cv2.dilate(fg.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    far_bg = ~dil
    # halo + rim make the local contrast around cells much higher than in the background
    lap = np.abs(cv2.Laplacian(cv2.GaussianBlur(sim.image, (0, 0), 1.0).astype(np.float32), cv2.CV_32F))
    assert lap[dil & ~far_bg].mean() > 2.0 * lap[far_bg].mean()


# real statistics (56 annotated real images): count mean shsy5y ~340, astro ~80, cort ~34;
# area median shsy5y ~180, astro ~480, cort ~200
EXPECTED = {
    "shsy5y": {"count": (150, 700), "area_median": (130, 250), "aspect_median": (1.4, 2.6)},
    "astro": {"count": (30, 250), "area_median": (300, 750), "aspect_median": (1.7, 3.5)},
    "cort": {"count": (12, 80), "area_median": (140, 280), "aspect_median": (1.0, 1.7)},
}


def _aspect(crop: np.ndarray) -> float:
    ys, xs = np.nonzero(crop)
    ev = np.sort(np.linalg.eigvalsh(np.cov(np.stack([xs, ys]).astype(float))))
    return float(np.sqrt(ev[1] / max(ev[0], 1e-3)))


@pytest.mark.parametrize("cell_type", CLASSES)
def test_per_class_counts_areas_shapes(cell_type: str) -> None:
    counts, areas, aspects = [], [], []
    for s in range(3):
        sim = synthesize_image(np.random.default_rng([11, s]), cell_type)
        assert sim.cell_type == cell_type
        counts.append(len(sim.instances))
        areas.extend(sim.instances.areas().tolist())
        aspects.extend(_aspect(c) for c in sim.instances.crops if c.sum() >= 3)
    exp = EXPECTED[cell_type]
    assert exp["count"][0] <= np.mean(counts) <= exp["count"][1], counts
    assert exp["area_median"][0] <= np.median(areas) <= exp["area_median"][1]
    assert exp["aspect_median"][0] <= np.median(aspects) <= exp["aspect_median"][1]


def test_dense_images_have_touching_and_overlapping_cells() -> None:
    sim = synthesize_image(np.random.default_rng(0), "shsy5y")
    cover = np.zeros(sim.image.shape, np.int32)
    for i in range(len(sim.instances)):
        cover += sim.instances.mask(i)
    assert (cover >= 2).sum() > 0  # some overlap, kept as is
    assert (cover >= 2).sum() < 0.1 * (cover >= 1).sum()  # but limited


def test_density_scales_counts() -> None:
    full = [len(synthesize_image(np.random.default_rng([2, s]), "cort").instances) for s in range(3)]
    low = [
        len(synthesize_image(np.random.default_rng([2, s]), "cort", density=0.3).instances) for s in range(3)
    ]
    assert sum(low) < 0.5 * sum(full)


def test_from_coco_uses_real_geometry(real_coco_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "real"
    summary = generate_synthetic_dataset(
        out, n_images=2, n_test=0, seed=0, from_coco=real_coco_path, show_progress=False
    )
    data = json.loads(real_coco_path.read_text())
    first = sorted(data["images"], key=lambda r: str(r["id"]))[:2]
    cat = {c["id"]: c["name"] for c in data["categories"]}
    with open(out / "train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for img in first:
        anns = [a for a in data["annotations"] if a["image_id"] == img["id"]]
        mine = [r for r in rows if r["id"] == img["id"]]
        assert len(mine) == len(anns)
        assert {r["cell_type"] for r in mine} == {cat[anns[0]["category_id"]]}
        truth = sorted(coco_rle_decode(a["segmentation"]).tobytes() for a in anns)
        got = sorted(kaggle_rle_decode(r["annotation"], img["height"], img["width"]).tobytes() for r in mine)
        assert got == truth
        assert (out / "train" / f"{img['id']}.png").is_file()
    assert summary["n_instances"] == len(rows)


def test_cli_bad_argument_exits_1(tmp_path: Path) -> None:
    r = subprocess.run(
        [
            sys.executable,
            "tools/make_synthetic.py",
            "--out",
            str(tmp_path / "x"),
            "--density",
            "0",
            "--no-progress",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert "density" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x").exists()
