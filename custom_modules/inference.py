"""Inference of a trained mmdet detector or mmseg segmentor into ensemble prediction files.

Used by ``tools/infer.py``. For every image the model's test pipeline (from ``cfg.test_dataloader``, with the
file loader replaced by an in-memory one and annotation loading removed) prepares the input, and
``model.test_step`` predicts. Results become :class:`ensemble.predictions.ImagePredictions`:

* detectors: boxes (xyxy pixels of the original image), scores, 0-based labels, and for mask models the masks as
  :class:`~celldata.instances.InstanceMasks` crops (Mask R-CNN returns full-frame bool masks; they are cut to
  their tight boxes on the device). Box-only detectors (YOLOX) get ``masks=None``.
* segmentors: ``semantic`` = foreground probability ``1 - softmax(logits)[background]`` (``sigmoid`` for a
  single-channel head) at the original image size; no instances.

Flip TTA (``tta=True``): the image is also predicted flipped horizontally and vertically; each result is mapped
back (boxes: ``x -> W - x`` with x1/x2 swapped, resp. y; masks: crops mirrored and windows mirrored) and the
three are merged. Detectors with masks: :func:`ensemble.masks.fuse_image` with the three passes as equal-weight
"models" (WBF clusters at IoU 0.55, ``conf_type='avg'`` so a detection seen in fewer passes loses score,
per-pixel majority vote of the cluster's masks, overlap removal that drops only emptied instances). Box-only
detectors: WBF of the boxes. Segmentors: mean of the three foreground maps.

``mask_head_on``: with a Mask R-CNN-style two-stage model, masks are predicted for *given* boxes (e.g. the WBF
fused boxes of the ensemble) by running the RoI mask head on them, the winners' trick that lets box-only models
contribute masks.
"""

from __future__ import annotations

import copy
import json
import os
import os.path as osp
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from celldata import CLASSES
from celldata.instances import InstanceMasks
from custom_modules.conversion import masks_to_instances, to_numpy
from custom_modules.runner_utils import load_config, register_library
from ensemble.predictions import ImagePredictions, load_predictions, save_predictions

__all__ = [
    "ImageItem",
    "FLIP_DIRECTIONS",
    "list_images",
    "flip_image",
    "flip_boxes",
    "flip_instance_masks",
    "flip_predictions",
    "merge_tta",
    "InferenceModel",
    "load_model",
    "run_inference",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
FLIP_DIRECTIONS = ("horizontal", "vertical")


@dataclass(frozen=True)
class ImageItem:
    """One image to predict: its id (Kaggle id) and file path."""

    image_id: str
    path: str


# ----------------------------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------------------------
def list_images(
    images_dir: str | os.PathLike | None = None,
    ann_file: str | os.PathLike | None = None,
    data_root: str | os.PathLike | None = None,
) -> list[ImageItem]:
    """Images of a folder (id = file stem, sorted) or of a COCO json (id = ``kaggle_id``/``image_id``/stem).

    Args:
        images_dir: Folder with images (png, jpg, tif, bmp).
        ann_file: COCO json whose ``images[*].file_name`` are relative to ``data_root``.
        data_root: Root for the json's file names (default: the json's parent's parent, i.e. the data root of
            ``<root>/annotations/x.json``).

    Returns:
        The images, in a deterministic order.

    Raises:
        ValueError: If both or neither source is given, or the source holds no images / duplicate ids.
        FileNotFoundError: If the folder, json or a listed image does not exist.
    """
    if (images_dir is None) == (ann_file is None):
        raise ValueError("give exactly one of images_dir (--images) and ann_file (--ann-file)")
    items: list[ImageItem] = []
    if images_dir is not None:
        d = Path(images_dir)
        if not d.is_dir():
            raise FileNotFoundError(f"image folder not found: {d}")
        for p in sorted(d.iterdir()):
            if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file():
                items.append(ImageItem(p.stem, str(p)))
        if not items:
            raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {d}")
    else:
        a = Path(ann_file)
        if not a.is_file():
            raise FileNotFoundError(f"annotation file not found: {a}")
        with open(a) as f:
            try:
                coco = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{a}: not valid JSON ({e})") from None
        root = Path(data_root) if data_root is not None else a.resolve().parent.parent
        images = coco.get("images") if isinstance(coco, dict) else None
        if not images:
            raise ValueError(f"{a}: no 'images' entries")
        for k, img in enumerate(images):
            if "file_name" not in img:
                raise ValueError(f"{a}: images[{k}] has no file_name")
            path = root / img["file_name"]
            if not path.is_file():
                raise FileNotFoundError(f"{a}: images[{k}] file not found: {path}")
            iid = img.get("kaggle_id", img.get("image_id"))
            items.append(ImageItem(str(iid) if iid is not None else path.stem, str(path)))
    ids = [it.image_id for it in items]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"duplicate image ids: {', '.join(dup[:5])}")
    return items


def read_image(path: str) -> np.ndarray:
    """An image as uint8 BGR (H, W, 3); grayscale files are replicated into 3 channels (as LoadImageFromFile).

    Raises:
        ValueError: If OpenCV cannot decode the file.
    """
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"cannot read image: {path}")
    return img


# ----------------------------------------------------------------------------------------------------------------
# flips
# ----------------------------------------------------------------------------------------------------------------
def _check_direction(direction: str) -> None:
    if direction not in FLIP_DIRECTIONS:
        raise ValueError(f"flip direction must be one of {FLIP_DIRECTIONS}, got {direction!r}")


def flip_image(img: np.ndarray, direction: str) -> np.ndarray:
    """Mirror an (H, W, ...) image horizontally (left-right) or vertically (top-bottom); returns a copy."""
    _check_direction(direction)
    return np.ascontiguousarray(img[:, ::-1] if direction == "horizontal" else img[::-1])


def flip_boxes(boxes: np.ndarray, direction: str, height: int, width: int) -> np.ndarray:
    """Mirror xyxy pixel boxes; flipping twice gives the input back.

    Horizontal: ``(x1, y1, x2, y2) -> (W - x2, y1, W - x1, y2)``; vertical: ``(x1, H - y2, x2, H - y1)``.

    Args:
        boxes: float (N, 4) xyxy in pixels (continuous coordinates, 0..W).
        direction: ``'horizontal'`` or ``'vertical'``.
        height: Image height H.
        width: Image width W.

    Returns:
        float32 (N, 4) mirrored boxes.
    """
    _check_direction(direction)
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    out = b.copy()
    if direction == "horizontal":
        out[:, 0] = width - b[:, 2]
        out[:, 2] = width - b[:, 0]
    else:
        out[:, 1] = height - b[:, 3]
        out[:, 3] = height - b[:, 1]
    return out


def flip_instance_masks(masks: InstanceMasks, direction: str) -> InstanceMasks:
    """Mirror instance masks (crops mirrored, integer windows mirrored: ``x0 -> W - x1``, ``x1 -> W - x0``)."""
    _check_direction(direction)
    b = masks.boxes.copy()
    if direction == "horizontal":
        b[:, 0], b[:, 2] = masks.width - masks.boxes[:, 2], masks.width - masks.boxes[:, 0]
        crops = [np.ascontiguousarray(c[:, ::-1]) for c in masks.crops]
    else:
        b[:, 1], b[:, 3] = masks.height - masks.boxes[:, 3], masks.height - masks.boxes[:, 1]
        crops = [np.ascontiguousarray(c[::-1]) for c in masks.crops]
    return InstanceMasks(masks.height, masks.width, b, crops)


def flip_predictions(pred: ImagePredictions, direction: str) -> ImagePredictions:
    """Mirror every spatial field of a prediction (boxes, masks, semantic map)."""
    h, w = pred.height, pred.width
    boxes = np.clip(flip_boxes(pred.boxes, direction, h, w), 0, [w, h, w, h]).astype(np.float32)
    return ImagePredictions(
        pred.image_id,
        h,
        w,
        boxes,
        pred.scores,
        pred.labels,
        None if pred.masks is None else flip_instance_masks(pred.masks, direction),
        None if pred.semantic is None else flip_image(pred.semantic, direction),
    )


def merge_tta(preds: Sequence[ImagePredictions], iou_thr: float = 0.55) -> ImagePredictions:
    """Merge the (already un-flipped) predictions of one image's TTA passes (module docstring).

    Args:
        preds: One prediction per pass, all of the same image and of the same kind.
        iou_thr: WBF box match threshold.

    Returns:
        The merged prediction.
    """
    if not preds:
        raise ValueError("merge_tta: no predictions")
    if len(preds) == 1:
        return preds[0]
    p0 = preds[0]
    semantic = None
    if p0.semantic is not None:
        semantic = np.mean([p.semantic for p in preds], axis=0).astype(np.float32)
    if all(len(p) == 0 for p in preds):
        return ImagePredictions(
            p0.image_id, p0.height, p0.width, np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64),
            None if p0.masks is None else InstanceMasks.empty(p0.height, p0.width), semantic,
        )  # fmt: skip
    if p0.masks is not None:
        from ensemble.masks import FusionParams, fuse_image

        params = FusionParams(iou_thr=iou_thr, conf_type="avg", vote_thr=0.5, max_lost_frac=1.0)
        fused = fuse_image(list(preds), [1.0] * len(preds), params)
        fused.semantic = semantic
        return fused
    from ensemble.boxes import denormalize_boxes, normalize_boxes, weighted_boxes_fusion
    from ensemble.masks import MIN_FUSED_SCORE

    h, w = p0.height, p0.width
    fb, fs, fl, _ = weighted_boxes_fusion(
        [normalize_boxes(p.boxes, h, w) for p in preds],
        [p.scores for p in preds],
        [p.labels for p in preds],
        iou_thr=iou_thr,
        skip_box_thr=MIN_FUSED_SCORE,  # zero-score boxes would fuse to 0/0 = NaN
        conf_type="avg",
    )
    boxes = np.clip(denormalize_boxes(fb, h, w), 0, [w, h, w, h])
    return ImagePredictions(p0.image_id, h, w, boxes, fs, fl.astype(np.int64), None, semantic)


def limit_predictions(pred: ImagePredictions, score_thr: float, max_per_img: int) -> ImagePredictions:
    """Keep detections with ``score >= score_thr``, at most ``max_per_img`` of them, by decreasing score."""
    if len(pred) == 0:
        return pred
    order = np.argsort(-pred.scores, kind="stable")
    order = order[pred.scores[order] >= score_thr][: max(0, int(max_per_img))]
    return ImagePredictions(
        pred.image_id,
        pred.height,
        pred.width,
        pred.boxes[order],
        pred.scores[order],
        pred.labels[order],
        None if pred.masks is None else pred.masks.subset(order),
        pred.semantic,
    )


# ----------------------------------------------------------------------------------------------------------------
# model
# ----------------------------------------------------------------------------------------------------------------
def _set_test_thresholds(cfg, score_thr: float, max_per_img: int) -> None:
    """Let the model's own post-processing keep at least what the caller asks for."""
    tc = cfg.model.get("test_cfg")
    if not tc:
        return
    target = tc.get("rcnn") if tc.get("rcnn") is not None else tc
    if "score_thr" in target:
        target["score_thr"] = min(float(target["score_thr"]), float(score_thr))
    if "max_per_img" in target or target is tc.get("rcnn"):
        target["max_per_img"] = max(int(target.get("max_per_img") or 0), int(max_per_img))


def _inference_pipeline(cfg, library: str) -> list[dict]:
    """The config's test pipeline with an in-memory image loader and no annotation loading."""
    pipeline = copy.deepcopy(cfg.test_dataloader.dataset.get("pipeline"))
    if not pipeline:
        raise ValueError("config has no test_dataloader.dataset.pipeline")
    out = []
    for t in pipeline:
        kind = str(t.get("type", "")).split(".")[-1]
        if kind == "LoadAnnotations":
            continue
        if kind == "LoadImageFromFile":
            t = dict(type=f"{library}.LoadImageFromNDArray")
        if kind == "PackDetInputs":
            t = dict(t)
            t["meta_keys"] = tuple(
                k for k in t.get("meta_keys", ("img_id", "img_path", "ori_shape", "img_shape", "scale_factor"))
                if k not in ("instances", "kaggle_id", "cell_type")
            )  # fmt: skip
        out.append(t)
    return out


class InferenceModel:
    """A trained model with its test pipeline, predicting :class:`ImagePredictions` for single images.

    Args:
        model: The built mmdet/mmseg model (eval mode, on its device).
        cfg: Its config.
        library: ``'mmdet'`` or ``'mmseg'``.
    """

    def __init__(self, model: torch.nn.Module, cfg, library: str) -> None:
        from mmcv.transforms import Compose

        self.model = model
        self.cfg = cfg
        self.library = library
        self.pipeline = Compose(_inference_pipeline(cfg, library))

    @property
    def has_masks(self) -> bool:
        """Whether the detector predicts instance masks."""
        return bool(getattr(self.model, "with_mask", False)) or getattr(
            getattr(self.model, "roi_head", None), "with_mask", False
        )

    def _prepare(self, img: np.ndarray) -> dict:
        from mmengine.dataset import pseudo_collate

        data = self.pipeline(dict(img=img, img_id=0, img_path="", ori_shape=img.shape[:2]))
        return pseudo_collate([data])

    @torch.no_grad()
    def predict_sample(self, img: np.ndarray):
        """The raw data sample (mmdet ``DetDataSample`` / mmseg ``SegDataSample``) of one BGR image."""
        return self.model.test_step(self._prepare(img))[0]

    def to_predictions(self, sample, image_id: str, height: int, width: int) -> ImagePredictions:
        """Convert a raw data sample into :class:`ImagePredictions` (module docstring)."""
        if self.library == "mmseg":
            logits = sample.seg_logits.data.float()
            if logits.shape[0] == 1:
                fg = logits[0].sigmoid()
            else:
                fg = 1.0 - logits.softmax(dim=0)[0]
            fg = to_numpy(fg.clamp_(0.0, 1.0)).astype(np.float32)
            if fg.shape != (height, width):
                fg = cv2.resize(fg, (width, height), interpolation=cv2.INTER_LINEAR)
            return ImagePredictions(
                image_id, height, width, np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64), None,
                np.clip(fg, 0.0, 1.0),
            )  # fmt: skip
        inst = sample.pred_instances
        boxes = to_numpy(inst.bboxes).astype(np.float32).reshape(-1, 4)
        boxes = np.clip(boxes, 0, [width, height, width, height])
        scores = to_numpy(inst.scores).astype(np.float32)
        labels = to_numpy(inst.labels).astype(np.int64)
        masks = masks_to_instances(inst.masks, height, width) if "masks" in inst else None
        finite = np.isfinite(boxes).all(axis=1) & np.isfinite(scores)
        if not finite.all():
            # a diverged or barely trained model can emit NaN/inf boxes: they cannot be placed, so drop them
            warnings.warn(
                f"image {image_id}: dropped {int((~finite).sum())} detection(s) with non-finite box or score",
                stacklevel=2,
            )
            boxes, scores, labels = boxes[finite], scores[finite], labels[finite]
            masks = masks.subset(finite) if masks is not None else None
        return ImagePredictions(image_id, height, width, boxes, scores, labels, masks)

    def predict(self, img: np.ndarray, image_id: str, tta: bool = False) -> ImagePredictions:
        """Predict one BGR image (H, W, 3), optionally with flip TTA."""
        h, w = img.shape[:2]
        pred = self.to_predictions(self.predict_sample(img), image_id, h, w)
        if not tta:
            return pred
        passes = [pred]
        for d in FLIP_DIRECTIONS:
            p = self.to_predictions(self.predict_sample(flip_image(img, d)), image_id, h, w)
            passes.append(flip_predictions(p, d))
        return merge_tta(passes)

    @torch.no_grad()
    def predict_masks_on_boxes(self, img: np.ndarray, given: ImagePredictions) -> ImagePredictions:
        """Masks of a two-stage mask model for given boxes/labels (its RoI mask head run on them).

        Args:
            img: BGR image (H, W, 3).
            given: Boxes (xyxy pixels), scores and labels to keep; their masks are replaced.

        Returns:
            ``given`` with masks from this model.

        Raises:
            ValueError: If the model has no RoI mask head or the image size differs.
        """
        from mmengine.structures import InstanceData

        roi_head = getattr(self.model, "roi_head", None)
        if roi_head is None or not getattr(roi_head, "with_mask", False):
            raise ValueError("--mask-head-on needs a two-stage model with a mask head (e.g. Mask R-CNN)")
        h, w = img.shape[:2]
        if (given.height, given.width) != (h, w):
            raise ValueError(
                f"image {given.image_id}: boxes are for {given.height}x{given.width}, image is {h}x{w}"
            )
        if len(given) == 0:
            return ImagePredictions(
                given.image_id, h, w, given.boxes, given.scores, given.labels, InstanceMasks.empty(h, w),
                given.semantic,
            )  # fmt: skip
        data = self.model.data_preprocessor(self._prepare(img), False)
        inputs, samples = data["inputs"], data["data_samples"]
        meta = samples[0].metainfo
        feats = self.model.extract_feat(inputs)
        device = inputs.device
        sf = torch.as_tensor(meta["scale_factor"], dtype=torch.float32, device=device).repeat(2)
        res = InstanceData(
            bboxes=torch.as_tensor(given.boxes, dtype=torch.float32, device=device) * sf,
            labels=torch.as_tensor(given.labels, dtype=torch.long, device=device),
            scores=torch.as_tensor(given.scores, dtype=torch.float32, device=device),
        )
        out = roi_head.predict_mask(feats, [meta], [res], rescale=True)[0]
        masks = masks_to_instances(out.masks, h, w)
        return ImagePredictions(
            given.image_id, h, w, given.boxes, given.scores, given.labels, masks, given.semantic
        )


def load_model(
    config: str | os.PathLike,
    checkpoint: str | os.PathLike | None,
    device: str | None = None,
    cfg_options: dict | None = None,
    score_thr: float = 0.05,
    max_per_img: int = 1000,
) -> InferenceModel:
    """Build a model from its config and load a checkpoint (``weights_only``-safe with onedl-mmengine).

    Args:
        config: Config file.
        checkpoint: Checkpoint file (``None``: random weights, for tests).
        device: ``'cuda'``, ``'cpu'``, ... (default: CUDA when available).
        cfg_options: Config overrides.
        score_thr: Lowest score the detector's post-processing should keep.
        max_per_img: Most detections it should keep per image.

    Returns:
        The model ready for :meth:`InferenceModel.predict`.

    Raises:
        FileNotFoundError: If the checkpoint does not exist.
    """
    from mmengine.runner import load_checkpoint

    cfg = load_config(config, cfg_options)
    library = register_library(cfg)
    if library == "mmdet":
        _set_test_thresholds(cfg, score_thr, max_per_img)
        from mmdet.registry import MODELS
    else:
        from mmseg.registry import MODELS
    if checkpoint is not None and not osp.isfile(checkpoint):
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = MODELS.build(cfg.model)
    if checkpoint is not None:
        load_checkpoint(model, str(checkpoint), map_location="cpu", revise_keys=[(r"^module\.", "")])
    else:
        model.init_weights()
    model.cfg = cfg
    model.to(device).eval()
    return InferenceModel(model, cfg, library)


def run_inference(
    model: InferenceModel,
    images: Sequence[ImageItem],
    out_path: str | os.PathLike,
    tta: bool = False,
    score_thr: float = 0.05,
    max_per_img: int = 1000,
    mask_head_on: str | os.PathLike | None = None,
    meta: dict | None = None,
    progress: bool = True,
    on_image: Callable[[ImagePredictions], Any] | None = None,
) -> list[ImagePredictions]:
    """Predict every image and write one prediction file (``ensemble.predictions`` format, atomic).

    Args:
        model: From :func:`load_model`.
        images: Images to predict.
        out_path: Output ``.npz`` path.
        tta: Flip TTA (not combined with ``mask_head_on``).
        score_thr: Detections below this score are dropped (detectors).
        max_per_img: At most this many detections per image, highest scores first.
        mask_head_on: Prediction file whose boxes/scores/labels get masks from this model's mask head.
        meta: Extra metadata stored in the file.
        progress: Show a tqdm bar.
        on_image: Optional callback per finished image.

    Returns:
        The predictions written.

    Raises:
        ValueError: On an invalid combination, or when ``mask_head_on`` lacks an image being predicted.
    """
    from tqdm import tqdm

    given: dict[str, ImagePredictions] | None = None
    if mask_head_on is not None:
        if tta:
            raise ValueError("--tta cannot be combined with --mask-head-on")
        given, _ = load_predictions(mask_head_on)
    preds: list[ImagePredictions] = []
    it: Iterable[ImageItem] = tqdm(images, desc="infer", unit="img", disable=not progress)
    for item in it:
        img = read_image(item.path)
        if given is not None:
            if item.image_id not in given:
                raise ValueError(f"{mask_head_on}: no boxes for image {item.image_id}")
            p = model.predict_masks_on_boxes(img, given[item.image_id])
        else:
            p = model.predict(img, item.image_id, tta=tta)
            if model.library == "mmdet":
                p = limit_predictions(p, score_thr, max_per_img)
        preds.append(p)
        if on_image is not None:
            on_image(p)
    info = {
        "library": model.library,
        "model": type(model.model).__name__,
        "config": str(model.cfg.filename) if model.cfg.filename else None,
        "classes": list(CLASSES),
        "tta": bool(tta),
        "score_thr": float(score_thr),
        "max_per_img": int(max_per_img),
        "mask_head_on": None if mask_head_on is None else str(mask_head_on),
        "has_masks": bool(preds and preds[0].masks is not None),
    }
    info.update(meta or {})
    save_predictions(out_path, preds, meta=info)
    return preds
