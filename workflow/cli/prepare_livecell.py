"""Convert LIVECell COCO annotations (polygons) into the project's COCO layout for pretraining.

Examples:
    python tools/prepare_livecell.py --ann livecell_coco_train.json livecell_coco_val.json \
        --images-dir LIVECell/images --out data/livecell
    python tools/prepare_livecell.py --ann a172_train.json --images-dir images --out data/livecell \
        --categories cell
    python tools/prepare_livecell.py ... --class-map a172=cort,bv2=skip

Default categories are the Sartorius ones (SH-SY5Y -> shsy5y, the other lines by morphology; see
:mod:`celldata.livecell`). Exits 2 with one message naming the file and image/annotation on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys

from celldata.fileio import check_output_path
from celldata.livecell import DEFAULT_CLASS_MAP, convert_livecell, parse_class_map


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ann", nargs="+", required=True, help="LIVECell COCO json file(s)")
    p.add_argument(
        "--images-dir", required=True, help="directory with the LIVECell images (searched recursively)"
    )
    p.add_argument("--out", required=True, help="output directory (images/ and annotations/)")
    p.add_argument(
        "--categories",
        choices=("sartorius", "cell"),
        default="sartorius",
        help="'sartorius': 1 shsy5y, 2 astro, 3 cort (default); 'cell': one category",
    )
    p.add_argument(
        "--class-map",
        default=None,
        help="overrides NAME=TARGET,... (TARGET shsy5y|astro|cort|skip); default "
        + ",".join(f"{k}={v}" for k, v in DEFAULT_CLASS_MAP.items()),
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 2 bad input: one line on stderr)."""
    args = parse_args(argv)
    try:
        check_output_path(args.out, "dir", "--out")
        summary = convert_livecell(
            args.ann,
            args.images_dir,
            args.out,
            categories=args.categories,
            class_map=parse_class_map(args.class_map),
            show_progress=not args.no_progress,
        )
    except ValueError as e:
        print(f"prepare_livecell.py: error: {e}", file=sys.stderr)
        return 2
    summary["written"] = len(summary["written"])
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
