"""Convert a Kaggle-layout Sartorius dataset into COCO folds, semantic label PNGs and split lists.

Example:
    python tools/prepare_sartorius.py --data-root data/sartorius --folds 5 --seed 0

Writes ``annotations/``, ``semantic/`` and ``splits/`` under the data root (see :mod:`celldata.prepare`).
Exits 2 with one message naming the file, row and field on bad input (a missing, unreadable or truncated image
included); nothing is written then.
"""

from __future__ import annotations

import argparse
import json
import sys

from celldata.fileio import check_output_path
from celldata.prepare import prepare_sartorius


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", required=True, help="directory with train.csv and train/ (Kaggle layout)")
    p.add_argument("--folds", type=int, default=5, help="number of folds, grouped by sample_id (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fold assignment (default 0)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 2 bad input: one line on stderr)."""
    args = parse_args(argv)
    try:
        check_output_path(args.data_root, "dir", "--data-root")
        summary = prepare_sartorius(
            args.data_root, folds=args.folds, seed=args.seed, show_progress=not args.no_progress
        )
    except ValueError as e:
        print(f"prepare_sartorius.py: error: {e}", file=sys.stderr)
        return 2
    summary = {k: v for k, v in summary.items() if k != "written"} | {"written": len(summary["written"])}
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
