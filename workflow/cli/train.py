"""Train an mmdet or mmseg model from a config (mmengine Runner).

Examples:
    python tools/train.py configs/mask_rcnn/mask-rcnn_r18_fpn_demo-cpu_sartorius.py \\
        --work-dir work_dirs/mask_rcnn --cfg-options data_root=data/sartorius/
    python tools/train.py CONFIG --resume                 # continue from the latest checkpoint of the work dir
    python tools/train.py CONFIG --resume work_dirs/mask_rcnn/iter_100.pth
    bash tools/dist_train.sh CONFIG 4                     # DDP over torchrun (nccl on GPU, gloo on CPU)
"""

from __future__ import annotations

import argparse
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    from custom_modules.runner_utils import add_runner_args, apply_local_rank

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="config file (mmdet or mmseg; picked by its default_scope)")
    p.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        metavar="CKPT",
        help="resume training: from CKPT, or without a value from the latest checkpoint in the work dir",
    )
    p.add_argument("--amp", action="store_true", help="automatic mixed precision (CUDA only)")
    p.add_argument("--auto-scale-lr", action="store_true", help="scale the LR to the actual total batch size")
    add_runner_args(
        p, cfg_options_help="override config entries, e.g. data_root=DIR fold=1 train_cfg.max_iters=100"
    )
    args = p.parse_args(argv)
    apply_local_rank(args)
    return args


def main(argv: list[str] | None = None) -> int:
    """Train; returns the exit status."""
    args = parse_args(argv)
    from celldata.fileio import check_output_path
    from custom_modules.runner_utils import build_runner
    from workflow.checkpoint_integrity import resume_arg

    try:
        if args.work_dir:
            check_output_path(args.work_dir, "dir", "--work-dir")
        # --resume: a checkpoint cut short by a kill is set aside; the newest good one (or a fresh start) instead
        args.resume = resume_arg(args.work_dir, args.resume, report=lambda note: print(f"train.py: {note}"))
        runner = build_runner(
            args.config,
            work_dir=args.work_dir,
            cfg_options=args.cfg_options,
            resume=args.resume,
            amp=args.amp,
            launcher=args.launcher,
            auto_scale_lr=args.auto_scale_lr,
        )
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    runner.train()
    return 0


if __name__ == "__main__":
    sys.exit(main())
