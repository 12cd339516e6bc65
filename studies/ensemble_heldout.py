"""Held-out comparison of single models and the vote ensemble, with simulated model predictions.

No trained models are needed: each "model" is the ground truth perturbed the way that model family errs, so the
study isolates the *fusion* (and the tuning) from model quality. This is stated in every output. The simulated
models of one image (seeded, reproducible):

* ``yolox`` (box model without masks): 90 % of the cells found, box edges jittered by up to 3 px, 4 % of
  neighbouring cell pairs merged into one box, 3 % of cells split into two boxes, 10 % per-instance label noise,
  5 % false positives; scores higher for clean detections than for merged/split/false ones.
* ``mask_rcnn`` (boxes + instance masks): 88 % found, masks shifted by up to 2 px and dilated or eroded (3x3) with
  probability 0.5, 5 % merged pairs, 4 % splits, 8 % label noise, 5 % false positives.
* optionally (``--image-confusion P``) each detector takes a whole image for another cell type with probability P
  (all its true-label detections of that image get one wrong label), the case ``image_class: majority`` targets.
* ``upernet`` (semantic model, no detections): the foreground of the truth blurred (sigma 1.5 px, so gaps between
  touching cells fill in), 10 % of the cells faded to 0.3, Gaussian noise (sigma 0.08).
* box-first: the boxes of ``yolox`` and ``mask_rcnn`` fused by WBF (``ensemble.fuse_boxes``), then a simulated
  Mask R-CNN mask head on each fused box (the best-matching true cell with the same mask errors as ``mask_rcnn``,
  clipped to the box, blurred into probabilities; a faint blob for a box without a cell), plus ``upernet``.

Each configuration is tuned with :func:`ensemble.tune.tune` (coordinate search) and cross-validated with
:func:`ensemble.tune.cross_validate` (K folds grouped by ``sample_id``): the table gives the untuned default
score, the in-sample score of the parameters tuned on all images, and the held-out (cross-validated) score.
"A beats B" is read from the held-out column.

Run: ``OMP_NUM_THREADS=1 python studies/ensemble_heldout.py --truth TRAIN_CSV --name real``.
Writes ``work_dirs/ensemble_heldout/<name>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from celldata import CLASSES
from celldata.fileio import atomic_write_json, atomic_write_text
from celldata.instances import InstanceMasks
from ensemble.boxes import box_iou
from ensemble.config import EnsembleConfig, ModelEntry
from ensemble.fuse_boxes import fuse_boxes_image
from ensemble.masks import FusionParams
from ensemble.pipeline import FuseState
from ensemble.predictions import ImagePredictions
from ensemble.submission import load_truth, read_sample_ids
from ensemble.tune import SearchSpace, Tuner, cross_validate, tune

SPECS = {
    "yolox": dict(
        p_found=0.90, shift=0, morph=0.0, p_merge=0.04, p_split=0.03, p_label=0.10, fp=0.05, box_jit=3.0
    ),
    "mask_rcnn": dict(
        p_found=0.88, shift=2, morph=0.5, p_merge=0.05, p_split=0.04, p_label=0.08, fp=0.05, box_jit=1.0
    ),
}


def _perturb(rng: np.random.Generator, mask: np.ndarray, shift: int, morph: float) -> np.ndarray:
    m = mask.astype(np.uint8)
    if rng.random() < morph:
        op = cv2.dilate if rng.random() < 0.5 else cv2.erode
        out = op(m, np.ones((3, 3), np.uint8))
        m = out if out.any() else m
    if shift:
        dy, dx = (int(v) for v in rng.integers(-shift, shift + 1, 2))
        m = np.roll(np.roll(m, dy, axis=0), dx, axis=1)
    return m.astype(bool)


def simulate_detector(
    rng: np.random.Generator, truth: InstanceMasks, label: int, spec: dict, with_masks: bool, image_id: str
) -> ImagePredictions:
    """One detector's predictions of one image (see the module docstring)."""
    h, w = truth.height, truth.width
    n = len(truth)
    frames, scores, labels = [], [], []
    used = np.zeros(n, dtype=bool)
    centers = np.array([[(b[0] + b[2]) / 2, (b[1] + b[3]) / 2] for b in truth.boxes]).reshape(-1, 2)
    other = [c for c in range(len(CLASSES)) if c != label]
    for i in rng.permutation(n):
        if used[i] or rng.random() > spec["p_found"]:
            continue
        used[i] = True
        m = truth.mask(i)
        quality = 1.0
        r = rng.random()
        if r < spec["p_merge"] and n > 1:
            d = np.linalg.norm(centers - centers[i], axis=1)
            d[used] = np.inf
            j = int(np.argmin(d))
            if np.isfinite(d[j]):
                used[j] = True
                m = m | truth.mask(j)
                quality = 0.5
        elif r < spec["p_merge"] + spec["p_split"]:
            ys, xs = np.nonzero(m)
            if len(xs) > 20:
                axis_x = np.ptp(xs) >= np.ptp(ys)
                cut = np.median(xs if axis_x else ys)
                half = np.zeros_like(m)
                sel = (xs < cut) if axis_x else (ys < cut)
                half[ys[sel], xs[sel]] = True
                for part in (half, m & ~half):
                    if part.any():
                        frames.append(_perturb(rng, part, spec["shift"], spec["morph"]))
                        scores.append(float(np.clip(rng.normal(0.45, 0.12), 0.05, 1.0)))
                        labels.append(label if rng.random() > spec["p_label"] else int(rng.choice(other)))
                continue
        frames.append(_perturb(rng, m, spec["shift"], spec["morph"]))
        scores.append(float(np.clip(rng.normal(0.55 + 0.3 * quality, 0.12), 0.05, 1.0)))
        labels.append(label if rng.random() > spec["p_label"] else int(rng.choice(other)))
    for _ in range(int(round(spec["fp"] * n))):  # false positives: blobs at random places
        blob = np.zeros((h, w), dtype=np.uint8)
        ax, ay = (int(v) for v in rng.integers(3, 10, 2))
        cv2.ellipse(blob, (int(rng.integers(0, w)), int(rng.integers(0, h))), (ax, ay), 0, 0, 360, 1, -1)
        frames.append(blob.astype(bool))
        scores.append(float(rng.uniform(0.05, 0.5)))
        labels.append(label if rng.random() > 0.5 else int(rng.choice(other)))
    keep = [k for k, f in enumerate(frames) if f.any()]
    frames = [frames[k] for k in keep]
    masks = InstanceMasks.from_full(np.asarray(frames, dtype=bool).reshape(-1, h, w)) if frames else None
    if masks is None:
        masks = InstanceMasks.empty(h, w)
    tb = masks.tight_boxes().astype(np.float64)
    boxes = tb + rng.uniform(-spec["box_jit"], spec["box_jit"], tb.shape)
    boxes = np.clip(boxes, 0, [w, h, w, h])
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    boxes = np.minimum(boxes, [w, h, w, h])
    return ImagePredictions(
        image_id,
        h,
        w,
        boxes.astype(np.float32),
        np.array([scores[k] for k in keep], np.float32),
        np.array([labels[k] for k in keep], np.int64),
        masks if with_masks else None,
    )


def simulate_semantic(rng: np.random.Generator, truth: InstanceMasks, image_id: str) -> ImagePredictions:
    """A semantic model's foreground map of one image (no detections)."""
    h, w = truth.height, truth.width
    fg = np.zeros((h, w), dtype=np.float32)
    for i in range(len(truth)):
        x0, y0, x1, y1 = (int(v) for v in truth.boxes[i])
        val = 0.3 if rng.random() < 0.1 else 1.0
        region = fg[y0:y1, x0:x1]
        region[truth.crops[i]] = np.maximum(region[truth.crops[i]], val)
    fg = cv2.GaussianBlur(fg, (0, 0), 1.5)
    fg = np.clip(fg + rng.normal(0, 0.08, fg.shape).astype(np.float32), 0, 1).astype(np.float32)
    z = np.zeros((0, 4), np.float32)
    return ImagePredictions(image_id, h, w, z, np.zeros(0, np.float32), np.zeros(0, np.int64), None, fg)


def simulate_mask_head(
    rng: np.random.Generator, truth: InstanceMasks, fused: ImagePredictions, spec: dict
) -> ImagePredictions:
    """Mask R-CNN's mask head run on given (fused) boxes: per box a soft mask inside the box window.

    The box's best-overlapping true cell (box IoU > 0.3), perturbed with the detector's own mask errors (shift,
    dilation/erosion), clipped to the box window and blurred (sigma 1 px) into probabilities in [0.02, 0.98];
    a box without a true cell gets a faint blob (peak 0.6). The binary mask is ``p >= 0.5``.
    """
    h, w = truth.height, truth.width
    n = len(fused)
    win = (
        np.stack(
            [
                np.floor(fused.boxes[:, 0]),
                np.floor(fused.boxes[:, 1]),
                np.ceil(fused.boxes[:, 2]),
                np.ceil(fused.boxes[:, 3]),
            ],
            axis=1,
        )
        .astype(np.int64)
        .reshape(-1, 4)
    )
    win = np.clip(win, 0, [w, h, w, h])
    iou = (
        box_iou(fused.boxes.astype(np.float64), truth.boxes.astype(np.float64)) if n and len(truth) else None
    )
    crops, probs = [], []
    for i in range(n):
        x0, y0, x1, y1 = (int(v) for v in win[i])
        bh, bw = max(y1 - y0, 0), max(x1 - x0, 0)
        if iou is not None and iou[i].max() > 0.3:
            m = _perturb(rng, truth.mask(int(np.argmax(iou[i]))), spec["shift"], spec["morph"])
            p = m[y0:y1, x0:x1].astype(np.float32)
        else:
            p = np.zeros((bh, bw), np.float32)
            if bh and bw:
                cv2.ellipse(p, (bw // 2, bh // 2), (max(bw // 3, 1), max(bh // 3, 1)), 0, 0, 360, 0.6, -1)
        if p.size:
            p = cv2.GaussianBlur(p, (0, 0), 1.0)
        p = np.clip(p, 0.02, 0.98).astype(np.float32)
        probs.append(p)
        crops.append(p >= 0.5)
    masks = InstanceMasks(h, w, win.astype(np.int32), crops)
    return ImagePredictions(fused.image_id, h, w, fused.boxes, fused.scores, fused.labels, masks, None, probs)


def confuse_image(rng: np.random.Generator, pred: ImagePredictions, label: int, p: float) -> ImagePredictions:
    """With probability ``p`` the model takes the whole image for another cell type: every detection of it that
    carried the true label gets one wrong label (image-level confusion, e.g. astro vs cort)."""
    if p <= 0 or rng.random() >= p or len(pred) == 0:
        return pred
    wrong = int(rng.choice([c for c in range(len(CLASSES)) if c != label]))
    labels = np.where(pred.labels == label, wrong, pred.labels)
    return ImagePredictions(
        pred.image_id, pred.height, pred.width, pred.boxes, pred.scores, labels, pred.masks, pred.semantic
    )


def simulate(
    truth: dict[str, InstanceMasks], types: dict[str, str], seed: int, image_confusion: float = 0.0
) -> dict[str, dict]:
    """Per model name, image id -> simulated predictions (box-first: ``mask_rcnn_on_boxes`` = the mask head on
    the WBF of yolox and mask_rcnn boxes, step 1 of ``ensemble.fuse_boxes`` with default parameters)."""
    out: dict[str, dict] = {"yolox": {}, "mask_rcnn": {}, "upernet": {}, "mask_rcnn_on_boxes": {}}
    for k, (image_id, t) in enumerate(truth.items()):
        label = CLASSES.index(types[image_id])
        rng = np.random.default_rng([seed, k])
        yolox = simulate_detector(rng, t, label, SPECS["yolox"], False, image_id)
        mrcnn = simulate_detector(rng, t, label, SPECS["mask_rcnn"], True, image_id)
        out["yolox"][image_id] = confuse_image(rng, yolox, label, image_confusion)
        out["mask_rcnn"][image_id] = confuse_image(rng, mrcnn, label, image_confusion)
        out["upernet"][image_id] = simulate_semantic(rng, t, image_id)
        fused = fuse_boxes_image(
            [out["yolox"][image_id], out["mask_rcnn"][image_id]], [1.0, 1.0], FusionParams(skip_box_thr=0.05)
        )
        out["mask_rcnn_on_boxes"][image_id] = simulate_mask_head(rng, t, fused, SPECS["mask_rcnn"])
    return out


SETUPS = {
    "mask_rcnn alone": (["mask_rcnn"], {}),
    "mask_rcnn + upernet (vote)": (["mask_rcnn", "upernet"], {"semantic_weight": 0.5}),
    "yolox + mask_rcnn + upernet (vote, majority class)": (
        ["yolox", "mask_rcnn", "upernet"],
        {"semantic_weight": 0.5},
    ),
    "yolox + mask_rcnn + upernet (vote, per-instance class)": (
        ["yolox", "mask_rcnn", "upernet"],
        {"semantic_weight": 0.5, "image_class": "per_instance"},
    ),
    "box-first: WBF(yolox, mask_rcnn) -> mask head + upernet": (
        ["mask_rcnn_on_boxes", "upernet"],
        {"semantic_weight": 0.5, "mode": "box_first"},
    ),
}

SPACE = SearchSpace(
    weights=(0.5, 1.0, 2.0),
    iou_thr=(0.4, 0.5, 0.6),
    vote_thr=(0.4, 0.5, 0.6),
    semantic_weight=(0.0, 0.5, 1.0),
    score_thr=tuple(float(v) for v in np.round(np.arange(0.0, 0.8, 0.1), 2)),
    min_area=(0, 20, 40, 80),
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--truth", type=Path, required=True, help="train.csv-format ground truth (with sample_id)"
    )
    ap.add_argument("--name", required=True, help="output name (work_dirs/ensemble_heldout/<name>.*)")
    ap.add_argument("--cv", type=int, default=3, help="folds (grouped by sample_id)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--out-dir", type=Path, default=Path("work_dirs/ensemble_heldout"))
    ap.add_argument("--setups", nargs="+", default=None, help="subset of the setups (substring match)")
    ap.add_argument(
        "--image-confusion",
        type=float,
        default=0.0,
        help="probability that a detector labels a whole image as another cell type (default 0)",
    )
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    truth, types = load_truth(args.truth)
    groups = read_sample_ids(args.truth)
    sims = simulate(truth, types, args.seed, args.image_confusion)
    ids = list(truth)
    rows = []
    for setup, (names, fusion) in SETUPS.items():
        if args.setups and not any(k in setup for k in args.setups):
            continue
        params = FusionParams(**fusion)
        cfg = EnsembleConfig(setup, [ModelEntry(n, f"<simulated {n}>") for n in names], params)
        state = FuseState.from_config(cfg, [sims[n] for n in names])
        tuner = Tuner(state, truth, ids, workers=args.workers)
        try:
            weights = [1.0] * len(names)
            default = tuner.score(weights, params)
            cv = cross_validate(tuner, weights, params, groups, args.cv, space=SPACE, rounds=args.rounds)
            res = tune(tuner, weights, params, space=SPACE, rounds=args.rounds)
        finally:
            tuner.close()
        row = {
            "setup": setup,
            "n_images": len(ids),
            "default_untuned": default,
            "tuned_in_sample": res.score,
            "tuned_held_out": cv.score_held_out,
            "folds": cv.folds,
            "tuned_params": {"weights": res.weights, **{k: v for k, v in vars(res.params).items()}},
        }
        rows.append(row)
        print(
            f"[heldout] {setup}: default {default:.4f}, in-sample {res.score:.4f}, held-out {cv.score_held_out:.4f} "
            f"({time.perf_counter() - t0:.0f}s)",
            flush=True,
        )
    n_groups = len({groups.get(i, i) for i in ids})
    lines = [
        f"# Held-out ensemble comparison: {args.name} ({len(ids)} images, {n_groups} sample groups)",
        "",
        "SIMULATED model predictions (ground truth perturbed per model family, seed "
        f"{args.seed}, image-level label confusion {args.image_confusion}; see "
        "studies/ensemble_heldout.py), not trained models.",
        f"Tuning: coordinate search, {args.rounds} rounds; held-out = {args.cv}-fold CV grouped by sample_id.",
        "",
        "| setup | default (untuned) | tuned, in-sample | tuned, held-out |",
        "| --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['setup']} | {r['default_untuned']:.4f} | {r['tuned_in_sample']:.4f} | {r['tuned_held_out']:.4f} |"
        )
    lines.append("")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "truth": str(args.truth),
        "seed": args.seed,
        "cv": args.cv,
        "rounds": args.rounds,
        "simulated": True,
    }
    atomic_write_json(args.out_dir / f"{args.name}.json", {"meta": meta, "rows": rows}, indent=2)
    atomic_write_text(args.out_dir / f"{args.name}.md", "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
