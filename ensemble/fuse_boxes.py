"""Box-first fusion, step 1: fuse the boxes of an ensemble's box models into one prediction file.

Usage::

    python -m ensemble.fuse_boxes --config configs/ensemble/sartorius_box_first_boxes.yaml --out work_dirs/preds/fused_boxes_test.npz

For every image, the models whose files provide detections (YOLOX, Mask R-CNN, ...; semantic-only files are
skipped) are fused exactly as the vote mode fuses them (:mod:`ensemble.masks`: one cell type per image with
``fusion.image_class: majority``, then Weighted Boxes Fusion with the model weights, ``iou_thr``,
``skip_box_thr``, ``conf_type``, ``allows_overflow``). The result is a prediction file
(:mod:`ensemble.predictions`) of fused boxes, scores and labels without masks, the input of step 2::

    python tools/infer.py MASK_MODEL_CONFIG CKPT --ann-file VAL.json --mask-head-on work_dirs/preds/fused_boxes_val.npz \\
        --out work_dirs/preds/mask_rcnn_on_boxes_val.npz

and step 3 (``python -m ensemble.run`` with ``fusion.mode: box_first``, see :mod:`ensemble.box_first`).
``--out`` defaults to ``<out_dir>/<name>_fused_boxes.npz`` of the config. Exit code 0 on success, 2 on invalid
input (one ``error:`` line naming the file and the problem).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from celldata.fileio import check_output_path
from ensemble.config import EnsembleConfig, load_config
from ensemble.masks import FusionParams, _fuse_boxes, _prepare
from ensemble.pipeline import common_image_ids, load_models, model_roles
from ensemble.predictions import ImagePredictions, save_predictions

__all__ = ["fuse_boxes_image", "fuse_boxes", "build_parser", "main"]


def fuse_boxes_image(
    preds: Sequence[ImagePredictions], weights: Sequence[float], params: FusionParams
) -> ImagePredictions:
    """Fused boxes of one image from the box models' predictions (image-class rule, then WBF).

    Args:
        preds: per box model its predictions of the image.
        weights: positive weight per box model.
        params: ``image_class``, ``iou_thr``, ``skip_box_thr``, ``conf_type``, ``allows_overflow``.

    Returns:
        Fused boxes (xyxy pixels, clipped to the image), scores (descending) and labels; no masks.
    """
    prep = _prepare(preds, weights, params, None, [True] * len(preds))
    boxes_px, scores, labels, _, _ = _fuse_boxes(prep, params)
    h, w = prep.height, prep.width
    boxes = np.clip(boxes_px, 0, [w, h, w, h]).astype(np.float32).reshape(-1, 4)
    return ImagePredictions(prep.image_id, h, w, boxes, scores, labels)


def fuse_boxes(config: EnsembleConfig, progress: bool = False) -> tuple[dict[str, ImagePredictions], dict]:
    """Step 1 of box-first fusion for every image of a config's prediction files.

    Args:
        config: the ensemble; its box models (files with detections) are fused with their weights and
            ``config.fusion``.
        progress: show a progress bar.

    Returns:
        ``(fused, meta)``: image id -> fused boxes (first model's image order) and the metadata to store.

    Raises:
        ValueError: missing/invalid files, different image sets, or no model with boxes.
    """
    models = load_models(config.models)
    ids = common_image_ids(models, [m.name for m in config.models])
    roles = model_roles(models, config.models)
    box = [m for m, r in enumerate(roles) if r.boxes]
    if not box:
        raise ValueError(
            f"ensemble '{config.name}': no model has detections (boxes); box-first step 1 fuses the boxes of "
            "detectors (YOLOX, Mask R-CNN)"
        )
    box_models: list[Mapping[str, ImagePredictions]] = [models[m] for m in box]
    weights = [config.models[m].weight for m in box]
    fused = {}
    for k in tqdm(ids, desc="fusing boxes", unit="img", disable=not progress):
        fused[k] = fuse_boxes_image([bm[k] for bm in box_models], weights, config.fusion)
    f = config.fusion
    meta = {
        "name": f"{config.name}_fused_boxes",
        "fused_boxes": True,
        "models": [
            {"name": config.models[m].name, "predictions": config.models[m].predictions, "weight": w}
            for m, w in zip(box, weights)
        ],
        "skipped_semantic_only": [config.models[m].name for m, r in enumerate(roles) if not r.boxes],
        "fusion": {
            "image_class": f.image_class,
            "iou_thr": f.iou_thr,
            "skip_box_thr": f.skip_box_thr,
            "conf_type": f.conf_type,
            "allows_overflow": f.allows_overflow,
        },
    }
    return fused, meta


def build_parser() -> argparse.ArgumentParser:
    """Command-line parser of ``python -m ensemble.fuse_boxes``."""
    p = argparse.ArgumentParser(prog="python -m ensemble.fuse_boxes", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--config", type=Path, required=True, help="ensemble YAML config (its box models are fused)"
    )
    p.add_argument(
        "--out", type=Path, help="output prediction file (default: <out_dir>/<name>_fused_boxes.npz)"
    )
    p.add_argument(
        "--predictions-dir",
        type=Path,
        help="read each model's file from this directory instead (e.g. the test predictions of a tuned config)",
    )
    p.add_argument(
        "--predictions-pattern",
        default="{file}",
        help="file name of each model in --predictions-dir: {name}, {file}, {stem} (default {file})",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 2 invalid input)."""
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
        if args.predictions_dir is not None:
            config = config.with_predictions_dir(args.predictions_dir, args.predictions_pattern)
        out = args.out if args.out is not None else Path(config.out_dir) / f"{config.name}_fused_boxes.npz"
        check_output_path(out, "file", "--out")
        fused, meta = fuse_boxes(config, progress=not args.no_progress)
        meta["config"] = str(args.config)
        save_predictions(out, list(fused.values()), meta=meta)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n = sum(len(p) for p in fused.values())
    print(f"wrote {out}: {len(fused)} images, {n} fused boxes from {len(meta['models'])} box model(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
