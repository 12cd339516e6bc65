"""Image-level cell-type probabilities of a folder of PNGs or a COCO json, from a trained image-tile classifier.

Writes the JSON file the ensemble's ``image_class: classifier`` reads (format in
``custom_modules/cls/predict.py``).

Example:
    python tools/classify_images.py configs/classifiers/sem-cnn5-fc40_sgd-300it_sartorius-tiles-128.py \\
        work_dirs/sem-cnn5/iter_300.pth --images data/sartorius/test --out work_dirs/preds/cell_type_test.json
"""

from __future__ import annotations

import argparse
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    from mmengine.config import DictAction

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="image-tile classifier config")
    p.add_argument("checkpoint", help="trained checkpoint")
    p.add_argument("--images", required=True, help="folder of PNGs or a COCO json")
    p.add_argument("--data-root", help="root of the COCO json's file_name entries (default: inferred)")
    p.add_argument("--out", required=True, help="output JSON")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--cfg-options", nargs="+", action=DictAction, help="override config entries")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Predict and write; returns the exit status."""
    args = parse_args(argv)
    from celldata.fileio import check_output_path
    from custom_modules.cls.predict import predict_image_probabilities, write_image_probabilities

    try:
        check_output_path(args.out, "file", "--out")
        classes, probs, meta = predict_image_probabilities(
            args.config,
            args.checkpoint,
            args.images,
            args.data_root,
            args.batch_size,
            args.device,
            args.cfg_options,
        )
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"classify_images.py: error: {e}", file=sys.stderr)
        return 2
    write_image_probabilities(args.out, classes, probs, meta)
    print(f"{len(probs)} images -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
