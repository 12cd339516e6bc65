"""Small synthetic ground truth and per-model predictions for the ensemble run/tune tests.

Truth: non-overlapping elliptical cells on small images, one cell type per image. Models: noisy copies of the
truth (shifted, dilated/eroded masks, jittered boxes, some cells missed, low-scoring spurious detections), one of
them box-only and one with a semantic foreground map, like YOLOX / Mask R-CNN / UPerNet.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from celldata import CLASSES
from celldata.instances import InstanceMasks
from ensemble.predictions import ImagePredictions, save_predictions

H, W = 96, 128


def make_truth(n_images: int, seed: int = 0) -> tuple[dict[str, InstanceMasks], dict[str, str]]:
    """Truth masks and cell types of ``n_images`` images."""
    rng = np.random.default_rng(seed)
    truth, types = {}, {}
    for k in range(n_images):
        image_id = f"img{k:02d}"
        label = np.zeros((H, W), dtype=np.int32)
        n = 0
        for _ in range(60):
            cy, cx = rng.uniform(8, H - 8), rng.uniform(8, W - 8)
            ry, rx = rng.uniform(3, 8), rng.uniform(3, 9)
            m = np.zeros((H, W), dtype=np.uint8)
            cv2.ellipse(m, (int(cx), int(cy)), (int(rx), int(ry)), rng.uniform(0, 180), 0, 360, 1, -1)
            m = m.astype(bool)
            if (label[m] > 0).any():
                continue
            n += 1
            label[m] = n
            if n >= 12:
                break
        truth[image_id], _ = InstanceMasks.from_label_image(label)
        types[image_id] = CLASSES[k % len(CLASSES)]
    return truth, types


def _noisy(mask: np.ndarray, rng: np.random.Generator, quality: float) -> np.ndarray:
    m = mask.astype(np.uint8)
    if rng.random() > quality:
        op = cv2.dilate if rng.random() < 0.5 else cv2.erode
        m = op(m, np.ones((3, 3), np.uint8))
    dy, dx = rng.integers(-1, 2, size=2) if rng.random() > quality else (0, 0)
    return np.roll(np.roll(m, dy, axis=0), dx, axis=1).astype(bool)


def make_model(
    truth: dict[str, InstanceMasks],
    types: dict[str, str],
    seed: int,
    quality: float = 0.7,
    masks: bool = True,
    semantic: bool = False,
    n_spurious: int = 3,
) -> list[ImagePredictions]:
    """One model's predictions of every truth image."""
    rng = np.random.default_rng(seed)
    out = []
    for image_id, t in truth.items():
        label = CLASSES.index(types[image_id])
        frames, scores = [], []
        for i in range(len(t)):
            if rng.random() > 0.6 + 0.4 * quality:
                continue  # missed
            frames.append(_noisy(t.mask(i), rng, quality))
            scores.append(rng.uniform(0.5, 1.0))
        for _ in range(n_spurious):
            m = np.zeros((H, W), dtype=np.uint8)
            cv2.circle(
                m, (int(rng.integers(5, W - 5)), int(rng.integers(5, H - 5))), int(rng.integers(2, 5)), 1, -1
            )
            frames.append(m.astype(bool))
            scores.append(rng.uniform(0.05, 0.45))
        inst = InstanceMasks.from_full(np.asarray(frames, dtype=bool).reshape(-1, H, W))
        tb = inst.tight_boxes().astype(np.float32)
        boxes = np.clip(tb + rng.normal(0, 0.5, tb.shape).astype(np.float32), 0, [W, H, W, H])
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2])
        sem = None
        if semantic:
            fg = np.zeros((H, W), dtype=np.float32)
            for i in range(len(t)):
                fg[t.mask(i)] = 0.9
            sem = np.clip(fg + rng.uniform(0, 0.1, fg.shape).astype(np.float32), 0, 1)
        out.append(
            ImagePredictions(
                image_id,
                H,
                W,
                boxes,
                np.asarray(scores, dtype=np.float32),
                np.full(len(scores), label, dtype=np.int64),
                inst if masks else None,
                sem,
            )
        )
    return out


def write_truth_csv(path: Path, truth: dict[str, InstanceMasks], types: dict[str, str]) -> Path:
    """Ground truth in the train.csv format."""
    lines = ["id,annotation,width,height,cell_type,plate_time,sample_date,sample_id,elapsed_timedelta"]
    for k, (image_id, t) in enumerate(truth.items()):
        for rle in t.to_kaggle_rles():  # two images per sample (time-lapse frames of one well)
            lines.append(f"{image_id},{rle},{W},{H},{types[image_id]},,,s{k // 2},")
    path.write_text("\n".join(lines) + "\n")
    return path


def write_models(tmp: Path, truth: dict[str, InstanceMasks], types: dict[str, str]) -> list[Path]:
    """Three prediction files: box-only 'yolox', masked 'maskrcnn', masked + semantic 'upernet'."""
    specs = [
        ("yolox", dict(seed=1, quality=0.8, masks=False)),
        ("maskrcnn", dict(seed=2, quality=0.75)),
        ("upernet", dict(seed=3, quality=0.5, semantic=True, n_spurious=5)),
    ]
    paths = []
    for name, kw in specs:
        path = tmp / f"{name}.npz"
        save_predictions(path, make_model(truth, types, **kw), meta={"model": name})
        paths.append(path)
    return paths
