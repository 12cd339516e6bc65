"""Stratified k-fold cross-validation (grouped by sample_id) of a classifier config.

Reports per-class precision, recall (= normalised TPR), F1, accuracy and the k-fold average normalised confusion
matrix, mean +- std over folds, in ``<work-dir>/cv_summary.{json,md}`` and ``confusion_normalized.png``.

Examples:
    python tools/cross_validate.py configs/classifiers/lipnet-4_adam-30e_sartorius-cells-28.py --folds 5 \\
        --cfg-options data_root=data/sartorius/
    python tools/cross_validate.py configs/classifiers/svm-rbf_hand-features_sartorius-cells.py --folds 5
"""

from __future__ import annotations

import argparse
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    from mmengine.config import DictAction

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="classifier config (configs/classifiers/...)")
    p.add_argument("--folds", type=int, default=5, help="number of folds (default 5)")
    p.add_argument("--seed", type=int, default=0, help="fold shuffle and training seed (default 0)")
    p.add_argument("--keep-checkpoints", action="store_true", help="save each fold's last checkpoint")
    p.add_argument("--work-dir", help="output directory (default work_dirs/cv/<config name>)")
    p.add_argument(
        "--cfg-options", nargs="+", action=DictAction, help="override config entries, e.g. data_root=DIR"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the cross-validation; returns the exit status."""
    args = parse_args(argv)
    from celldata.fileio import check_output_path
    from custom_modules.cls.cross_validation import cross_validate, format_summary

    try:
        if args.work_dir:
            check_output_path(args.work_dir, "dir", "--work-dir")
        summary = cross_validate(
            args.config, args.folds, args.seed, args.work_dir, args.cfg_options, args.keep_checkpoints
        )
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"cross_validate.py: error: {e}", file=sys.stderr)
        return 2
    print(format_summary(summary, title=args.config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
