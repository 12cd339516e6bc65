"""Box sizes of a COCO dataset and how well a detector config's anchors cover them (``tools/analyze_boxes.py``).

Cells are small (a typical Sartorius cell is 15-30 px across), and a detector that sees them through anchors
too large or a stride too coarse misses them before training starts. This module measures:

* box-size percentiles per class (``sqrt(w * h)``, width, height, in original image pixels);
* for an anchor-based config (``rpn_head.anchor_generator`` / ``bbox_head.anchor_generator``, mmdet's
  ``AnchorGenerator``): the fraction of ground-truth boxes that **no anchor matches at IoU >= 0.5** (mmdet's
  ``MaxIoUAssigner`` threshold; also at the config's own ``pos_iou_thr``), boxes scaled by the config's test
  ``Resize`` first. The best anchor for a box is exact and cheap: anchors of one shape sit on a regular grid
  (centres ``k * stride``, mmdet's ``center_offset=0``) and, for axis-aligned boxes, IoU only falls as the
  centres move apart along either axis, so the grid point nearest the box centre is the best one of each shape;
* for an anchor-free head (YOLOX): the fraction of boxes whose shorter side at the input scale is below the
  finest stride (one grid cell), and the input scale that would bring the 10th percentile to 1.5 strides;
* a suggestion: the anchor scale (from ``candidates``) that leaves the fewest boxes unmatched.

Config parsing uses :func:`custom_modules.config.load_config` only (no model is built, no torch).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "load_boxes",
    "size_percentiles",
    "anchor_shapes",
    "best_anchor_iou",
    "config_box_setup",
    "analyze_config",
    "suggest_anchor_scale",
    "box_report",
]

PERCENTILES = (5, 10, 25, 50, 75, 90, 95)
DEFAULT_SCALE_CANDIDATES = (2, 3, 4, 5, 6, 8)


def load_boxes(ann_file: str | os.PathLike) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Ground-truth boxes of a COCO json.

    Args:
        ann_file: COCO instance json (``bbox`` xywh, ``category_id``; crowd boxes left out).

    Returns:
        ``(boxes, class_names, labels)``: float64 (N, 4) xywh boxes, category names in id order, int (N,)
        indices into the names.

    Raises:
        ValueError: Unreadable json, unknown category or an invalid box (naming the file and annotation id).
    """
    path = Path(ann_file)
    try:
        coco = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable COCO json ({e})") from e
    cats = sorted(coco.get("categories", []), key=lambda c: c["id"])
    index = {c["id"]: i for i, c in enumerate(cats)}
    boxes, labels = [], []
    for a in coco.get("annotations", []):
        if a.get("iscrowd", 0):
            continue
        if a.get("category_id") not in index:
            raise ValueError(f"{path}: annotation {a.get('id')}: unknown category_id {a.get('category_id')}")
        b = a.get("bbox")
        if not isinstance(b, list) or len(b) != 4 or not all(isinstance(v, (int, float)) for v in b):
            raise ValueError(f"{path}: annotation {a.get('id')}: bbox must be [x, y, w, h], got {b!r}")
        if b[2] <= 0 or b[3] <= 0:
            continue  # empty masks have no box to match
        boxes.append(b)
        labels.append(index[a["category_id"]])
    return (
        np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
        [c["name"] for c in cats],
        np.asarray(labels, dtype=np.int64),
    )


def size_percentiles(
    boxes: np.ndarray, labels: np.ndarray, names: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Percentiles of ``sqrt(w h)``, ``w`` and ``h`` per class (and ``all``), in pixels."""
    out: dict[str, dict[str, Any]] = {}
    groups = [(n, labels == i) for i, n in enumerate(names)] + [("all", np.ones(len(boxes), bool))]
    for name, sel in groups:
        b = boxes[sel]
        if not len(b):
            continue
        side = np.sqrt(b[:, 2] * b[:, 3])
        out[name] = {
            "count": int(len(b)),
            "sqrt_area": {f"p{p}": float(np.percentile(side, p)) for p in PERCENTILES},
            "width": {f"p{p}": float(np.percentile(b[:, 2], p)) for p in PERCENTILES},
            "height": {f"p{p}": float(np.percentile(b[:, 3], p)) for p in PERCENTILES},
        }
    return out


def anchor_shapes(anchor_generator: dict) -> list[tuple[float, float, float]]:
    """``(stride, w, h)`` of every anchor shape of an mmdet ``AnchorGenerator`` config.

    Follows mmdet's rules: ``base_sizes`` default to the strides, ``scales`` or ``octave_base_scale`` x
    ``2 ** (i / scales_per_octave)``, ``h = base * scale * sqrt(ratio)``, ``w = base * scale / sqrt(ratio)``.

    Raises:
        ValueError: For another generator type.
    """
    typ = anchor_generator.get("type", "AnchorGenerator")
    if typ not in ("AnchorGenerator", "mmdet.AnchorGenerator"):
        raise ValueError(f"anchor generator {typ!r} is not supported (mmdet AnchorGenerator only)")
    strides = [s if isinstance(s, (int, float)) else s[0] for s in anchor_generator["strides"]]
    base_sizes = anchor_generator.get("base_sizes") or strides
    if anchor_generator.get("scales") is not None:
        scales = [float(s) for s in anchor_generator["scales"]]
    else:
        obs = float(anchor_generator["octave_base_scale"])
        spo = int(anchor_generator["scales_per_octave"])
        scales = [obs * 2 ** (i / spo) for i in range(spo)]
    ratios = [float(r) for r in anchor_generator["ratios"]]
    out = []
    for stride, base in zip(strides, base_sizes):
        for r in ratios:
            for s in scales:
                out.append((float(stride), base * s / math.sqrt(r), base * s * math.sqrt(r)))
    return out


def best_anchor_iou(boxes_xywh: np.ndarray, shapes: Sequence[tuple[float, float, float]]) -> np.ndarray:
    """Highest IoU of each box with any anchor of the grid (see the module docstring).

    Args:
        boxes_xywh: (N, 4) boxes at the network input scale.
        shapes: ``(stride, w, h)`` anchor shapes.

    Returns:
        float64 (N,) best IoU.
    """
    if not len(boxes_xywh):
        return np.zeros(0)
    x, y, w, h = boxes_xywh.T
    cx, cy = x + w / 2, y + h / 2
    best = np.zeros(len(boxes_xywh))
    for stride, aw, ah in shapes:
        ax = np.round(cx / stride) * stride
        ay = np.round(cy / stride) * stride
        ix = np.clip(np.minimum(cx + w / 2, ax + aw / 2) - np.maximum(cx - w / 2, ax - aw / 2), 0, None)
        iy = np.clip(np.minimum(cy + h / 2, ay + ah / 2) - np.maximum(cy - h / 2, ay - ah / 2), 0, None)
        inter = ix * iy
        iou = inter / (w * h + aw * ah - inter)
        best = np.maximum(best, iou)
    return best


def _resize_factor(pipeline: Sequence[dict], image_hw: tuple[int, int]) -> float:
    """Scale factor of the first ``Resize`` of a test pipeline for an image of size ``image_hw`` (1 if none)."""
    h, w = image_hw
    for t in pipeline or []:
        if t.get("type") in ("Resize", "mmdet.Resize") and t.get("scale") is not None:
            sw, sh = t["scale"] if isinstance(t["scale"], (list, tuple)) else (t["scale"], t["scale"])
            if t.get("keep_ratio", False):
                return float(min(max(sw, sh) / max(h, w), min(sw, sh) / min(h, w)))
            return float(sw / w)  # aspect changes; the width factor is reported
    return 1.0


def config_box_setup(config: str | os.PathLike, cfg_options: dict | None = None) -> dict[str, Any]:
    """What of a detector config matters for box coverage: anchors or strides, test scale, IoU threshold.

    Returns:
        ``{"kind": "anchor" | "anchor_free", "anchor_generator", "pos_iou_thr", "strides", "test_pipeline"}``.

    Raises:
        ValueError: If the config has neither an anchor generator nor a strided head.
    """
    from custom_modules.config import load_config

    cfg = load_config(config, cfg_options, import_custom_modules=False)
    model = cfg.model
    pipeline = cfg.get("test_pipeline") or cfg.test_dataloader.dataset.get("pipeline")
    head = model.get("rpn_head") or model.get("bbox_head") or {}
    gen = head.get("anchor_generator")
    out: dict[str, Any] = {"config": str(config), "test_pipeline": [dict(t) for t in pipeline or []]}
    if gen is not None:
        thr = 0.5
        tc = model.get("train_cfg") or {}
        assigner = (tc.get("rpn") or tc).get("assigner") or {}
        if "pos_iou_thr" in assigner:
            thr = float(assigner["pos_iou_thr"])
        out.update(kind="anchor", anchor_generator=dict(gen), pos_iou_thr=thr)
        return out
    if "strides" in head:
        out.update(
            kind="anchor_free", strides=[s if isinstance(s, (int, float)) else s[0] for s in head["strides"]]
        )
        return out
    raise ValueError(
        f"{config}: no anchor generator and no strided head found (model type {model.get('type')})"
    )


def analyze_config(
    setup: dict[str, Any],
    boxes: np.ndarray,
    labels: np.ndarray,
    names: Sequence[str],
    image_hw: tuple[int, int] = (520, 704),
) -> dict[str, Any]:
    """Coverage of ``boxes`` by one config (see the module docstring)."""
    factor = _resize_factor(setup["test_pipeline"], image_hw)
    scaled = boxes * factor
    res: dict[str, Any] = {"config": setup["config"], "kind": setup["kind"], "input_scale": factor}
    groups = [(n, labels == i) for i, n in enumerate(names)] + [("all", np.ones(len(boxes), bool))]
    if setup["kind"] == "anchor":
        shapes = anchor_shapes(setup["anchor_generator"])
        best = best_anchor_iou(scaled, shapes)
        thr = setup["pos_iou_thr"]
        res["anchor_sizes"] = sorted({round(math.sqrt(w * h), 1) for _, w, h in shapes})
        res["pos_iou_thr"] = thr
        res["unmatched_at_0.5"] = {n: float(np.mean(best[s] < 0.5)) for n, s in groups if s.any()}
        res[f"unmatched_at_{thr:g}"] = {n: float(np.mean(best[s] < thr)) for n, s in groups if s.any()}
        res["best_iou_median"] = float(np.median(best)) if len(best) else None
    else:
        stride = min(setup["strides"])
        short = np.minimum(scaled[:, 2], scaled[:, 3])
        res["finest_stride"] = stride
        res["below_one_stride"] = {n: float(np.mean(short[s] < stride)) for n, s in groups if s.any()}
        p10 = float(np.percentile(np.minimum(boxes[:, 2], boxes[:, 3]), 10)) if len(boxes) else float("nan")
        res["scale_for_p10_at_1.5_strides"] = 1.5 * stride / p10 if p10 > 0 else None
    return res


def suggest_anchor_scale(
    setup: dict[str, Any],
    boxes: np.ndarray,
    image_hw: tuple[int, int] = (520, 704),
    candidates: Sequence[float] = DEFAULT_SCALE_CANDIDATES,
) -> dict[str, Any]:
    """The anchor ``scales=[s]`` (one scale, the config's ratios and strides) leaving fewest boxes unmatched."""
    factor = _resize_factor(setup["test_pipeline"], image_hw)
    gen = dict(setup["anchor_generator"])
    gen.pop("octave_base_scale", None)
    gen.pop("scales_per_octave", None)
    table = {}
    for s in candidates:
        gen["scales"] = [s]
        best = best_anchor_iou(boxes * factor, anchor_shapes(gen))
        table[str(s)] = float(np.mean(best < 0.5)) if len(best) else 0.0
    pick = min(table, key=lambda k: (table[k], abs(float(k) - 8)))
    return {"unmatched_at_0.5_by_scale": table, "best_scale": float(pick)}


def box_report(
    ann_file: str | os.PathLike,
    configs: Sequence[str] = (),
    image_hw: tuple[int, int] = (520, 704),
) -> dict[str, Any]:
    """Box-size percentiles per class and, per config, anchor coverage (and a suggested anchor scale)."""
    boxes, names, labels = load_boxes(ann_file)
    rep: dict[str, Any] = {
        "ann_file": str(ann_file),
        "n_boxes": int(len(boxes)),
        "sizes": size_percentiles(boxes, labels, names),
        "configs": [],
    }
    for c in configs:
        setup = config_box_setup(c)
        res = analyze_config(setup, boxes, labels, names, image_hw)
        if setup["kind"] == "anchor":
            res["suggestion"] = suggest_anchor_scale(setup, boxes, image_hw)
        rep["configs"].append(res)
    return rep
