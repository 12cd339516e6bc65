"""Dataset report: per-class counts and instance sizes, size histograms and mask overlays.

Reads a dataset root: ``annotations/train_all.json`` when it exists (written by ``tools/prepare_sartorius.py``),
otherwise the Kaggle ``train.csv`` (validated by :func:`celldata.kaggle_csv.read_train_csv`). Writes to ``out_dir``::

    report.json               numbers (see :func:`build_report`)
    report.md                 the same as tables
    size_hist_<class>.png     instance area histogram of each class (log-spaced bins)
    counts_per_image.png      instances per image, by class
    overlay_<image id>.png    image with coloured masks and contours (one or more per class)
"""

from __future__ import annotations

import io
import json
import os
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from celldata import CLASSES
from celldata.coco import kaggle_id
from celldata.fileio import atomic_write_bytes, atomic_write_json, atomic_write_png, atomic_write_text
from celldata.instances import InstanceMasks
from celldata.prepare import read_train_csv

__all__ = ["load_dataset", "build_report", "render_overlay", "write_dataset_report"]


def load_dataset(data_root: str | os.PathLike) -> list[dict]:
    """Per-image records of a dataset root.

    Returns:
        One dict per image, sorted by id: ``image_id`` (str), ``file`` (Path of the image), ``cell_type``,
        ``fold`` (int or None), ``rles`` (COCO RLE dicts, or None) / ``kaggle_rles`` (Kaggle strings, or None),
        ``height``, ``width``, ``areas`` (int64[N] pixel counts).

    Raises:
        ValueError: neither ``annotations/train_all.json`` nor ``train.csv`` exists, or they are invalid.
    """
    root = Path(data_root)
    coco_path = root / "annotations" / "train_all.json"
    out = []
    if coco_path.is_file():
        try:
            coco = json.loads(coco_path.read_text())
            cat_name = {c["id"]: c["name"] for c in coco["categories"]}
            anns: dict[int, list[dict]] = defaultdict(list)
            for a in coco["annotations"]:
                anns[a["image_id"]].append(a)
            for im in sorted(coco["images"], key=kaggle_id):
                a_list = anns[im["id"]]
                cell_type = im.get("cell_type") or (
                    cat_name[a_list[0]["category_id"]] if a_list else "unknown"
                )
                out.append(
                    {
                        "image_id": kaggle_id(im),
                        "file": root / im["file_name"],
                        "cell_type": cell_type,
                        "fold": im.get("fold"),
                        "rles": [a["segmentation"] for a in a_list],
                        "kaggle_rles": None,
                        "height": int(im["height"]),
                        "width": int(im["width"]),
                        "areas": np.array([int(a["area"]) for a in a_list], dtype=np.int64),
                    }
                )
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{coco_path}: not a valid prepared COCO file ({e})") from e
        return out
    csv_path = root / "train.csv"
    if not csv_path.is_file():
        raise ValueError(f"{root}: neither annotations/train_all.json nor train.csv found")
    for im in read_train_csv(csv_path):
        inst = im.to_instances()
        out.append(
            {
                "image_id": im.image_id,
                "file": root / "train" / f"{im.image_id}.png",
                "cell_type": im.cell_type,
                "fold": None,
                "rles": None,
                "kaggle_rles": im.rles,
                "height": im.height,
                "width": im.width,
                "areas": inst.areas(),
            }
        )
    return out


def _instances(rec: dict) -> InstanceMasks:
    if rec["rles"] is not None:
        if not rec["rles"]:
            return InstanceMasks.empty(rec["height"], rec["width"])
        return InstanceMasks.from_coco_rles(rec["rles"])
    return InstanceMasks.from_kaggle_rles(rec["kaggle_rles"], rec["height"], rec["width"])


def build_report(records: list[dict]) -> dict:
    """Numbers of the report.

    Returns:
        ``{"n_images", "n_instances", "per_class": {cell type: {"images", "instances", "per_image_mean",
        "per_image_median", "per_image_min", "per_image_max", "area_mean", "area_percentiles": {"p5", "p25",
        "p50", "p75", "p95"}, "area_min", "area_max"}}, "folds": {fold: {cell type: images}}}`` (folds only when the
        records carry them).
    """
    per_class: dict[str, dict] = {}
    types = [c for c in CLASSES if any(r["cell_type"] == c for r in records)]
    types += sorted({r["cell_type"] for r in records} - set(types))
    for c in types:
        recs = [r for r in records if r["cell_type"] == c]
        counts = np.array([len(r["areas"]) for r in recs])
        areas = np.concatenate([r["areas"] for r in recs]) if recs else np.zeros(0, np.int64)
        pct = np.percentile(areas, [5, 25, 50, 75, 95]) if areas.size else np.zeros(5)
        per_class[c] = {
            "images": len(recs),
            "instances": int(counts.sum()),
            "per_image_mean": round(float(counts.mean()), 2),
            "per_image_median": float(np.median(counts)),
            "per_image_min": int(counts.min()),
            "per_image_max": int(counts.max()),
            "area_mean": round(float(areas.mean()), 1) if areas.size else 0.0,
            "area_percentiles": {
                k: round(float(v), 1) for k, v in zip(("p5", "p25", "p50", "p75", "p95"), pct)
            },
            "area_min": int(areas.min()) if areas.size else 0,
            "area_max": int(areas.max()) if areas.size else 0,
        }
    report: dict = {
        "n_images": len(records),
        "n_instances": int(sum(len(r["areas"]) for r in records)),
        "per_class": per_class,
    }
    if any(r["fold"] is not None for r in records):
        folds: dict[str, dict[str, int]] = {}
        for r in records:
            f = folds.setdefault(str(r["fold"]), {c: 0 for c in types})
            f[r["cell_type"]] += 1
        report["folds"] = dict(sorted(folds.items()))
    return report


def render_overlay(
    image: np.ndarray, instances: InstanceMasks, seed: int = 0, alpha: float = 0.4
) -> np.ndarray:
    """Colour every instance over a grayscale image and draw its contour.

    Args:
        image: uint8[H, W] grayscale (or [H, W, 3] BGR) image.
        instances: Its N instance masks.
        seed: Seed of the random instance colours.
        alpha: Fill opacity.

    Returns:
        uint8[H, W, 3] BGR overlay.
    """
    base = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image.copy()
    colors = np.random.default_rng(seed).integers(60, 256, size=(max(len(instances), 1), 3))
    fill = base.astype(np.float32)
    out_contours = []
    for i, ((x0, y0, x1, y1), crop) in enumerate(zip(instances.boxes.tolist(), instances.crops)):
        if crop.size == 0:
            continue
        view = fill[y0:y1, x0:x1]
        view[crop] = (1 - alpha) * view[crop] + alpha * colors[i]
        cs, _ = cv2.findContours(
            crop.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE, offset=(x0, y0)
        )
        out_contours.append((cs, tuple(int(v) for v in colors[i])))
    out = np.clip(fill, 0, 255).astype(np.uint8)
    for cs, color in out_contours:
        cv2.drawContours(out, cs, -1, color, 1)
    return out


def _histograms(records: list[dict], report: dict, out_dir: Path) -> list[str]:
    """Size histogram per class and the per-image count box plot; returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for c in report["per_class"]:
        areas = np.concatenate([r["areas"] for r in records if r["cell_type"] == c] or [np.zeros(0)])
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
        if areas.size:
            bins = np.logspace(np.log10(max(areas.min(), 1)), np.log10(areas.max() + 1), 40)
            ax.hist(areas, bins=bins, color="tab:blue", alpha=0.8)
            ax.set_xscale("log")
            med = float(np.median(areas))
            ax.axvline(med, color="tab:red", lw=1, label=f"median {med:.0f} px")
            ax.legend()
        ax.set_xlabel("instance area (pixels)")
        ax.set_ylabel("instances")
        ax.set_title(f"{c}: {areas.size} instances in {report['per_class'][c]['images']} images")
        fig.tight_layout()
        path = out_dir / f"size_hist_{c}.png"
        _save_fig(fig, path)
        plt.close(fig)
        written.append(path.name)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    data = [[len(r["areas"]) for r in records if r["cell_type"] == c] for c in report["per_class"]]
    ax.boxplot(data, tick_labels=list(report["per_class"]))
    ax.set_ylabel("instances per image")
    ax.set_title("instances per image by cell type")
    fig.tight_layout()
    _save_fig(fig, out_dir / "counts_per_image.png")
    plt.close(fig)
    written.append("counts_per_image.png")
    return written


def _save_fig(fig: object, path: Path) -> None:
    """Save a matplotlib figure as PNG atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")  # type: ignore[attr-defined]
    atomic_write_bytes(path, buf.getvalue())


def _markdown(report: dict, figures: list[str], overlays: list[str]) -> str:
    lines = [
        "# Dataset report",
        "",
        f"{report['n_images']} images, {report['n_instances']} instances.",
        "",
        "| cell type | images | instances | per image mean | median | min | max | area p5 | p50 | p95 | mean |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c, s in report["per_class"].items():
        p = s["area_percentiles"]
        lines.append(
            f"| {c} | {s['images']} | {s['instances']} | {s['per_image_mean']} | {s['per_image_median']} | "
            f"{s['per_image_min']} | {s['per_image_max']} | {p['p5']} | {p['p50']} | {p['p95']} | {s['area_mean']} |"
        )
    if "folds" in report:
        types = list(report["per_class"])
        lines += [
            "",
            "## Folds (validation images per cell type)",
            "",
            "| fold | " + " | ".join(types) + " |",
        ]
        lines.append("|---|" + "---:|" * len(types))
        for f, cnt in report["folds"].items():
            lines.append(f"| {f} | " + " | ".join(str(cnt.get(c, 0)) for c in types) + " |")
    lines += ["", "## Figures", ""] + [f"![{f}]({f})" for f in figures]
    lines += ["", "## Overlays", ""] + [f"![{f}]({f})" for f in overlays]
    return "\n".join(lines) + "\n"


def write_dataset_report(
    data_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    n_overlays: int = 3,
    show_progress: bool = True,
) -> dict:
    """Write ``report.json``, ``report.md``, size histograms and overlays of a dataset.

    Args:
        data_root: Dataset root (prepared or Kaggle layout).
        out_dir: Output directory.
        n_overlays: Number of overlay images (spread over the cell types, first images by id).
        show_progress: Show a tqdm progress bar over the overlays.

    Returns:
        The report dict (as in ``report.json``) with ``figures`` and ``overlays`` (file names) added.

    Raises:
        ValueError: no readable dataset, or an overlay image cannot be read.
    """
    records = load_dataset(data_root)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = build_report(records)
    figures = _histograms(records, report, out_dir)
    # overlays: round-robin over cell types
    by_type = {c: [r for r in records if r["cell_type"] == c] for c in report["per_class"]}
    picks: list[dict] = []
    k = 0
    while len(picks) < min(n_overlays, len(records)):
        for c in by_type:
            if k < len(by_type[c]) and len(picks) < n_overlays:
                picks.append(by_type[c][k])
        k += 1
    overlays = []
    for i, rec in enumerate(tqdm(picks, desc="overlays", unit="img", disable=not show_progress)):
        img = cv2.imread(str(rec["file"]), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise ValueError(f"{rec['file']}: image of {rec['image_id']} not readable")
        name = f"overlay_{rec['image_id']}.png"
        atomic_write_png(out_dir / name, render_overlay(img, _instances(rec), seed=i))
        overlays.append(name)
    report["figures"] = figures
    report["overlays"] = overlays
    atomic_write_json(out_dir / "report.json", report, indent=2)
    atomic_write_text(out_dir / "report.md", _markdown(report, figures, overlays))
    return report
