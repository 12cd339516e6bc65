"""tools/dataset_report.py / celldata.report: numbers match the data, figures and overlays are written."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from celldata.instances import InstanceMasks
from celldata.prepare import prepare_sartorius
from celldata.report import render_overlay, write_dataset_report
from celldata.rle import kaggle_rle_decode
from celldata.synthetic import generate_synthetic_dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def raw_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("report") / "data"
    generate_synthetic_dataset(root, n_images=6, n_test=1, seed=4, density=0.1, show_progress=False)
    return root


def _csv_truth(root: Path) -> tuple[Counter, Counter, dict[str, list[int]]]:
    images, instances, areas = Counter(), Counter(), {}
    seen = set()
    with open(root / "train.csv", newline="") as f:
        for r in csv.DictReader(f):
            instances[r["cell_type"]] += 1
            if r["id"] not in seen:
                seen.add(r["id"])
                images[r["cell_type"]] += 1
            areas.setdefault(r["cell_type"], []).append(
                int(kaggle_rle_decode(r["annotation"], int(r["height"]), int(r["width"])).sum())
            )
    return images, instances, areas


def _check(report: dict, root: Path, out: Path) -> None:
    images, instances, areas = _csv_truth(root)
    assert report["n_images"] == sum(images.values()) == 6
    for c, s in report["per_class"].items():
        assert s["images"] == images[c] and s["instances"] == instances[c]
        assert s["area_percentiles"]["p50"] == pytest.approx(float(np.median(areas[c])))
        assert s["area_max"] == max(areas[c])
        assert (out / f"size_hist_{c}.png").is_file()
        assert cv2.imread(str(out / f"size_hist_{c}.png")) is not None
    saved = json.loads((out / "report.json").read_text())
    assert saved["per_class"] == report["per_class"]
    md = (out / "report.md").read_text()
    assert all(f"| {c} | {images[c]} | {instances[c]} |" in md for c in images)
    assert len(report["overlays"]) == 3
    # one overlay per cell type (round robin)
    assert len({report["overlays"][i] for i in range(3)}) == 3
    for name in report["overlays"]:
        ov = cv2.imread(str(out / name), cv2.IMREAD_UNCHANGED)
        assert ov.shape == (520, 704, 3)
        assert (ov[..., 0] != ov[..., 1]).any()  # coloured, not gray


def test_report_from_prepared_coco(raw_root: Path, tmp_path: Path) -> None:
    prepare_sartorius(raw_root, folds=2, seed=0, show_progress=False)
    out = tmp_path / "rep"
    report = write_dataset_report(raw_root, out, show_progress=False)
    _check(report, raw_root, out)
    assert set(report["folds"]) == {"0", "1"}
    assert sum(sum(f.values()) for f in report["folds"].values()) == 6


def test_report_from_train_csv_only(tmp_path: Path) -> None:
    root = tmp_path / "data"
    generate_synthetic_dataset(root, n_images=6, n_test=0, seed=4, density=0.1, show_progress=False)
    out = tmp_path / "rep"
    report = write_dataset_report(root, out, show_progress=False)
    _check(report, root, out)
    assert "folds" not in report


def test_overlay_colours_masks_only() -> None:
    img = np.full((20, 30), 100, np.uint8)
    m = np.zeros((2, 20, 30), bool)
    m[0, 2:8, 3:9] = True
    m[1, 10:15, 20:28] = True
    ov = render_overlay(img, InstanceMasks.from_full(m))
    assert (ov[0, 0] == 100).all() and (ov[18, 15] == 100).all()  # background untouched
    assert not (ov[5, 5] == 100).all() and not (ov[12, 24] == 100).all()


def test_cli_missing_data_exits_1(tmp_path: Path) -> None:
    r = subprocess.run(
        [
            sys.executable,
            "tools/dataset_report.py",
            "--data-root",
            str(tmp_path),
            "--out",
            str(tmp_path / "o"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "train.csv" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()
