"""Benchmark of the per-image ensemble path: ours vs a competent baseline vs the straightforward path.

For N = 100, 300, 700 instances per model x 3 models on a 520x704 image, three paths run in the same process on
the same input and produce the same kind of output (fused non-overlapping instances, their competition score and
their Kaggle RLE strings):

=========  ============================================  ==================================  ==========================
stage      ours                                          competent baseline                  straightforward
=========  ============================================  ==================================  ==========================
wbf        ``ensemble.boxes.weighted_boxes_fusion``      ensemble-boxes WBF + members by     pure-Python WBF with
           (numba, with clusters)                        box IoU                             clusters
voting     crop-window voting kernel (numba), rerank,    NumPy voting inside crop windows    full-frame voting
           filters
overlaps   crop-based overlap removal (numba)            NumPy on a taken-pixel frame        full-frame removal
metric     ``ensemble.metrics.image_score``              pycocotools encode + ``mask.iou``   pycocotools
rle        ``InstanceMasks.to_kaggle_rles`` (numba)      NumPy ``np.diff`` runs per crop     textbook full-frame RLE
=========  ============================================  ==================================  ==========================

Ours and the competent baseline are each timed as the median of the same number of warmed runs (fresh input
objects every run, so no cache carries over); the straightforward path runs once. Wall time per stage and CPU
(process) time of the whole path are reported, with the load average (the CPU time is the fairer number on a
shared machine). Our path must agree with the straightforward one (masks, RLE and metric exactly, scores to 1e-6
relative; WBF equal to ensemble-boxes).

Inputs are realistic: ground truth = the instances of a real Sartorius image (``../shared/data/sartorius_real``)
with at least N cells, subsampled to N; each model sees every cell with probability 0.93, its mask shifted by
up to 2 px and randomly dilated/eroded, with noisy box, score and label, plus 5 % false positives; the third model
also gives a semantic foreground map. Each model's predictions go through a prediction file (written and read
back, as ``ensemble.run`` loads them) and the ground truth is decoded from the real COCO RLEs, so both arrive
packed as in the pipeline. Without the real data, random ellipses are used.

The straightforward path is the tests' oracle, ``fuse_image_reference`` of ``tests/ensemble_reference.py`` (loaded
by its file path, one copy for tests and benchmark); the competent baseline is :func:`competent_fuse_image` here.

Results go to ``work_dirs/bench/ensemble_bench.json`` and ``.md`` (plus a PNG bar chart).

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_ensemble.py [--quick] [--out-dir work_dirs/bench]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import resource
import statistics
import sys
import tempfile
import time
import tracemalloc
import warnings
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from celldata import CLASSES, IMAGE_HEIGHT, IMAGE_WIDTH
from celldata.fileio import atomic_write_json, atomic_write_png, atomic_write_text
from celldata.instances import InstanceMasks
from ensemble.boxes import box_iou, weighted_boxes_fusion
from ensemble.masks import MIN_FUSED_SCORE, FusionParams, _box_windows, _prepare, fuse_image
from ensemble.metrics import image_score, precisions_from_iou
from ensemble.predictions import ImagePredictions, load_predictions, save_predictions

REPO = Path(__file__).resolve().parents[1]
REAL_COCO = REPO.parent / "shared" / "data" / "sartorius_real" / "val_fold0_part1_coco.json"


def _load_reference():
    """The tests' oracle ``tests/ensemble_reference.py`` (the one copy of the straightforward path), loaded by its
    file path: it is test code, not part of an installed package."""
    spec = importlib.util.spec_from_file_location(
        "ensemble_reference", REPO / "tests" / "ensemble_reference.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fuse_image_reference = _load_reference().fuse_image_reference
H, W = IMAGE_HEIGHT, IMAGE_WIDTH
STAGES = ("wbf", "voting", "overlaps", "metric", "rle")
MODEL_WEIGHTS = (1.0, 0.8, 1.2)
PARAMS = FusionParams(
    iou_thr=0.5,
    skip_box_thr=0.05,
    conf_type="avg",
    vote_thr=0.5,
    semantic_weight=0.5,
    rerank=True,
    score_thr={"shsy5y": 0.15, "astro": 0.15, "cort": 0.15},
    min_area={"shsy5y": 15, "astro": 30, "cort": 30},
    max_lost_frac=0.5,
)


# ----------------------------------------------------------------------------------------------------------------
# input generation
# ----------------------------------------------------------------------------------------------------------------
def load_real_layouts(path: Path) -> list[tuple[str, InstanceMasks, np.ndarray]]:
    """Real images as ``(image id, instances, 0-based labels)``, most crowded first."""
    data = json.loads(path.read_text())
    by_image: dict[str, list[dict]] = {}
    for a in data["annotations"]:
        by_image.setdefault(str(a["image_id"]), []).append(a)
    out = []
    for image_id, anns in sorted(by_image.items(), key=lambda kv: -len(kv[1])):
        out.append((image_id, anns))
    return out  # decoded lazily by pick_truth


def _decode(anns: list[dict]) -> tuple[InstanceMasks, np.ndarray]:
    masks = InstanceMasks.from_coco_rles([a["segmentation"] for a in anns])
    labels = np.array([int(a["category_id"]) - 1 for a in anns], dtype=np.int64)
    return masks, labels


def _ellipse_truth(rng: np.random.Generator, n: int) -> tuple[InstanceMasks, np.ndarray]:
    boxes, crops = [], []
    for _ in range(n):
        ax, ay = int(rng.integers(4, 14)), int(rng.integers(4, 14))
        c = np.zeros((2 * ay + 3, 2 * ax + 3), dtype=np.uint8)
        cv2.ellipse(c, (ax + 1, ay + 1), (ax, ay), float(rng.uniform(0, 180)), 0, 360, 1, -1)
        x0, y0 = int(rng.integers(0, W - c.shape[1])), int(rng.integers(0, H - c.shape[0]))
        boxes.append((x0, y0, x0 + c.shape[1], y0 + c.shape[0]))
        crops.append(c.astype(bool))
    m = InstanceMasks(H, W, np.array(boxes, np.int32), crops).tighten()
    packed = InstanceMasks.from_crops_packed(H, W, m.boxes, m.crops)  # packed, as decoded truth is
    return packed, rng.integers(0, 3, n)


def pick_truth(
    layouts: list[tuple[str, list[dict]]] | None, n: int, rng: np.random.Generator
) -> tuple[str, InstanceMasks, np.ndarray]:
    """Ground truth with exactly n instances: a real image with >= n cells subsampled, else ellipses."""
    if layouts:
        candidates = [(i, a) for i, a in layouts if len(a) >= n]
        if candidates:
            image_id, anns = min(candidates, key=lambda ia: len(ia[1]))
            sel = np.sort(rng.choice(len(anns), n, replace=False))
            masks, labels = _decode([anns[i] for i in sel])
            keep = np.flatnonzero(masks.areas() > 0)
            return f"real:{image_id}", masks.subset(keep), labels[keep]
    masks, labels = _ellipse_truth(rng, n)
    return "ellipses", masks, labels


def _jitter_crop(
    rng: np.random.Generator, box: np.ndarray, crop: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """Shifted (+-2 px) and randomly dilated/eroded copy of one mask, clipped to the image; None if empty."""
    pad = 3
    c = np.pad(crop.astype(np.uint8), pad)
    r = rng.random()
    kernel = np.ones((3, 3), np.uint8)
    if r < 0.3:
        c = cv2.dilate(c, kernel)
    elif r < 0.6:
        e = cv2.erode(c, kernel)
        c = e if e.any() else c
    dx, dy = (int(v) for v in rng.integers(-2, 3, 2))
    x0, y0 = int(box[0]) - pad + dx, int(box[1]) - pad + dy
    x1, y1 = x0 + c.shape[1], y0 + c.shape[0]
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, W), min(y1, H)
    if cx1 <= cx0 or cy1 <= cy0:
        return None
    c = c[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0].astype(bool)
    ys, xs = np.flatnonzero(c.any(1)), np.flatnonzero(c.any(0))
    if ys.size == 0:
        return None
    tb = np.array([cx0 + xs[0], cy0 + ys[0], cx0 + xs[-1] + 1, cy0 + ys[-1] + 1], dtype=np.int32)
    # contiguous, like the crops of a loaded prediction file (ensemble.predictions: reshaped slices of one buffer)
    return tb, np.ascontiguousarray(c[ys[0] : ys[-1] + 1, xs[0] : xs[-1] + 1])


def make_models(
    rng: np.random.Generator, truth: InstanceMasks, labels: np.ndarray, image_id: str = "bench"
) -> list[ImagePredictions]:
    """Three models' predictions of one image derived from its ground truth (see the module docstring)."""
    preds = []
    n = len(truth)
    for m in range(3):
        boxes, crops, scores, labs = [], [], [], []
        items = [
            (truth.boxes[i], truth.crops[i], int(labels[i]), True) for i in range(n) if rng.random() < 0.93
        ]
        for _ in range(int(0.05 * n)):  # false positives: real shapes at random places
            j = int(rng.integers(0, n))
            b = truth.boxes[j]
            bw, bh = int(b[2] - b[0]), int(b[3] - b[1])
            x0, y0 = int(rng.integers(0, W - bw + 1)), int(rng.integers(0, H - bh + 1))
            items.append((np.array([x0, y0, x0 + bw, y0 + bh]), truth.crops[j], int(labels[j]), False))
        for box, crop, lab, real in items:
            jit = _jitter_crop(rng, box, crop)
            if jit is None:
                continue
            tb, c = jit
            boxes.append(tb)
            crops.append(c)
            scores.append(rng.uniform(0.35, 1.0) if real else rng.uniform(0.05, 0.5))
            labs.append(lab if rng.random() > 0.03 else int(rng.integers(0, len(CLASSES))))
        tb = np.array(boxes, dtype=np.int32).reshape(-1, 4)
        fbox = np.clip(tb + rng.uniform(-1, 1, tb.shape), 0, [W, H, W, H]).astype(np.float32)
        fbox[:, 2:] = np.maximum(fbox[:, 2:], fbox[:, :2] + 1)
        fbox = np.minimum(fbox, np.array([W, H, W, H], np.float32))
        semantic = None
        if m == 2:
            fg = truth.to_label_image() > 0
            semantic = cv2.GaussianBlur(fg.astype(np.float32), (0, 0), 1.5)
            semantic = np.clip(semantic + rng.normal(0, 0.05, semantic.shape), 0, 1).astype(np.float32)
        preds.append(
            ImagePredictions(
                image_id,
                H,
                W,
                fbox,
                np.array(scores, np.float32),
                np.array(labs, np.int64),
                InstanceMasks(H, W, tb, crops),
                semantic,
            )
        )
    return [as_loaded(p) for p in preds]


def as_loaded(pred: ImagePredictions) -> ImagePredictions:
    """The prediction as the pipeline sees it: written to a prediction file and read back
    (``ensemble.predictions``: packed masks, semantic map quantized to ``q / 255``)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.npz"
        save_predictions(path, [pred])
        loaded, _ = load_predictions(path)
    return loaded[pred.image_id]


# ----------------------------------------------------------------------------------------------------------------
# the competent baseline: ensemble-boxes WBF + NumPy crop-window voting
# ----------------------------------------------------------------------------------------------------------------
def competent_fuse_image(
    preds: Sequence[ImagePredictions],
    weights: Sequence[float],
    params: FusionParams,
    *,
    timings: dict[str, float] | None = None,
) -> tuple[InstanceMasks, np.ndarray, np.ndarray]:
    """What a competent user writes with ensemble-boxes and NumPy (benchmark baseline; binary masks only).

    Image class by score-weighted majority, ``ensemble_boxes.weighted_boxes_fusion`` (which does not report
    clusters), each fused box's members = the input detections of its label with box IoU > ``iou_thr``, weighted
    pixel vote of the members' crops (and semantic maps) in NumPy inside the union window, rerank, thresholds,
    overlap removal on a taken-pixel frame with NumPy slicing.

    Returns:
        ``(masks, scores, labels)`` of the kept instances (descending score).
    """
    import time

    from ensemble_boxes import weighted_boxes_fusion as eb_wbf

    t0 = time.perf_counter()
    prep = _prepare(preds, weights, params)
    box_preds = [preds[m] for m in prep.box_idx]
    fb, fs, fl = eb_wbf(
        prep.boxes_norm,
        prep.scores,
        prep.labels,
        weights=prep.box_weights.tolist(),
        iou_thr=params.iou_thr,
        skip_box_thr=max(params.skip_box_thr, MIN_FUSED_SCORE),
        conf_type=params.conf_type,
        allows_overflow=params.allows_overflow,
    )
    h, w_img = prep.height, prep.width
    boxes_px = fb * np.array([w_img, h, w_img, h])
    # members by IoU (what one does without cluster bookkeeping)
    all_boxes = np.concatenate(prep.boxes_norm)
    all_lab = np.concatenate(prep.labels)
    all_s = np.concatenate(prep.scores)
    all_m = np.concatenate([np.full(len(b), t) for t, b in enumerate(prep.boxes_norm)])
    all_i = np.concatenate([np.arange(len(b)) for b in prep.boxes_norm])
    iou = box_iou(fb, all_boxes) if len(fb) and len(all_boxes) else np.zeros((len(fb), len(all_boxes)))
    t1 = time.perf_counter()
    windows = _box_windows(boxes_px, h, w_img)
    score_thr = params.score_thr_array()
    min_area = params.min_area_array()
    cand = []
    for k in range(len(fb)):
        lab = int(fl[k])
        mem = np.flatnonzero((iou[k] > params.iou_thr) & (all_lab == lab) & (all_s >= params.skip_box_thr))
        voters = [(j, box_preds[all_m[j]]) for j in mem if box_preds[all_m[j]].masks is not None]
        a = prep.box_weights[all_m[mem]] * all_s[mem]
        wins = [p.masks.boxes[all_i[j]] for j, p in voters]
        use_sem = prep.sem_maps is not None and len(mem) > 0
        if use_sem:
            wins.append(windows[k])
        if not wins:
            continue
        wins = np.array(wins)
        x0, y0 = wins[:, 0].min(), wins[:, 1].min()
        x1, y1 = wins[:, 2].max(), wins[:, 3].max()
        if x1 <= x0 or y1 <= y0:
            continue
        num = np.zeros((y1 - y0, x1 - x0))
        den = 0.0
        for (j, p), aj in zip(
            voters, prep.box_weights[all_m[[j for j, _ in voters]]] * all_s[[j for j, _ in voters]]
        ):
            bx0, by0, bx1, by1 = p.masks.boxes[all_i[j]]
            num[by0 - y0 : by1 - y0, bx0 - x0 : bx1 - x0] += aj * p.masks.crops[all_i[j]]
            den += aj
        if use_sem:
            fx0, fy0, fx1, fy1 = windows[k]
            for sw, sm in zip(prep.sem_weights, prep.sem_maps):
                lam = sw * a.mean()
                num[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0] += lam * sm[fy0:fy1, fx0:fx1]
                den += lam
        if den <= 0:
            continue
        vote = num / den
        fg = vote >= params.vote_thr
        area = int(fg.sum())
        score = float(fs[k]) * (float(vote[fg].mean()) if params.rerank and area else 1.0)
        if area < min_area[lab] or score < score_thr[lab]:
            continue
        cand.append((score, lab, (x0, y0, x1, y1), fg))
    t2 = time.perf_counter()
    cand.sort(key=lambda c: -c[0])
    taken = np.zeros((h, w_img), dtype=bool)
    boxes, crops, scores, labels = [], [], [], []
    for score, lab, (x0, y0, x1, y1), fg in cand:
        area = int(fg.sum())
        remain = fg & ~taken[y0:y1, x0:x1]
        left = int(remain.sum())
        if left == 0 or left < min_area[lab] or area - left > params.max_lost_frac * area:
            continue
        taken[y0:y1, x0:x1] |= remain
        boxes.append((x0, y0, x1, y1))
        crops.append(remain)
        scores.append(score)
        labels.append(lab)
    masks = InstanceMasks(h, w_img, np.array(boxes, dtype=np.int32).reshape(-1, 4), crops)
    if timings is not None:
        timings["wbf"] = timings.get("wbf", 0.0) + t1 - t0
        timings["voting"] = timings.get("voting", 0.0) + t2 - t1
        timings["overlaps"] = timings.get("overlaps", 0.0) + time.perf_counter() - t2
    return masks, np.array(scores), np.array(labels, dtype=np.int64)


# ----------------------------------------------------------------------------------------------------------------
# the three paths
# ----------------------------------------------------------------------------------------------------------------
def textbook_kaggle_rle(mask: np.ndarray) -> str:
    """The usual notebook RLE of a full-frame mask (row-major, 1-based starts)."""
    pixels = np.concatenate([[0], mask.ravel().astype(np.uint8), [0]])
    runs = np.flatnonzero(pixels[1:] != pixels[:-1]) + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def numpy_crop_kaggle_rles(masks: InstanceMasks) -> list[str]:
    """Competent NumPy RLE: runs of each crop found with ``np.diff`` per instance (no full frames)."""
    out = []
    for i in range(len(masks)):
        s, e = masks.kaggle_runs(i)
        pairs = np.empty(2 * s.size, dtype=np.int64)
        pairs[0::2] = s + 1
        pairs[1::2] = e - s
        out.append(" ".join(map(str, pairs.tolist())))
    return out


def pycocotools_score(truth: InstanceMasks, pred: InstanceMasks) -> float:
    """Competition score with pycocotools: encode every full mask, ``mask.iou``, then the precisions."""
    pred_rles = [
        mask_utils.encode(np.asfortranarray(pred.mask(i).astype(np.uint8))) for i in range(len(pred))
    ]
    gt_rles = [
        mask_utils.encode(np.asfortranarray(truth.mask(i).astype(np.uint8))) for i in range(len(truth))
    ]
    ious = mask_utils.iou(pred_rles, gt_rles, [0] * len(gt_rles)) if pred_rles and gt_rles else None
    iou = np.zeros((len(truth), len(pred))) if ious is None else np.asarray(ious).T.reshape(len(truth), -1)
    return float(precisions_from_iou(iou).mean())


def fresh(preds: list[ImagePredictions]) -> list[ImagePredictions]:
    """New prediction objects over the same arrays (no per-object cache carried from an earlier run)."""
    return [dataclasses.replace(p) for p in preds]


def run_ours(preds: list[ImagePredictions], truth: InstanceMasks) -> tuple[dict[str, float], dict]:
    """Our path once on fresh input objects; returns (stage seconds incl. ``cpu_total``, outputs)."""
    preds = fresh(preds)
    t: dict[str, float] = {}
    c0 = time.process_time()
    fused = fuse_image(preds, MODEL_WEIGHTS, PARAMS, timings=t)
    t0 = time.perf_counter()
    score = image_score(truth, fused.masks)
    t1 = time.perf_counter()
    rles = fused.masks.to_kaggle_rles()
    t2 = time.perf_counter()
    t["cpu_total"] = time.process_time() - c0
    t["metric"] = t1 - t0
    t["rle"] = t2 - t1
    return t, {"fused": fused, "score": score, "rles": rles}


def run_competent(preds: list[ImagePredictions], truth: InstanceMasks) -> tuple[dict[str, float], dict]:
    """The competent baseline once: ensemble-boxes WBF + NumPy crop-window voting, pycocotools metric, NumPy
    crop RLE (see :func:`competent_fuse_image`)."""
    preds = fresh(preds)
    t: dict[str, float] = {}
    c0 = time.process_time()
    masks, scores, _ = competent_fuse_image(preds, MODEL_WEIGHTS, PARAMS, timings=t)
    t0 = time.perf_counter()
    score = pycocotools_score(truth, masks)
    t1 = time.perf_counter()
    rles = numpy_crop_kaggle_rles(masks)
    t2 = time.perf_counter()
    t["cpu_total"] = time.process_time() - c0
    t["metric"] = t1 - t0
    t["rle"] = t2 - t1
    return t, {"masks": masks, "score": score, "rles": rles}


def run_straightforward(preds: list[ImagePredictions], truth: InstanceMasks) -> tuple[dict[str, float], dict]:
    """The straightforward full-frame path once; returns (stage seconds, outputs)."""
    preds = fresh(preds)
    t: dict[str, float] = {}
    c0 = time.process_time()
    fused = fuse_image_reference(preds, MODEL_WEIGHTS, PARAMS, timings=t)
    t0 = time.perf_counter()
    score = pycocotools_score(truth, fused.masks)
    t1 = time.perf_counter()
    rles = [textbook_kaggle_rle(fused.masks.mask(i)) for i in range(len(fused))]
    t2 = time.perf_counter()
    t["cpu_total"] = time.process_time() - c0
    t["metric"] = t1 - t0
    t["rle"] = t2 - t1
    # WBF parity with ensemble-boxes on the same (relabelled, clipped, normalized) input
    from ensemble_boxes import weighted_boxes_fusion as eb_wbf

    prep = _prepare(preds, MODEL_WEIGHTS, PARAMS)
    kw = dict(
        weights=list(prep.box_weights),
        iou_thr=PARAMS.iou_thr,
        skip_box_thr=PARAMS.skip_box_thr,
        conf_type=PARAMS.conf_type,
        allows_overflow=PARAMS.allows_overflow,
    )
    eb = eb_wbf(prep.boxes_norm, prep.scores, prep.labels, **kw)
    ours_wbf = weighted_boxes_fusion(prep.boxes_norm, prep.scores, prep.labels, **kw)
    wbf_equal = all(a.shape == b.shape and np.array_equal(a, b) for a, b in zip(eb, ours_wbf[:3]))
    return t, {"fused": fused, "score": score, "rles": rles, "wbf_equal_ensemble_boxes": wbf_equal}


def same_result(a: ImagePredictions, b: ImagePredictions) -> bool:
    """Two fused results agree: boxes, labels, mask windows and crops exactly; scores to 1e-6 relative (float32
    outputs of sums accumulated in different orders)."""
    if len(a) != len(b):
        return False
    if not (
        np.array_equal(a.boxes, b.boxes)
        and np.allclose(a.scores, b.scores, rtol=1e-6, atol=0)
        and np.array_equal(a.labels, b.labels)
        and np.array_equal(a.masks.boxes, b.masks.boxes)
    ):
        return False
    return all(np.array_equal(x, y) for x, y in zip(a.masks.crops, b.masks.crops))


def peak_memory_ours(preds: list[ImagePredictions], truth: InstanceMasks) -> float:
    """Peak traced memory (MB) allocated by one run of our path (inputs excluded)."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    run_ours(preds, truth)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return (peak - base) / 2**20


# ----------------------------------------------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------------------------------------------
def _median_runs(fn, preds, truth, repeats: int) -> tuple[dict[str, float], dict]:
    fn(preds, truth)  # warm-up run, not timed
    runs = [fn(preds, truth) for _ in range(repeats)]
    keys = runs[0][0].keys()
    med = {k: statistics.median(r[0][k] for r in runs) for k in keys}
    med["total"] = statistics.median(sum(r[0][s] for s in STAGES) for r in runs)
    return med, runs[-1][1]


def bench_one(n: int, layouts, rng: np.random.Generator, repeats: int) -> dict:
    source, truth, labels = pick_truth(layouts, n, rng)
    preds = make_models(rng, truth, labels)
    ours_t, ours_out = _median_runs(run_ours, preds, truth, repeats)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        comp_t, comp_out = _median_runs(run_competent, preds, truth, repeats)
        ref_t, ref_out = run_straightforward(preds, truth)
    ref_t["total"] = sum(ref_t[s] for s in STAGES)
    return {
        "n_per_model": n,
        "truth_source": source,
        "n_truth": len(truth),
        "n_detections": [len(p) for p in preds],
        "n_fused": len(ours_out["fused"]),
        "n_fused_competent": len(comp_out["masks"]),
        "image_score": ours_out["score"],
        "image_score_competent": comp_out["score"],
        "seconds_ours": ours_t,
        "seconds_competent": comp_t,
        "seconds_straightforward": {
            **{s: ref_t[s] for s in STAGES},
            "total": ref_t["total"],
            "cpu_total": ref_t["cpu_total"],
        },
        "speedup_vs_competent": {
            s: comp_t[s] / max(ours_t[s], 1e-9) for s in (*STAGES, "total", "cpu_total")
        },
        "speedup_vs_straightforward": {
            s: ref_t[s] / max(ours_t[s], 1e-9) for s in (*STAGES, "total", "cpu_total")
        },
        "identical": {
            "fused_instances": same_result(ours_out["fused"], ref_out["fused"]),
            "kaggle_rles": ours_out["rles"] == ref_out["rles"],
            "metric": abs(ours_out["score"] - ref_out["score"]) < 1e-12,
            "wbf_vs_ensemble_boxes": ref_out["wbf_equal_ensemble_boxes"],
            "kaggle_rles_competent_encoder": numpy_crop_kaggle_rles(ours_out["fused"].masks)
            == ours_out["rles"],
        },
        "peak_mb_ours": peak_memory_ours(preds, truth),
    }


def to_markdown(results: list[dict], meta: dict) -> str:
    lines = [
        "# Ensemble path benchmark (one 520x704 image, 3 models, one core)",
        "",
        f"Machine: {meta['machine']}; load average {meta['load_before']} before, {meta['load_after']} after. "
        f"Ours and the competent baseline: median of {meta['repeats']} warmed runs on fresh input objects; "
        "straightforward path: 1 run. Wall = perf_counter, CPU = process time of the whole path.",
        "",
        "| N/model | stage | ours (ms) | competent (ms) | straightforward (ms) | vs competent | vs straightforward |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        for s in (*STAGES, "total", "cpu_total"):
            lines.append(
                f"| {r['n_per_model']} | {s} | {1000 * r['seconds_ours'][s]:.1f} | "
                f"{1000 * r['seconds_competent'][s]:.1f} | {1000 * r['seconds_straightforward'][s]:.1f} | "
                f"{r['speedup_vs_competent'][s]:.1f}x | {r['speedup_vs_straightforward'][s]:.1f}x |"
            )
    lines += [
        "",
        "| N/model | truth | fused (ours / competent) | image score (ours / competent) | "
        "ours = straightforward (masks, RLE, metric, WBF = ensemble-boxes) | peak MB (ours) |",
        "| ---: | --- | ---: | ---: | --- | ---: |",
    ]
    for r in results:
        idt = r["identical"]
        flags = ", ".join(
            "yes" if idt[k] else "NO"
            for k in ("fused_instances", "kaggle_rles", "metric", "wbf_vs_ensemble_boxes")
        )
        lines.append(
            f"| {r['n_per_model']} | {r['truth_source']} ({r['n_truth']}) | {r['n_fused']} / "
            f"{r['n_fused_competent']} | {r['image_score']:.4f} / {r['image_score_competent']:.4f} | {flags} | "
            f"{r['peak_mb_ours']:.1f} |"
        )
    lines += [
        "",
        "Competent baseline = ensemble-boxes WBF, members found by box IoU, NumPy voting and overlap removal inside "
        "crop windows, pycocotools metric, NumPy crop RLE (`competent_fuse_image` in `benchmarks/bench_ensemble.py`); it fuses slightly "
        "differently (IoU-matched members instead of WBF clusters), so its instances and score are reported, not "
        "compared. Speed target: whole per-image path (total) <= 20 ms at 700 instances x 3 models on one core.",
        "",
    ]
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.6 * len(results), 3.8), squeeze=False)
    names = (*STAGES, "total")
    for ax, r in zip(axes[0], results):
        x = np.arange(len(names))
        ax.bar(
            x - 0.27, [1000 * r["seconds_straightforward"][s] for s in names], 0.27, label="straightforward"
        )
        ax.bar(x, [1000 * r["seconds_competent"][s] for s in names], 0.27, label="competent")
        ax.bar(x + 0.27, [1000 * r["seconds_ours"][s] for s in names], 0.27, label="ours")
        ax.set_yscale("log")
        ax.set_xticks(x, names, rotation=30)
        ax.set_ylabel("ms")
        ax.set_title(
            f"N={r['n_per_model']}/model: {r['speedup_vs_competent']['total']:.1f}x vs competent, "
            f"{r['speedup_vs_straightforward']['total']:.0f}x vs straightf.",
            fontsize=8,
        )
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    img = cv2.imread(str(tmp))
    tmp.unlink()
    atomic_write_png(path, img)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="N = 100, 300 only and fewer repeats")
    ap.add_argument(
        "--sizes", type=int, nargs="+", default=None, help="instances per model (default 100 300 700)"
    )
    ap.add_argument(
        "--repeats", type=int, default=None, help="warmed runs per path and size (median reported)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", type=Path, default=Path("work_dirs/bench"))
    args = ap.parse_args(argv)
    sizes = args.sizes or ([100, 300] if args.quick else [100, 300, 700])
    repeats = args.repeats or (3 if args.quick else 7)
    rng = np.random.default_rng(args.seed)
    layouts = load_real_layouts(REAL_COCO) if REAL_COCO.is_file() else None
    if layouts is None:
        print(f"[bench] real data not found at {REAL_COCO}: using random ellipses", flush=True)
    load_before = [round(v, 2) for v in os.getloadavg()]
    # warm-up (numba kernels are cached on disk; this loads them)
    truth, labels = _ellipse_truth(np.random.default_rng(1), 20)
    run_ours(make_models(np.random.default_rng(2), truth, labels), truth)
    results = []
    for n in sizes:
        print(f"[bench] N={n} per model ...", flush=True)
        r = bench_one(n, layouts, rng, repeats)
        print(
            f"[bench] N={n}: ours {1000 * r['seconds_ours']['total']:.1f} ms "
            f"(cpu {1000 * r['seconds_ours']['cpu_total']:.1f}), competent "
            f"{1000 * r['seconds_competent']['total']:.1f} ms ({r['speedup_vs_competent']['total']:.1f}x), "
            f"straightforward {1000 * r['seconds_straightforward']['total']:.1f} ms "
            f"({r['speedup_vs_straightforward']['total']:.1f}x), identical={all(r['identical'].values())}, "
            f"peak {r['peak_mb_ours']:.1f} MB",
            flush=True,
        )
        results.append(r)
    meta = {
        "machine": f"{sys.platform}, {os.cpu_count()} logical cores, python {sys.version.split()[0]}, "
        f"numpy {np.__version__}",
        "load_before": load_before,
        "load_after": [round(v, 2) for v in os.getloadavg()],
        "repeats": repeats,
        "params": {k: v for k, v in vars(PARAMS).items()},
        "model_weights": MODEL_WEIGHTS,
        "max_rss_mb_process": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    out = {"meta": meta, "results": results}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out_dir / "ensemble_bench.json", out, indent=2)
    atomic_write_text(args.out_dir / "ensemble_bench.md", to_markdown(results, meta))
    plot(results, args.out_dir / "ensemble_bench.png")
    print(to_markdown(results, meta))
    print(f"[bench] wrote {args.out_dir / 'ensemble_bench.json'}, .md and .png", flush=True)
    ok = all(all(r["identical"].values()) for r in results)
    if not ok:
        print("[bench] ERROR: our path and the straightforward path disagree", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
