"""Full-size data preparation: time and peak memory of ``prepare_sartorius`` on a competition-sized ``train.csv``.

The competition's training set has 606 images and 73,585 instances (cort 320 images, mean 34 cells; shsy5y 155,
mean 337; astro 131, mean 80). This benchmark writes a synthetic ``train.csv`` with exactly those image counts and
per-class instance totals (per-image counts drawn from the generator's gamma model and rescaled to the totals;
cells placed by :func:`celldata.synthetic.place_cells`, so sizes, shapes and overlaps follow the real statistics),
plus blank 704x520 PNGs (prepare reads only their headers). Then, each in a fresh child process so that peak
resident memory (``ru_maxrss``) belongs to one run:

* ``ours``: ``celldata.prepare.prepare_sartorius(root, folds=5)``: validation of every row, COCO json per fold,
  semantic and boundary PNGs, split lists.
* ``baseline``: the straightforward conversion most public notebooks use, for the annotation part only: pandas
  ``read_csv``, every instance decoded to a full 520x704 mask, ``pycocotools.mask.encode`` / ``area`` / ``toBbox``,
  one ``json.dump`` of the whole set (no folds, no semantic maps, no validation).

Targets (issue 7): ours under 60 s and under 2 GB peak on this 2-core machine. Results go to
``work_dirs/bench/prepare_bench.json`` and ``.md``.

Run: ``python benchmarks/bench_prepare.py [--out-dir work_dirs/bench] [--data-dir DIR] [--scale 1.0]``.
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing as mp
import platform
import resource
import shutil
import time
from pathlib import Path

import cv2
import numpy as np

from celldata import IMAGE_HEIGHT, IMAGE_WIDTH
from celldata.fileio import atomic_write_json, atomic_write_text
from celldata.instances import InstanceMasks
from celldata.kaggle_csv import KAGGLE_COLUMNS
from celldata.synthetic import place_cells, sample_cell_count

REAL_COUNTS: dict[str, tuple[int, float]] = {
    "cort": (320, 34.0),
    "shsy5y": (155, 337.0),
    "astro": (131, 80.0),
}
"""Per cell type: (images, mean instances per image) of the competition's train.csv (73,585 instances in all)."""


def _per_image_counts(rng: np.random.Generator, cell_type: str, n_images: int, mean: float) -> np.ndarray:
    raw = np.array([sample_cell_count(rng, cell_type) for _ in range(n_images)], float)
    counts = np.maximum(1, np.round(raw * (mean * n_images / raw.sum()))).astype(int)
    counts[np.argmax(counts)] += int(round(mean * n_images)) - int(counts.sum())  # exact class total
    return counts


def write_full_size_dataset(root: Path, seed: int = 0, scale: float = 1.0) -> dict:
    """Write ``root/train.csv`` + blank ``root/train/<id>.png`` of competition size; returns a summary."""
    rng = np.random.default_rng(seed)
    (root / "train").mkdir(parents=True, exist_ok=True)
    blank = cv2.imencode(".png", np.zeros((IMAGE_HEIGHT, IMAGE_WIDTH), np.uint8))[1].tobytes()
    n_rows = 0
    per_class: dict[str, int] = {}
    with open(root / "train.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(KAGGLE_COLUMNS)
        k = 0
        for cell_type, (n_images, mean) in REAL_COUNTS.items():
            n_images = max(1, round(n_images * scale))
            for n_cells in _per_image_counts(rng, cell_type, n_images, mean):
                image_id = f"{k:012x}"
                sample_id = f"{cell_type}[sample{k // 3}]"
                boxes, crops = place_cells(rng, cell_type, int(n_cells))
                rles = InstanceMasks(IMAGE_HEIGHT, IMAGE_WIDTH, boxes, crops).to_kaggle_rles()
                for rle in rles:
                    writer.writerow(
                        [image_id, rle, IMAGE_WIDTH, IMAGE_HEIGHT, cell_type, "11h30m00s", "2019-06-16",
                         sample_id, "0 days 11:30:00"]
                    )  # fmt: skip
                (root / "train" / f"{image_id}.png").write_bytes(blank)
                n_rows += len(rles)
                per_class[cell_type] = per_class.get(cell_type, 0) + len(rles)
                k += 1
    return {"n_images": k, "n_rows": n_rows, "per_class_rows": per_class}


def _run_ours(root: str, queue: mp.Queue) -> None:
    from celldata.prepare import prepare_sartorius

    t0 = time.perf_counter()
    prepare_sartorius(root, folds=5, seed=0, show_progress=False)
    seconds = time.perf_counter() - t0
    queue.put(_usage(seconds))


def _run_baseline(root: str, queue: mp.Queue) -> None:
    import pandas as pd
    from pycocotools import mask as mask_utils

    t0 = time.perf_counter()
    df = pd.read_csv(Path(root) / "train.csv")
    anns = []
    for i, (image_id, rle, w, h) in enumerate(zip(df["id"], df["annotation"], df["width"], df["height"])):
        s = np.asarray(rle.split(), int)
        flat = np.zeros(h * w, np.uint8)
        for start, length in zip(s[0::2] - 1, s[1::2]):
            flat[start : start + length] = 1
        m = np.asfortranarray(flat.reshape(h, w))
        enc = mask_utils.encode(m)
        anns.append(
            {
                "id": i + 1,
                "image_id": image_id,
                "area": int(mask_utils.area(enc)),
                "bbox": mask_utils.toBbox(enc).tolist(),
                "segmentation": {"size": enc["size"], "counts": enc["counts"].decode()},
            }
        )
    with open(Path(root) / "baseline_coco.json", "w") as f:
        json.dump({"annotations": anns}, f)
    seconds = time.perf_counter() - t0
    queue.put(_usage(seconds))


def _usage(seconds: float) -> dict:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"seconds": seconds, "cpu_seconds": ru.ru_utime + ru.ru_stime, "peak_rss_mb": ru.ru_maxrss / 1024}


def _in_child(fn, root: Path) -> dict:
    ctx = mp.get_context("spawn")  # a fresh interpreter: ru_maxrss is this run's alone
    queue = ctx.Queue()
    proc = ctx.Process(target=fn, args=(str(root), queue))
    proc.start()
    result = queue.get()
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"{fn.__name__} failed with exit code {proc.exitcode}")
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out-dir", type=Path, default=Path("work_dirs/bench"))
    ap.add_argument("--data-dir", type=Path, default=Path("work_dirs/bench/full_size_data"))
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the 606 images (1.0 = full size)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-baseline", action="store_true", help="skip the straightforward conversion")
    args = ap.parse_args(argv)

    if args.data_dir.exists():
        shutil.rmtree(args.data_dir)
    t0 = time.perf_counter()
    data = write_full_size_dataset(args.data_dir, seed=args.seed, scale=args.scale)
    data["generate_seconds"] = round(time.perf_counter() - t0, 1)
    print(
        f"[bench_prepare] wrote {data['n_rows']} rows / {data['n_images']} images in {data['generate_seconds']} s"
    )

    ours = _in_child(_run_ours, args.data_dir)
    print(
        f"[bench_prepare] ours: {ours['seconds']:.1f} s wall, {ours['cpu_seconds']:.1f} s CPU, peak {ours['peak_rss_mb']:.0f} MB"
    )
    result = {
        "machine": f"{platform.machine()}, {mp.cpu_count()} cores, Python {platform.python_version()}",
        "data": data,
        "ours": ours,
        "targets": {"seconds": 60, "peak_rss_mb": 2048},
        "ours_meets_targets": ours["seconds"] < 60 and ours["peak_rss_mb"] < 2048,
        "note": "wall time depends on other load on the machine; CPU seconds do not",
    }
    if not args.no_baseline:
        base = _in_child(_run_baseline, args.data_dir)
        print(f"[bench_prepare] baseline: {base['seconds']:.1f} s wall, {base['cpu_seconds']:.1f} s CPU")
        result["baseline"] = base
        result["time_ratio_baseline_over_ours"] = base["seconds"] / ours["seconds"]
        result["cpu_ratio_baseline_over_ours"] = base["cpu_seconds"] / ours["cpu_seconds"]

    args.out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out_dir / "prepare_bench.json", result, indent=2)
    lines = [
        "# Full-size prepare benchmark",
        "",
        f"{data['n_images']} images, {data['n_rows']} train.csv rows ({data['per_class_rows']}); {result['machine']}.",
        "",
        "| run | wall s | CPU s | peak RSS (MB) |",
        "|---|---:|---:|---:|",
        f"| ours: prepare_sartorius, 5 folds, semantic maps | {ours['seconds']:.1f} | {ours['cpu_seconds']:.1f} | "
        f"{ours['peak_rss_mb']:.0f} |",
    ]
    if "baseline" in result:
        b = result["baseline"]
        lines.append(
            f"| baseline: pandas + full-frame decode + pycocotools (annotations only) | {b['seconds']:.1f} | "
            f"{b['cpu_seconds']:.1f} | {b['peak_rss_mb']:.0f} |"
        )
        lines += [
            "",
            f"Ratio baseline / ours: wall {result['time_ratio_baseline_over_ours']:.2f}x, "
            f"CPU {result['cpu_ratio_baseline_over_ours']:.2f}x.",
        ]
    lines += ["", f"Targets: < 60 s and < 2048 MB: {'met' if result['ours_meets_targets'] else 'NOT met'}."]
    atomic_write_text(args.out_dir / "prepare_bench.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
