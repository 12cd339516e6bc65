"""Predict images with a trained model and write an ensemble prediction file (ensemble/predictions.py format).

Works for mmdet detectors (YOLOX: boxes only; Mask R-CNN: boxes + masks + mask probabilities, i.e. soft
masks), mmseg segmentors (UPerNet, U-Net: semantic foreground probability) and flow models (configs/flow/:
instances decoded from the flows, soft masks from the cell probability; no cell type: --image-class-from).
Images are predicted --batch-size at a time (flip TTA: the three passes of each image in the same batch), in
fp16 on CUDA with --fp16. See custom_modules/inference.py for the flip TTA merge and --mask-head-on.

Examples:
    python tools/infer.py configs/mask_rcnn/mask-rcnn_r18_fpn_demo-cpu_sartorius.py \\
        work_dirs/mask_rcnn/iter_200.pth --ann-file data/sartorius/annotations/fold0_val.json \\
        --out work_dirs/preds/mask_rcnn_val.npz --tta
    python tools/infer.py CONFIG CKPT --images data/sartorius/test --out work_dirs/preds/mask_rcnn_test.npz
    # box-first fusion, step 2: soft masks for the fused boxes of `python -m ensemble.fuse_boxes` from Mask R-CNN's
    # mask head (sigmoid pasted into each box) or from a segmentor's probability map cropped to each box:
    python tools/infer.py MRCNN_CONFIG MRCNN_CKPT --images data/sartorius/test \\
        --mask-head-on work_dirs/preds/fused_boxes_test.npz --out work_dirs/preds/mask_rcnn_on_boxes_test.npz
Prediction files are named <member>_<split>.npz (split val or test), as the ensemble YAMLs and recipes expect.
"""

from __future__ import annotations

import argparse
import sys

from mmengine.config import DictAction


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="model config file")
    p.add_argument("checkpoint", help="checkpoint file")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", help="folder of images (image id = file name without extension)")
    src.add_argument("--ann-file", help="COCO json of a split (file_name relative to --data-root)")
    p.add_argument("--data-root", help="root of the --ann-file image paths (default: the json's ../)")
    p.add_argument("--out", required=True, help="output prediction file (.npz)")
    p.add_argument("--tta", action="store_true", help="flip TTA: original + horizontal + vertical, merged")
    p.add_argument("--score-thr", type=float, default=0.05, help="drop detections below this score (0.05)")
    p.add_argument("--max-per-img", type=int, default=1000, help="keep at most this many detections (1000)")
    p.add_argument(
        "--mask-head-on",
        metavar="PRED_FILE",
        help="predict soft masks for the boxes of this prediction file (Mask R-CNN mask head, or a segmentor's "
        "probability map cropped to the boxes)",
    )
    p.add_argument(
        "--image-class-from",
        metavar="PRED_FILE",
        help="flow models: label each image's instances with the majority class of this prediction file (another "
        "model's predictions of the same images; default: label 0, shsy5y)",
    )
    p.add_argument("--batch-size", type=int, default=1, help="images per network pass (1)")
    p.add_argument("--fp16", action="store_true", help="fp16 autocast (CUDA only)")
    p.add_argument(
        "--no-soft-masks", action="store_true", help="write binary masks only (no mask probabilities)"
    )
    p.add_argument("--device", help="cuda / cpu (default: cuda when available)")
    p.add_argument("--name", help="model name stored in the file's metadata (default: config name)")
    p.add_argument("--cfg-options", nargs="+", action=DictAction, help="override config entries")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run inference; returns the exit status."""
    args = parse_args(argv)
    from pathlib import Path

    from celldata.fileio import check_output_path
    from celldata.images import list_images
    from custom_modules.inference import load_model, run_inference

    try:
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
        check_output_path(args.out, "file", "--out")
        images = list_images(args.images, args.ann_file, args.data_root)
        model = load_model(
            args.config,
            args.checkpoint,
            args.device,
            args.cfg_options,
            args.score_thr,
            args.max_per_img,
            fp16=args.fp16,
            soft_masks=not args.no_soft_masks,
        )
        preds = run_inference(
            model,
            images,
            args.out,
            tta=args.tta,
            score_thr=args.score_thr,
            max_per_img=args.max_per_img,
            mask_head_on=args.mask_head_on,
            meta={"name": args.name or Path(args.config).stem, "checkpoint": str(args.checkpoint)},
            progress=not args.no_progress,
            batch_size=args.batch_size,
            image_class_from=args.image_class_from,
        )
    except (FileNotFoundError, ValueError) as e:
        print(f"infer.py: error: {e}", file=sys.stderr)
        return 2
    n = sum(len(p) for p in preds)
    print(f"wrote {args.out}: {len(preds)} images, {n} detections")
    return 0


if __name__ == "__main__":
    sys.exit(main())
