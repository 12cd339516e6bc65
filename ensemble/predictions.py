"""Per-model prediction files: what ``tools/infer.py`` writes and ``ensemble/run.py`` reads.

One file holds one model's predictions for a set of images (:class:`ImagePredictions` per image: boxes, scores,
labels, optional instance masks with optional per-pixel mask probabilities ("soft masks"), optional semantic
foreground probability). It is a NumPy ``.npz`` archive (zip, deflate-compressed, loaded with
``allow_pickle=False``: no pickle anywhere) with these members::

    format            str scalar   "sartorius-predictions/2"
    meta_json         str scalar   JSON object given as ``meta`` (model name, config, checkpoint, ...)
    classes           str (C,)     class names, label i is classes[i]; must equal ensemble.CLASSES
    image_ids         str (I,)     image ids, unique
    sizes             int32 (I, 2) (height, width) of each image
    det_offsets       int64 (I+1,) detections of image i are rows det_offsets[i]:det_offsets[i+1] below
    boxes             float32 (N, 4) x1, y1, x2, y2 in pixels, 0 <= x1 <= x2 <= width, same for y
    scores            float32 (N,)   finite
    labels            int64 (N,)     0 <= label < C
    has_masks         bool (I,)    whether image i carries instance masks (then one per detection)
    mask_boxes        int32 (N, 4) crop window x0, y0, x1, y1 (exclusive) of each mask (zeros where no masks)
    mask_bits         uint8 (B,)   np.packbits of the concatenation of every mask crop flattened row-major,
                                   in detection order over images with masks; crop sizes follow from mask_boxes
    has_semantic      bool (I,)    whether image i carries a semantic foreground map
    semantic_q        uint8 (P,)   concatenated row-major maps of the images with has_semantic, quantized as
                                   q = round(255 * p); loading returns p = q / 255 (float32, error <= 1/510)
    has_mask_probs    bool (I,)    whether image i carries mask probabilities (only where has_masks)
    mask_q            uint8 (Q,)   the mask probability crops of the images with has_mask_probs, same windows
                                   and order as mask_bits, quantized as q = round(255 * p) (error <= 1/510)

Version 1 files (``"sartorius-predictions/1"``, written before soft masks existed) have no ``has_mask_probs`` /
``mask_q`` members; they still load, with ``mask_probs=None`` everywhere.

A dense image with 800 cells costs ~0.1 MB of mask bits (vs 290 MB as full-frame bool masks), and the quantized
semantic map ~0.1 MB compressed. Writing is atomic (temp file in the target directory, then ``os.replace``).
Loading validates everything above and raises ``ValueError`` naming the file and the image id.
"""

from __future__ import annotations

import json
import os
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from celldata.fileio import atomic_open
from celldata.instances import InstanceMasks

from . import CLASSES

__all__ = [
    "FORMAT",
    "READABLE_FORMATS",
    "ImagePredictions",
    "load_predictions",
    "quantize_probs",
    "save_predictions",
]

FORMAT = "sartorius-predictions/2"
READABLE_FORMATS: tuple[str, ...] = ("sartorius-predictions/1", FORMAT)
"""Format versions :func:`load_predictions` reads (version 1: no mask probabilities)."""

_KEYS = (
    "format",
    "meta_json",
    "classes",
    "image_ids",
    "sizes",
    "det_offsets",
    "boxes",
    "scores",
    "labels",
    "has_masks",
    "mask_boxes",
    "mask_bits",
    "has_semantic",
    "semantic_q",
)
_KEYS_V2 = ("has_mask_probs", "mask_q")

_BOX_TOL = 1e-3  # pixels of slack for float boxes at the image border


@dataclass
class ImagePredictions:
    """One model's predictions for one image.

    Attributes:
        image_id: image id (Kaggle id).
        height: image height H in pixels.
        width: image width W in pixels.
        boxes: float32 ``(N, 4)`` ``(x1, y1, x2, y2)`` in pixels.
        scores: float32 ``(N,)`` confidences.
        labels: int64 ``(N,)`` 0-based indices into ``ensemble.CLASSES``.
        masks: N instance masks (:class:`InstanceMasks` of an HxW image), or None for a box-only model.
        semantic: float32 ``(H, W)`` foreground probability in ``[0, 1]``, or None.
        mask_probs: soft masks: N float32 crops in ``[0, 1]``, crop i of shape ``masks.crops[i].shape`` in the
            same window ``masks.boxes[i]`` (the probability of each pixel of the window to belong to instance i,
            e.g. Mask R-CNN's mask head sigmoid pasted into the box), or None. ``masks`` then holds the binary
            masks (probability thresholded by the model). Stored quantized to ``round(255 p)``.

    Construction coerces dtypes and validates (``ValueError`` naming the image id).
    """

    image_id: str
    height: int
    width: int
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    masks: InstanceMasks | None = None
    semantic: np.ndarray | None = None
    mask_probs: list[np.ndarray] | None = None

    def __post_init__(self) -> None:
        self.image_id = str(self.image_id)
        self.height = int(self.height)
        self.width = int(self.width)
        boxes = np.asarray(self.boxes, dtype=np.float32)
        self.boxes = boxes.reshape(0, 4) if boxes.size == 0 else boxes
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        labels = np.asarray(self.labels)
        if labels.size and labels.dtype.kind == "f":
            if not np.isfinite(labels).all() or (labels != np.round(labels)).any():
                raise ValueError(f"image {self.image_id}: labels must be integers")
        self.labels = labels.astype(np.int64).reshape(-1)
        if self.semantic is not None:
            self.semantic = np.asarray(self.semantic, dtype=np.float32)
        if self.mask_probs is not None:
            self.mask_probs = [np.asarray(c, dtype=np.float32) for c in self.mask_probs]
        self.validate()

    def __len__(self) -> int:
        return len(self.scores)

    def validate(self) -> None:
        """Checks shapes, ranges and finiteness.

        Raises:
            ValueError: naming the image id and the offending field / instance.
        """
        p = f"image {self.image_id}"
        h, w = self.height, self.width
        if h <= 0 or w <= 0:
            raise ValueError(f"{p}: image size must be positive, got {h}x{w}")
        n = len(self.scores)
        if self.boxes.ndim != 2 or self.boxes.shape[1] != 4:
            raise ValueError(f"{p}: boxes must have shape (N, 4), got {self.boxes.shape}")
        if len(self.boxes) != n or len(self.labels) != n:
            raise ValueError(
                f"{p}: {len(self.boxes)} boxes, {n} scores and {len(self.labels)} labels (must be equal)"
            )
        if n:
            bad = ~np.isfinite(self.scores)
            if bad.any():
                raise ValueError(f"{p}: detection {int(np.flatnonzero(bad)[0])} has a non-finite score")
            bad = (self.labels < 0) | (self.labels >= len(CLASSES))
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise ValueError(f"{p}: detection {i} has label {self.labels[i]} outside [0, {len(CLASSES)})")
            b = self.boxes
            bad = (
                ~np.isfinite(b).all(axis=1)
                | (b[:, 0] < -_BOX_TOL)
                | (b[:, 1] < -_BOX_TOL)
                | (b[:, 2] > w + _BOX_TOL)
                | (b[:, 3] > h + _BOX_TOL)
                | (b[:, 2] < b[:, 0])
                | (b[:, 3] < b[:, 1])
            )
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise ValueError(
                    f"{p}: detection {i} box {b[i].tolist()} is not an x1<=x2, y1<=y2 box inside the {h}x{w} image"
                )
        if self.masks is not None:
            if not isinstance(self.masks, InstanceMasks):
                raise ValueError(f"{p}: masks must be InstanceMasks or None, got {type(self.masks).__name__}")
            if (self.masks.height, self.masks.width) != (h, w):
                raise ValueError(
                    f"{p}: masks are for a {self.masks.height}x{self.masks.width} image, not {h}x{w}"
                )
            if len(self.masks) != n:
                raise ValueError(f"{p}: {len(self.masks)} masks for {n} detections")
        if self.semantic is not None:
            s = self.semantic
            if s.shape != (h, w):
                raise ValueError(f"{p}: semantic map has shape {s.shape}, expected {(h, w)}")
            if not np.isfinite(s).all() or s.min(initial=0.0) < 0.0 or s.max(initial=0.0) > 1.0:
                raise ValueError(f"{p}: semantic map must hold finite probabilities in [0, 1]")
        if self.mask_probs is not None:
            if self.masks is None:
                raise ValueError(f"{p}: mask_probs need masks (the binary masks in the same windows)")
            if len(self.mask_probs) != len(self.masks):
                raise ValueError(
                    f"{p}: {len(self.mask_probs)} mask probability crops for {len(self.masks)} masks"
                )
            for i, (c, m) in enumerate(zip(self.mask_probs, self.masks.crops)):
                if c.shape != m.shape:
                    raise ValueError(
                        f"{p}: mask probability crop {i} has shape {c.shape}, its mask {m.shape}"
                    )
                if c.size and not (np.isfinite(c).all() and c.min() >= 0.0 and c.max() <= 1.0):
                    raise ValueError(
                        f"{p}: mask probability crop {i} must hold finite probabilities in [0, 1]"
                    )


def quantize_probs(p: np.ndarray) -> np.ndarray:
    """Probabilities in ``[0, 1]`` as uint8 ``q = round(255 p)`` (same shape); ``q / 255`` is within 1/510 of p."""
    return np.rint(np.asarray(p, dtype=np.float32) * np.float32(255.0)).astype(np.uint8)


def _str_array(values: Sequence[str]) -> np.ndarray:
    return np.array([str(v) for v in values], dtype=np.str_) if len(values) else np.zeros(0, dtype="<U1")


def save_predictions(
    path: str | os.PathLike, preds: Sequence[ImagePredictions], meta: dict | None = None
) -> None:
    """Writes one model's predictions atomically in the format of the module docstring.

    Args:
        path: destination (conventionally ``*.npz``); parent directories are created.
        preds: one :class:`ImagePredictions` per image (unique image ids).
        meta: JSON-serializable dict stored with the predictions (e.g. model name, config, checkpoint).

    Raises:
        ValueError: on duplicate image ids, invalid predictions or non-JSON ``meta``.
    """
    path = Path(path)
    ids = [p.image_id for p in preds]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"{path}: image id {dup} appears more than once")
    try:
        meta_json = json.dumps({} if meta is None else meta, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: meta is not JSON-serializable: {e}") from None
    for p in preds:
        p.validate()

    n_per = [len(p) for p in preds]
    det_offsets = np.concatenate([[0], np.cumsum(n_per)]).astype(np.int64)
    n_total = int(det_offsets[-1])
    boxes = np.concatenate([p.boxes for p in preds]) if preds else np.zeros((0, 4), np.float32)
    mask_boxes = np.zeros((n_total, 4), dtype=np.int32)
    flat_crops = []
    flat_q = []
    sem = []
    for k, p in enumerate(preds):
        if p.masks is not None and len(p):
            mask_boxes[det_offsets[k] : det_offsets[k + 1]] = p.masks.boxes
            flat_crops.extend(c.ravel() for c in p.masks.crops)
            if p.mask_probs is not None:
                flat_q.extend(quantize_probs(c.ravel()) for c in p.mask_probs)
        if p.semantic is not None:
            sem.append(quantize_probs(p.semantic.ravel()))
    bits = np.concatenate(flat_crops) if flat_crops else np.zeros(0, dtype=bool)
    arrays = {
        "format": np.array(FORMAT),
        "meta_json": np.array(meta_json),
        "classes": _str_array(CLASSES),
        "image_ids": _str_array(ids),
        "sizes": np.array([[p.height, p.width] for p in preds], dtype=np.int32).reshape(-1, 2),
        "det_offsets": det_offsets,
        "boxes": boxes.astype(np.float32).reshape(-1, 4),
        "scores": np.concatenate([p.scores for p in preds]).astype(np.float32)
        if preds
        else np.zeros(0, np.float32),
        "labels": np.concatenate([p.labels for p in preds]).astype(np.int64)
        if preds
        else np.zeros(0, np.int64),
        "has_masks": np.array([p.masks is not None for p in preds], dtype=bool),
        "mask_boxes": mask_boxes,
        "mask_bits": np.packbits(bits),
        "has_semantic": np.array([p.semantic is not None for p in preds], dtype=bool),
        "semantic_q": np.concatenate(sem) if sem else np.zeros(0, dtype=np.uint8),
        "has_mask_probs": np.array([p.mask_probs is not None for p in preds], dtype=bool),
        "mask_q": np.concatenate(flat_q) if flat_q else np.zeros(0, dtype=np.uint8),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as f:
        np.savez_compressed(f, **arrays)


def _expect(cond: bool, path: Path, msg: str) -> None:
    if not cond:
        raise ValueError(f"{path}: {msg}")


def _read_members(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a prediction file (``_KEYS``, plus ``_KEYS_V2`` for format version 2)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in _KEYS if k not in z.files]
            _expect(not missing, path, f"missing member(s) {missing} (not a {FORMAT} file?)")
            a = {k: z[k] for k in _KEYS}
            fmt = a["format"]
            _expect(
                fmt.shape == () and str(fmt) in READABLE_FORMATS,
                path,
                f"format is not one of {list(READABLE_FORMATS)} (got {str(fmt)!r})",
            )
            if str(fmt) != READABLE_FORMATS[0]:
                missing = [k for k in _KEYS_V2 if k not in z.files]
                _expect(not missing, path, f"missing member(s) {missing} of format {str(fmt)!r}")
                a.update({k: z[k] for k in _KEYS_V2})
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, KeyError) as e:
        raise ValueError(f"{path}: not a readable .npz prediction file ({e})") from None
    except ValueError as e:
        if str(e).startswith(str(path)):
            raise
        raise ValueError(f"{path}: unreadable prediction file ({e})") from None
    return a


def _read_meta(path: Path, a: dict[str, np.ndarray]) -> dict:
    """The meta dict (``meta_json``), after checking the file's class names."""
    try:
        meta = json.loads(str(a["meta_json"]))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: meta_json is not valid JSON ({e})") from None
    _expect(isinstance(meta, dict), path, "meta_json must hold a JSON object")
    classes = tuple(str(c) for c in a["classes"].reshape(-1))
    _expect(classes == CLASSES, path, f"classes {classes} differ from ensemble.CLASSES {CLASSES}")
    return meta


def _check_arrays(path: Path, a: dict[str, np.ndarray]) -> list[str]:
    """Shapes and types of every array (version-1 files get empty soft masks); returns the image ids."""
    ids = [str(i) for i in a["image_ids"].reshape(-1)]
    n_img = len(ids)
    _expect(len(set(ids)) == n_img, path, "duplicate image ids")
    sizes, det = a["sizes"], a["det_offsets"]
    _expect(sizes.shape == (n_img, 2) and sizes.dtype.kind in "iu", path, f"sizes must be int ({n_img}, 2)")
    _expect((sizes > 0).all(), path, "image sizes must be positive")
    _expect(
        det.shape == (n_img + 1,) and det.dtype.kind in "iu", path, f"det_offsets must be int ({n_img + 1},)"
    )
    _expect(
        n_img == 0 or (det[0] == 0 and (np.diff(det) >= 0).all()),
        path,
        "det_offsets must start at 0 and grow",
    )
    n_total = int(det[-1]) if n_img else 0
    for key, shape in (("boxes", (n_total, 4)), ("scores", (n_total,)), ("labels", (n_total,))):
        _expect(a[key].shape == shape, path, f"{key} has shape {a[key].shape}, det_offsets say {shape}")
    _expect(a["labels"].dtype.kind in "iu", path, "labels must be integers")
    _expect(a["mask_boxes"].shape == (n_total, 4), path, f"mask_boxes must have shape {(n_total, 4)}")
    for key in ("has_masks", "has_semantic"):
        _expect(a[key].shape == (n_img,) and a[key].dtype == bool, path, f"{key} must be bool ({n_img},)")
    _expect(
        a["mask_bits"].dtype == np.uint8 and a["mask_bits"].ndim == 1, path, "mask_bits must be uint8 (B,)"
    )
    _expect(
        a["semantic_q"].dtype == np.uint8 and a["semantic_q"].ndim == 1, path, "semantic_q must be uint8 (P,)"
    )
    if "has_mask_probs" not in a:  # version 1
        a["has_mask_probs"] = np.zeros(n_img, dtype=bool)
        a["mask_q"] = np.zeros(0, dtype=np.uint8)
    _expect(
        a["has_mask_probs"].shape == (n_img,) and a["has_mask_probs"].dtype == bool,
        path,
        f"has_mask_probs must be bool ({n_img},)",
    )
    _expect(
        not (a["has_mask_probs"] & ~a["has_masks"]).any(),
        path,
        "has_mask_probs set for an image without masks",
    )
    _expect(a["mask_q"].dtype == np.uint8 and a["mask_q"].ndim == 1, path, "mask_q must be uint8 (Q,)")
    return ids


@dataclass
class _Layout:
    """The decoded buffers of a prediction file and the crop sizes that slice them."""

    mask_boxes: np.ndarray  # int64 (N, 4)
    crop_h: np.ndarray  # int64 (N,)
    crop_w: np.ndarray  # int64 (N,)
    bits: np.ndarray  # bool (sum of the crop sizes of the images with masks,)
    probs: np.ndarray  # float32 (sum of the crop sizes of the images with soft masks,)


def _instances_of(det: np.ndarray, flags: np.ndarray, n_total: int) -> np.ndarray:
    """bool ``(n_total,)``: the detections of the images whose ``flags`` are set."""
    out = np.zeros(n_total, dtype=bool)
    for k in np.flatnonzero(flags):
        out[det[k] : det[k + 1]] = True
    return out


def _decode_layout(path: Path, a: dict[str, np.ndarray], ids: Sequence[str]) -> _Layout:
    """Checks the crop windows and buffer lengths, and unpacks the mask bits and soft-mask values."""
    det = a["det_offsets"]
    n_total = int(det[-1]) if len(ids) else 0
    mb = a["mask_boxes"].astype(np.int64)
    crop_h = mb[:, 3] - mb[:, 1]
    crop_w = mb[:, 2] - mb[:, 0]
    with_masks = _instances_of(det, a["has_masks"], n_total)
    bad = with_masks & ((crop_h < 0) | (crop_w < 0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        k = int(np.searchsorted(det, i, side="right") - 1)
        raise ValueError(
            f"{path}: image {ids[k]}: mask {i - det[k]} has a negative crop window {mb[i].tolist()}"
        )
    n_bits = int(np.where(with_masks, crop_h * crop_w, 0).sum())
    _expect(
        len(a["mask_bits"]) == (n_bits + 7) // 8,
        path,
        f"mask_bits holds {len(a['mask_bits'])} bytes, mask_boxes need {(n_bits + 7) // 8}",
    )
    bits = np.unpackbits(a["mask_bits"], count=n_bits).view(bool)
    with_probs = _instances_of(det, a["has_mask_probs"], n_total)
    n_q = int(np.where(with_probs, crop_h * crop_w, 0).sum())
    _expect(len(a["mask_q"]) == n_q, path, f"mask_q holds {len(a['mask_q'])} values, mask_boxes need {n_q}")
    probs = a["mask_q"].astype(np.float32) / np.float32(255.0)
    sizes = a["sizes"]
    sem_px = int(sum(int(sizes[k, 0]) * int(sizes[k, 1]) for k in np.flatnonzero(a["has_semantic"])))
    _expect(
        len(a["semantic_q"]) == sem_px,
        path,
        f"semantic_q holds {len(a['semantic_q'])} values, sizes need {sem_px}",
    )
    return _Layout(mb, crop_h, crop_w, bits, probs)


def _build_images(
    path: Path, a: dict[str, np.ndarray], ids: Sequence[str], lay: _Layout
) -> dict[str, ImagePredictions]:
    """One :class:`ImagePredictions` per image, its masks, soft masks and semantic map sliced off the buffers."""
    sizes, det = a["sizes"], a["det_offsets"]
    out: dict[str, ImagePredictions] = {}
    bit_pos = 0
    q_pos = 0
    sem_pos = 0
    for k, image_id in enumerate(ids):
        h, w = int(sizes[k, 0]), int(sizes[k, 1])
        s, e = int(det[k]), int(det[k + 1])
        masks = None
        try:
            if a["has_masks"][k]:
                offs = np.zeros(e - s + 1, dtype=np.int64)
                np.cumsum(lay.crop_h[s:e] * lay.crop_w[s:e], out=offs[1:])
                # packed: the crops are views of the file's buffer, and fusion, metric and RLE use it as it is
                masks = InstanceMasks.from_packed(
                    h, w, lay.mask_boxes[s:e], lay.bits[bit_pos : bit_pos + offs[-1]], offs
                )
                bit_pos += int(offs[-1])
            mask_probs = None
            if a["has_mask_probs"][k]:
                mask_probs = []
                for i in range(s, e):
                    ch, cw = int(lay.crop_h[i]), int(lay.crop_w[i])
                    mask_probs.append(lay.probs[q_pos : q_pos + ch * cw].reshape(ch, cw))
                    q_pos += ch * cw
            semantic = None
            if a["has_semantic"][k]:
                q = a["semantic_q"][sem_pos : sem_pos + h * w].reshape(h, w)
                semantic = q.astype(np.float32) / np.float32(255.0)
                sem_pos += h * w
            out[image_id] = ImagePredictions(
                image_id,
                h,
                w,
                a["boxes"][s:e],
                a["scores"][s:e],
                a["labels"][s:e],
                masks,
                semantic,
                mask_probs,
            )
        except ValueError as err:
            msg = str(err)
            if not msg.startswith(f"image {image_id}"):
                msg = f"image {image_id}: {msg}"
            raise ValueError(f"{path}: {msg}") from None
    return out


def load_predictions(path: str | os.PathLike) -> tuple[dict[str, ImagePredictions], dict]:
    """Reads and validates a prediction file written by :func:`save_predictions`.

    Args:
        path: the ``.npz`` file.

    Returns:
        ``(predictions, meta)``: image id -> :class:`ImagePredictions` (file order) and the stored meta dict.
        Masks are packed (``InstanceMasks.from_packed``: crops are views into one unpacked buffer); semantic maps
        are float32 ``q / 255``.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if the file is not a valid prediction file; the message names the file and, for
            per-image problems, the image id.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prediction file not found: {path}")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not a readable .npz prediction file (not a zip archive)")
    a = _read_members(path)
    meta = _read_meta(path, a)
    ids = _check_arrays(path, a)
    layout = _decode_layout(path, a, ids)
    return _build_images(path, a, ids, layout), meta
