"""Pack a tuned ensemble into an upload-ready Kaggle model bundle (see workflow/bundle.py for the layout).

For every model of the ensemble: its resolved inference config and its checkpoint stripped to the (EMA) weights;
the ensemble YAML rewritten to bundle-relative prediction files; bundle.json with roles, TTA, sizes and sha256.
Each model's config and checkpoint are read from the meta of the prediction file the ensemble names (what
tools/infer.py recorded); --model overrides them. Refuses a model without a checkpoint and a checkpoint that does
not load into its config. Run it from the directory the prediction files' paths are relative to (the repository
root when the tools were run as documented).

Examples:
    python tools/kaggle/make_bundle.py --ensemble work_dirs/demo/ensemble_tuned.yaml --out work_dirs/bundle
    python tools/kaggle/make_bundle.py --ensemble tuned.yaml --out bundle \\
        --model mask_rcnn configs/mask_rcnn/mask-rcnn_r50_fpn_sartorius.py work_dirs/mask_rcnn/iter_20000.pth
"""

from __future__ import annotations

import argparse
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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


def main(argv: list[str] | None = None) -> int:
    """Make the bundle; returns the exit status."""
    args = parse_args(argv)
    from workflow.bundle import make_bundle

    models = {name: (cfg, ckpt) for name, cfg, ckpt in args.model}
    try:
        bundle = make_bundle(args.ensemble, args.out, models=models, overwrite=args.overwrite)
    except (FileNotFoundError, ValueError) as e:
        print(f"make_bundle.py: error: {e}", file=sys.stderr)
        return 2
    for m in bundle["models"]:
        src = m["source"]["checkpoint_bytes"] / 2**20
        print(
            f"  {m['name']:<24} {m['role']:<9} tta={str(m['tta']).lower():<5} ema={str(m['ema_weights']).lower():<5} "
            f"checkpoint {m['checkpoint_bytes'] / 2**20:.1f} MB (training checkpoint {src:.1f} MB)"
        )
    print(f"wrote {args.out}: {len(bundle['models'])} models, {bundle['total_bytes'] / 2**20:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
