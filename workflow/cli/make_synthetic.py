"""Write a synthetic Sartorius dataset in the Kaggle layout (train.csv, train/, test/, sample_submission.csv).

Examples:
    python tools/make_synthetic.py --out data/sartorius --n-images 24 --n-test 3 --density 0.3 --seed 0
    python tools/make_synthetic.py --out work_dirs/real_geom \
        --from-coco PATH/TO/real_masks_coco.json      # real masks' geometry (any COCO json of the prepared layout)

The logic lives in :mod:`celldata.synthetic`.
"""

from __future__ import annotations

import argparse
import json
import sys

from celldata.fileio import check_output_path
from celldata.synthetic import generate_synthetic_dataset


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output directory (Kaggle layout)")
    p.add_argument(
        "--n-images",
        type=int,
        default=None,
        help="training images (default 24; with --from-coco: all images of the json)",
    )
    p.add_argument("--n-test", type=int, default=3, help="unlabeled test images (default 3)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed = identical bytes")
    p.add_argument(
        "--density",
        type=float,
        default=1.0,
        help="factor on per-image cell counts (1.0 = real statistics; e.g. 0.3 for a fast CPU demo)",
    )
    p.add_argument(
        "--from-coco",
        default=None,
        help="COCO instance json whose real masks give the geometry (categories shsy5y/astro/cort)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2 with one line on stderr for bad input)."""
    args = parse_args(argv)
    n_images = args.n_images if (args.n_images is not None or args.from_coco) else 24
    try:
        check_output_path(args.out, "dir", "--out")
        summary = generate_synthetic_dataset(
            args.out,
            n_images=n_images,
            n_test=args.n_test,
            seed=args.seed,
            density=args.density,
            from_coco=args.from_coco,
            show_progress=not args.no_progress,
        )
    except ValueError as e:
        print(f"make_synthetic.py: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
