"""Dataset report: counts per class, instance size histograms, mask overlays, report.json / report.md.

Example:
    python tools/dataset_report.py --data-root data/sartorius --out work_dirs/dataset_report

Reads ``annotations/train_all.json`` when prepared, else ``train.csv`` (see :mod:`celldata.report`).
"""

from __future__ import annotations

import argparse
import sys

from celldata.fileio import check_output_path
from celldata.report import write_dataset_report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", required=True, help="dataset root (prepared, or Kaggle layout)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--n-overlays", type=int, default=3, help="overlay images to draw (default 3)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 2 bad input: one line on stderr)."""
    args = parse_args(argv)
    try:
        check_output_path(args.out, "dir", "--out")
        report = write_dataset_report(
            args.data_root, args.out, n_overlays=args.n_overlays, show_progress=not args.no_progress
        )
    except ValueError as e:
        print(f"dataset_report.py: error: {e}", file=sys.stderr)
        return 2
    for c, s in report["per_class"].items():
        print(
            f"{c:>8}: {s['images']:4d} images {s['instances']:6d} instances "
            f"({s['per_image_mean']:.1f}/image, max {s['per_image_max']}), median area {s['area_percentiles']['p50']:.0f} px"
        )
    print(f"report: {args.out}/report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
