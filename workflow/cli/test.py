"""Evaluate a checkpoint on the test split of a config (mmdet or mmseg) with the config's test evaluator.

Example:
    python tools/test.py configs/mask_rcnn/mask-rcnn_r18_fpn_demo-cpu_sartorius.py \\
        work_dirs/mask_rcnn/iter_200.pth --cfg-options data_root=data/sartorius/
    python tools/test.py configs/mask_rcnn/mask-rcnn_r18_fpn_demo-cpu_sartorius.py \\
        work_dirs/demo/models/mask_rcnn/fold0/iter_200.pth --cfg-options data_root=work_dirs/demo/data/  # make demo's
"""

from __future__ import annotations

import argparse
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    from custom_modules.runner_utils import add_runner_args, apply_local_rank

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="config file")
    p.add_argument("checkpoint", help="checkpoint file")
    p.add_argument("--out", help="also write the metrics to this JSON file")
    add_runner_args(p, work_dir_help="directory for the evaluation logs (default work_dirs/<config name>)")
    args = p.parse_args(argv)
    apply_local_rank(args)
    return args


def main(argv: list[str] | None = None) -> int:
    """Evaluate; returns the exit status."""
    args = parse_args(argv)
    from celldata.fileio import check_output_path
    from custom_modules.checkpoints import check_checkpoint_fits
    from custom_modules.runner_utils import build_test_runner

    try:
        if args.out:
            check_output_path(args.out, "file", "--out")
        if args.work_dir:
            check_output_path(args.work_dir, "dir", "--work-dir")
        # refuse, before any work, weights that do not fit the config (the runner would load them partly)
        check_checkpoint_fits(args.config, args.checkpoint, args.cfg_options)
        runner = build_test_runner(
            args.config,
            args.checkpoint,
            work_dir=args.work_dir,
            cfg_options=args.cfg_options,
            launcher=args.launcher,
        )
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"test.py: error: {e}", file=sys.stderr)
        return 2
    metrics = runner.test()
    if args.out and runner.rank == 0:
        from celldata.fileio import atomic_write_json

        atomic_write_json(
            args.out,
            {k: float(v) if isinstance(v, (int, float)) else str(v) for k, v in metrics.items()},
            indent=2,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
