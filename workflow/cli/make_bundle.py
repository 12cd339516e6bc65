"""Pack a tuned ensemble into an upload-ready Kaggle model bundle (layout: workflow/bundle/__init__.py).

For every model of the ensemble: its resolved inference config and its checkpoint stripped to the (EMA) weights
(every fold network of a fold-merged model; the box models and step 1's YAML of a box-first ensemble); the
ensemble YAML rewritten to bundle-relative prediction files; bundle.json with roles, TTA, sizes and sha256. Each
model's config and checkpoint are read from the meta of the prediction file the ensemble names (what
python -m workflow.cli.infer recorded); --model overrides them. Refuses a model without a checkpoint and a
checkpoint that does not load into its config. Run it from the directory the prediction files' paths are relative
to (the repository root when the tools were run as documented).

Examples:
    python -m workflow.cli.make_bundle --ensemble work_dirs/demo/ensemble/ensemble_test.yaml --out work_dirs/bundle
    python -m workflow.cli.make_bundle --ensemble tuned.yaml --out bundle \\
        --model mask_rcnn configs/mask_rcnn/mask-rcnn_r50_fpn_1xb2-20e_sartorius.py work_dirs/mask_rcnn/epoch_20.pth
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from typing import Any


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    p = argparse.ArgumentParser(
        prog="make_bundle.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--ensemble", required=True, help="tuned ensemble YAML (python -m ensemble.tune output)")
    p.add_argument("--out", required=True, help="bundle folder to create")
    p.add_argument(
        "--model",
        nargs=3,
        action="append",
        default=[],
        metavar=("NAME", "CONFIG", "CHECKPOINT"),
        help="config and checkpoint of ensemble model NAME (default: what its prediction file recorded)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle folder")
    return p.parse_args(argv)


def model_line(m: Mapping[str, Any]) -> str:
    """One line of the summary for a ``bundle.json`` model entry (a network model or box-first fused boxes)."""
    if m["role"] == "fused_boxes":
        files = f", {m['n_folds']} fold files" if m["n_folds"] > 1 else ""
        return f"  {m['name']:<24} {m['role']:<11} WBF of {', '.join(m['box_models'])}{files}"
    folds = m["folds"]
    size = sum(f["checkpoint_bytes"] for f in folds) / 2**20
    src = sum(f["source"]["checkpoint_bytes"] for f in folds) / 2**20
    ema = str(all(f["ema_weights"] for f in folds)).lower()
    nets = f"{len(folds)} fold networks, " if len(folds) > 1 else ""
    return (
        f"  {m['name']:<24} {m['role']:<11} tta={str(m['tta']).lower():<5} ema={ema:<5} "
        f"{nets}checkpoint {size:.1f} MB (training checkpoint {src:.1f} MB)"
    )


def main(argv: list[str] | None = None) -> int:
    """Make the bundle; returns the exit status (2: bad input, one line on stderr)."""
    args = parse_args(argv)
    from workflow.bundle import make_bundle

    models = {name: (cfg, ckpt) for name, cfg, ckpt in args.model}
    from celldata.fileio import check_output_path

    try:
        check_output_path(args.out, "dir", "--out")
        bundle = make_bundle(args.ensemble, args.out, models=models, overwrite=args.overwrite)
    except (FileNotFoundError, ValueError) as e:
        print(f"make_bundle.py: error: {e}", file=sys.stderr)
        return 2
    for m in bundle["models"]:
        print(model_line(m))
    print(f"wrote {args.out}: {len(bundle['models'])} models, {bundle['total_bytes'] / 2**20:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
