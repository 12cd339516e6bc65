"""Inference of a trained mmdet detector or mmseg segmentor into ensemble prediction files.

Used by ``tools/infer.py``. Images are predicted in batches (``batch_size``; the model's test pipeline from
``cfg.test_dataloader``, with the file loader replaced by an in-memory one and annotation loading removed,
prepares each input), optionally under fp16 autocast on CUDA. Results become
:class:`ensemble.predictions.ImagePredictions`:

* two-stage mask detectors (Mask R-CNN): RPN -> box head as in mmdet, then the mask head's sigmoid output is
  pasted into each box's window (pixel hull of the box plus one pixel, the region mmdet pastes) with mmdet's own
  bilinear sampling: ``mask_probs`` (soft masks, quantized to ``round(255 p) / 255``) and the binary masks
  ``p >= mask_thr_binary`` (identical to mmdet's). All windows of an image are sampled on the device in a few
  padded chunks and copied to the host once.
* other detectors: ``model.test_step``; boxes (xyxy pixels of the original image), scores, 0-based labels, masks
  cut to their tight boxes on the device when the model has them; box-only detectors (YOLOX) get ``masks=None``.
* segmentors: ``semantic`` = foreground probability ``1 - softmax(logits)[background]`` (``sigmoid`` for a
  single-channel head) at the original image size; no instances.
* flow models (Cellpose-style, ``custom_modules.seg.flow_head``: a ``FlowEncoderDecoder`` or a flow decode
  head): the 3-channel map (unit flows, cell logit) is decoded into instances (:func:`flow_predictions`,
  ``celldata.flows.decode_flow_map`` with the config's ``flow_decode`` overrides): tight boxes, score = mean cell
  probability inside the mask, the decoded binary masks and as ``mask_probs`` the cell probability in each mask's
  window with the *other* instances' pixels zeroed (the probability of belonging to this instance); no
  ``semantic``. The network predicts no cell type: every instance gets the image's class from another model's
  prediction file (``image_class_from`` of :func:`run_inference`: the score-weighted majority of that file's
  detections after dropping label twins, the ensemble's ``image_class: majority`` rule for one model,
  :func:`image_labels_from_file`), else label 0 (``shsy5y``) with a warning. With flip TTA the *maps* of the
  three passes are averaged (each mapped back by ``celldata.flows.flip_flow_map``: mirrored, flow component
  negated) before one decoding. The in-memory test pipeline never flips, so ``FlowEncoderDecoder``'s own flip
  correction (for mmseg's TTA pipeline) is not triggered and the sign is fixed exactly once; a pipeline that
  flips is refused.

Flip TTA (``tta=True``): the image is also predicted flipped horizontally and vertically, the three passes in the
same batch; each result is mapped back and the three are merged by the torch-free rules of :mod:`ensemble.tta`.

``mask_head_on`` (step 2 of box-first fusion, :mod:`ensemble.box_first`): soft masks for *given* boxes (the WBF
fused boxes of ``python -m ensemble.fuse_boxes``): a two-stage mask model runs its RoI mask head on them (the
winners' trick that lets box-only models contribute masks), a segmentor's probability map is cropped to each
box's pixel window (a flow model's cell probability likewise, the plain crop: no instance decoding). With TTA the
flipped passes' probabilities (a flow model: its maps) are averaged.
"""

from __future__ import annotations

import contextlib
import copy
import os
import os.path as osp
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np
import torch

from celldata import CLASSES
from celldata.flows import decode_flow_map, flip_flow_map
from celldata.images import ImageItem
from celldata.instances import InstanceMasks
from custom_modules.config import load_config
from custom_modules.conversion import masks_to_instances, to_numpy
from custom_modules.runner_utils import register_library
from ensemble.image_class import majority_without_twins
from ensemble.predictions import ImagePredictions, load_predictions, save_predictions
from ensemble.tta import FLIP_DIRECTIONS, flip_image, flip_predictions, limit_predictions, merge_tta

__all__ = [
    "InferenceModel",
    "flow_predictions",
    "image_labels_from_file",
    "load_model",
    "run_inference",
]


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


def _boxes_only(pred: ImagePredictions) -> ImagePredictions:
    """The boxes, scores and labels of a prediction (no masks, maps or probabilities)."""
    return ImagePredictions(pred.image_id, pred.height, pred.width, pred.boxes, pred.scores, pred.labels)


def semantic_on_boxes(
    given: ImagePredictions, semantic: np.ndarray, mask_thr: float = 0.5
) -> ImagePredictions:
    """A foreground probability map cropped to given boxes: the soft masks a semantic model gives them.

    Each box gets the pixel window ``floor(x1), floor(y1), ceil(x2), ceil(y2)`` (clipped to the image; the window
    in which the vote ensemble lets a semantic map vote), its crop of the map as ``mask_probs`` and
    ``crop >= mask_thr`` as binary mask.

    Args:
        given: Boxes (xyxy pixels), scores and labels, kept.
        semantic: float32 ``(H, W)`` foreground probability.
        mask_thr: Binary threshold.

    Returns:
        ``given`` with masks and ``mask_probs`` (``semantic`` itself is not kept).
    """
    h, w = given.height, given.width
    if semantic.shape != (h, w):
        raise ValueError(f"image {given.image_id}: semantic map {semantic.shape} for a {h}x{w} image")
    b = given.boxes.astype(np.float64)
    lo = np.clip(np.floor(b[:, :2]).astype(np.int64), 0, [w, h])
    hi = np.clip(np.ceil(b[:, 2:]).astype(np.int64), lo, [w, h])
    win = np.concatenate([lo, hi], axis=1).astype(np.int32).reshape(-1, 4)
    probs = [np.ascontiguousarray(semantic[y0:y1, x0:x1], dtype=np.float32) for x0, y0, x1, y1 in win]
    masks = InstanceMasks(h, w, win, [c >= mask_thr for c in probs])
    return ImagePredictions(given.image_id, h, w, given.boxes, given.scores, given.labels, masks, None, probs)


def _average_soft_passes(
    given: ImagePredictions, passes: Sequence[ImagePredictions], mask_thr: float, keep_probs: bool
) -> ImagePredictions:
    """Mean mask probabilities of un-flipped TTA passes over the same boxes (their windows coincide)."""
    p0 = passes[0]
    for p in passes[1:]:
        if not np.array_equal(p.masks.boxes, p0.masks.boxes):
            raise ValueError(f"image {given.image_id}: TTA passes have different mask windows")
    n = len(passes)
    probs = [sum(p.mask_probs[i] for p in passes) / np.float32(n) for i in range(len(p0.masks))]
    masks = InstanceMasks(given.height, given.width, p0.masks.boxes, [c >= mask_thr for c in probs])
    return ImagePredictions(
        given.image_id, given.height, given.width, given.boxes, given.scores, given.labels, masks,
        given.semantic, probs if keep_probs else None,
    )  # fmt: skip


def _autocast(device: torch.device, fp16: bool):
    """fp16 autocast on CUDA when asked, else a no-op context."""
    if fp16:
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def _finite_predictions(
    image_id: str,
    height: int,
    width: int,
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    masks: InstanceMasks | None = None,
    mask_probs: list[np.ndarray] | None = None,
) -> ImagePredictions:
    """Detections as :class:`ImagePredictions`, boxes clipped to the image, non-finite ones dropped with a warning.

    A diverged or barely trained model can emit NaN/inf boxes or scores: they cannot be placed, so they are
    dropped together with their masks.
    """
    boxes = np.clip(np.asarray(boxes, dtype=np.float32).reshape(-1, 4), 0, [width, height, width, height])
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    finite = np.isfinite(boxes).all(axis=1) & np.isfinite(scores)
    if not finite.all():
        warnings.warn(
            f"image {image_id}: dropped {int((~finite).sum())} detection(s) with non-finite box or score",
            stacklevel=3,
        )
        boxes, scores, labels = boxes[finite], scores[finite], labels[finite]
        masks = masks.subset(finite) if masks is not None else None
        if mask_probs is not None:
            mask_probs = [c for c, f in zip(mask_probs, finite) if f]
    return ImagePredictions(image_id, height, width, boxes, scores, labels, masks, None, mask_probs)


def paste_soft_masks(
    probs: torch.Tensor,
    boxes: torch.Tensor,
    height: int,
    width: int,
    mask_thr: float = 0.5,
    max_elements: int = 1 << 24,
) -> tuple[InstanceMasks, list[np.ndarray]]:
    """Paste RoI mask probabilities into their boxes: binary masks and probability crops, one host transfer.

    Each instance gets the pixel window ``floor(x1) - 1 .. ceil(x2) + 1`` (and y alike, clipped to the image),
    the region mmdet's ``_do_paste_mask`` samples for a single box; its probabilities are the same bilinear
    ``grid_sample`` of the RoI map, so ``crop >= mask_thr`` equals mmdet's binary mask. Windows are padded per
    chunk (instances sorted by window area, at most ``max_elements`` pixels per chunk) and sampled in one call;
    the pixels of all windows are gathered on the device and copied to the host once, quantized to
    ``q = round(255 p)`` (the prediction file's precision).

    Args:
        probs: float ``(N, h, w)`` mask probabilities (sigmoid of the mask head, class channel selected).
        boxes: float ``(N, 4)`` xyxy boxes in the pixels of the ``(height, width)`` image, on the same device.
        height: Image height H.
        width: Image width W.
        mask_thr: Binary threshold (mmdet's ``mask_thr_binary``).
        max_elements: Most padded window pixels sampled at once.

    Returns:
        ``(masks, prob_crops)``: the binary masks in the windows and the float32 probability crops ``q / 255``.
    """
    import torch.nn.functional as F

    n = int(boxes.shape[0])
    if n == 0:
        return InstanceMasks.empty(height, width), []
    dev = boxes.device
    b = boxes.float()
    lo = torch.clamp(b[:, :2].floor() - 1, min=0)
    lo = torch.minimum(lo, lo.new_tensor([width, height]))  # a box beyond the image gets an empty window
    hi = torch.stack(
        [torch.clamp(b[:, 2].ceil() + 1, max=width), torch.clamp(b[:, 3].ceil() + 1, max=height)], 1
    )
    hi = torch.maximum(hi, lo)
    win = torch.cat([lo, hi], dim=1).to(torch.int64)
    win_np = win.cpu().numpy()  # N x 4 integers: plans the chunks
    ws = win_np[:, 2] - win_np[:, 0]
    hs = win_np[:, 3] - win_np[:, 1]
    order = np.argsort(-(hs * ws), kind="stable")
    p = probs.float()[:, None]
    flat_parts = []
    s = 0
    while s < n:
        hm, wm = int(hs[order[s]]), int(ws[order[s]])
        e = s + 1
        while e < n:
            h2, w2 = max(hm, int(hs[order[e]])), max(wm, int(ws[order[e]]))
            if (e + 1 - s) * h2 * w2 > max_elements:
                break
            hm, wm, e = h2, w2, e + 1
        idx = torch.as_tensor(order[s:e], device=dev)
        wi, bi = win[idx], b[idx]
        if hm > 0 and wm > 0:
            ar_y = torch.arange(hm, device=dev)
            ar_x = torch.arange(wm, device=dev)
            img_y = (wi[:, 1:2] + ar_y[None]).to(torch.float32) + 0.5
            img_x = (wi[:, 0:1] + ar_x[None]).to(torch.float32) + 0.5
            img_y = (img_y - bi[:, 1:2]) / (bi[:, 3:4] - bi[:, 1:2]) * 2 - 1
            img_x = (img_x - bi[:, 0:1]) / (bi[:, 2:3] - bi[:, 0:1]) * 2 - 1
            img_x[torch.isinf(img_x)] = 0  # degenerate boxes, as mmdet
            img_y[torch.isinf(img_y)] = 0
            k = len(idx)
            grid = torch.stack(
                [img_x[:, None, :].expand(k, hm, wm), img_y[:, :, None].expand(k, hm, wm)], dim=3
            )
            pasted = F.grid_sample(p[idx], grid, align_corners=False)[:, 0]
            valid = (ar_y[None, :, None] < (wi[:, 3] - wi[:, 1])[:, None, None]) & (
                ar_x[None, None, :] < (wi[:, 2] - wi[:, 0])[:, None, None]
            )
            vals = pasted[valid]
            flat_parts.append(
                torch.stack([torch.round(vals * 255).to(torch.uint8), (vals >= mask_thr).to(torch.uint8)])
            )
        s = e
    host = torch.cat(flat_parts, dim=1).cpu().numpy() if flat_parts else np.zeros((2, 0), np.uint8)
    q_all = host[0].astype(np.float32) / np.float32(255.0)
    bin_all = host[1].view(bool)
    sizes = (hs * ws)[order]
    offs = np.concatenate([[0], np.cumsum(sizes)])
    crops: list[np.ndarray] = [None] * n  # type: ignore[list-item]
    prob_crops: list[np.ndarray] = [None] * n  # type: ignore[list-item]
    for j, i in enumerate(order.tolist()):
        shape = (int(hs[i]), int(ws[i]))
        crops[i] = bin_all[offs[j] : offs[j + 1]].reshape(shape)
        prob_crops[i] = q_all[offs[j] : offs[j + 1]].reshape(shape)
    return InstanceMasks(height, width, win_np.astype(np.int32), crops), prob_crops


FLOW_DEFAULT_LABEL = 0
"""Label of a flow model's instances when no ``image_class_from`` file gives the image's class (``shsy5y``)."""


def flow_predictions(
    maps: np.ndarray, image_id: str, label: int = FLOW_DEFAULT_LABEL, decode: dict | None = None
) -> ImagePredictions:
    """A flow network's map of one image decoded into instance predictions (module docstring).

    Args:
        maps: float ``(3, H, W)``: unit-scale flow y, flow x, cell logit at the original image size.
        image_id: Image id.
        label: Class index given to every instance.
        decode: ``celldata.flows.flows_to_labels`` overrides (a config's ``flow_decode``).

    Returns:
        Boxes (the masks' tight windows, xyxy pixels), scores (mean cell probability in the mask), labels, binary
        masks and exclusive soft masks (``mask_probs``); ``semantic=None``.

    Raises:
        ValueError: On a bad map shape or decode parameter, or a label outside the classes.
    """
    if not 0 <= int(label) < len(CLASSES):
        raise ValueError(f"image {image_id}: label {label} is not a class index (0..{len(CLASSES) - 1})")
    inst, _ = decode_flow_map(maps, decode, exclusive=True)
    h, w = maps.shape[1:]
    return _finite_predictions(
        image_id, h, w, inst.boxes, inst.scores, np.full(len(inst), int(label), np.int64), inst.masks,
        inst.mask_probs,
    )  # fmt: skip


def image_labels_from_file(
    path: str | os.PathLike, image_ids: Sequence[str], default: int = FLOW_DEFAULT_LABEL
) -> tuple[dict[str, int], list[str]]:
    """Each image's class from another model's prediction file: the ensemble's ``image_class: majority`` rule.

    The class of an image is the score-weighted majority over the file's detections of it, after that model's
    label twins are dropped (:func:`ensemble.image_class.majority_without_twins`, as ``ensemble.masks`` does for
    one model of weight 1).

    Args:
        path: Prediction file (``ensemble.predictions``) of a model with labels (Mask R-CNN, YOLOX).
        image_ids: Images that need a class.
        default: Class of an image on which the file has no detection.

    Returns:
        ``({image id: class index}, ids that got ``default``)``.

    Raises:
        ValueError: If the file cannot be read or lacks one of ``image_ids``.
    """
    preds, _ = load_predictions(path)
    missing = [i for i in image_ids if i not in preds]
    if missing:
        raise ValueError(f"{path}: no predictions for image(s) {', '.join(missing[:5])} (--image-class-from)")
    out, defaulted = {}, []
    for i in image_ids:
        p = preds[i]
        label, _ = majority_without_twins([p.boxes], [p.scores], [p.labels], n_classes=len(CLASSES))
        if label is None:
            label = int(default)
            defaulted.append(i)
        out[i] = int(label)
    return out, defaulted


def _relabelled(pred: ImagePredictions, label: int) -> ImagePredictions:
    """``pred`` with every instance labelled ``label``."""
    pred.labels = np.full(len(pred), int(label), np.int64)
    return pred


class InferenceModel:
    """A trained model with its test pipeline, predicting :class:`ImagePredictions` for batches of images.

    Args:
        model: The built mmdet/mmseg model (eval mode, on its device).
        cfg: Its config.
        library: ``'mmdet'`` or ``'mmseg'``.
        fp16: Run the network under fp16 autocast (CUDA only).
        soft_masks: For two-stage mask models, also return the mask head's probabilities (``mask_probs``).

    Raises:
        ValueError: If ``fp16`` is asked for a model not on a CUDA device.
    """

    def __init__(
        self, model: torch.nn.Module, cfg, library: str, fp16: bool = False, soft_masks: bool = True
    ) -> None:
        from mmcv.transforms import Compose

        self.model = model
        self.cfg = cfg
        self.library = library
        self.pipeline = Compose(_inference_pipeline(cfg, library))
        self.device = next(model.parameters()).device
        if fp16 and self.device.type != "cuda":
            raise ValueError(f"--fp16 needs a CUDA device, the model is on {self.device}")
        self.fp16 = bool(fp16)
        self.soft_masks = bool(soft_masks)
        self.is_flow = False
        self.flow_decode: dict = {}
        if library == "mmseg":
            from custom_modules.seg.flow_head import is_flow_segmentor

            self.is_flow = is_flow_segmentor(model)
            self.flow_decode = dict(cfg.get("flow_decode") or {})

    @property
    def _mask_roi_head(self):
        """The RoI head when the model is a two-stage detector whose mask head can be run on given boxes."""
        roi_head = getattr(self.model, "roi_head", None)
        if (
            roi_head is None
            or not getattr(roi_head, "with_mask", False)
            or not hasattr(roi_head, "_mask_forward")
        ):
            return None
        return roi_head

    @property
    def pastes_masks(self) -> bool:
        """Whether masks come from our paste of the mask head's probabilities (a two-stage model with an FCN mask
        head): binary masks identical to mmdet's, one host copy per image, probabilities available."""
        return (
            self._mask_roi_head is not None
            and hasattr(self.model, "rpn_head")
            and hasattr(self._mask_roi_head, "predict_bbox")
        )

    @property
    def predicts_soft_masks(self) -> bool:
        """Whether :meth:`predict_batch` returns mask probabilities (``mask_probs``)."""
        return self.soft_masks and (self.pastes_masks or self.is_flow)

    def _prepare(self, imgs: Sequence[np.ndarray]) -> dict:
        from mmengine.dataset import pseudo_collate

        return pseudo_collate(
            [
                self.pipeline(dict(img=img, img_id=k, img_path="", ori_shape=img.shape[:2]))
                for k, img in enumerate(imgs)
            ]
        )

    @torch.no_grad()
    def predict_sample(self, img: np.ndarray):
        """The raw data sample (mmdet ``DetDataSample`` / mmseg ``SegDataSample``) of one BGR image."""
        with _autocast(self.device, self.fp16):
            return self.model.test_step(self._prepare([img]))[0]

    def to_predictions(self, sample, image_id: str, height: int, width: int) -> ImagePredictions:
        """Convert a raw data sample into :class:`ImagePredictions` (module docstring)."""
        if getattr(self, "is_flow", False):  # (tests call this on a bare namespace of an mmdet model)
            return self._flow_instances(self._flow_map(sample, height, width), image_id)
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
        masks = masks_to_instances(inst.masks, height, width) if "masks" in inst else None
        return _finite_predictions(
            image_id,
            height,
            width,
            to_numpy(inst.bboxes.float()),
            to_numpy(inst.scores.float()),
            to_numpy(inst.labels),
            masks,
        )

    def _flow_instances(self, maps: np.ndarray, image_id: str) -> ImagePredictions:
        """:func:`flow_predictions` with the config's decode parameters (no ``mask_probs`` without soft masks)."""
        pred = flow_predictions(maps, image_id, decode=self.flow_decode)
        if not self.soft_masks:
            pred.mask_probs = None
        return pred

    def _flow_map(self, sample, height: int, width: int) -> np.ndarray:
        """A flow model's ``seg_logits`` as float32 ``(3, H, W)`` at the image size.

        Raises:
            ValueError: If the test pipeline flipped the input (the model would then have un-flipped the map
                itself; TTA flips are done here, see the module docstring) or the map is not 3-channel.
        """
        if sample.metainfo.get("flip", False):
            raise ValueError("the flow model's test pipeline flips its input: remove RandomFlip (use --tta)")
        maps = to_numpy(sample.seg_logits.data.float())
        if maps.ndim != 3 or maps.shape[0] != 3:
            raise ValueError(f"a flow model must predict a (3, H, W) map, got {maps.shape}")
        if maps.shape[1:] != (height, width):
            maps = np.stack([cv2.resize(c, (width, height), interpolation=cv2.INTER_LINEAR) for c in maps])
        return np.ascontiguousarray(maps, dtype=np.float32)

    @torch.no_grad()
    def predict_flow_maps(self, imgs: Sequence[np.ndarray], tta: bool = False) -> list[np.ndarray]:
        """A flow model's maps of a batch of BGR images: per image float32 ``(3, H, W)`` (unit-scale flow y,
        flow x, cell logit).

        With ``tta`` the horizontally and vertically flipped images run in the same batch; each flipped pass's
        map is mapped back (``celldata.flows.flip_flow_map``: mirrored, flow component negated) and the three
        maps are averaged (flows and logits).

        Raises:
            ValueError: If the model is not a flow model.
        """
        if not self.is_flow:
            raise ValueError("predict_flow_maps needs a flow model (FlowEncoderDecoder / a flow decode head)")
        if len(imgs) == 0:
            return []
        step = 1 + len(FLIP_DIRECTIONS) if tta else 1
        batch = []
        for img in imgs:
            batch += [img] + ([flip_image(img, d) for d in FLIP_DIRECTIONS] if tta else [])
        with _autocast(self.device, self.fp16):
            samples = self.model.test_step(self._prepare(batch))
        maps = [self._flow_map(s, img.shape[0], img.shape[1]) for s, img in zip(samples, batch)]
        if not tta:
            return maps
        out = []
        for k in range(len(imgs)):
            passes = maps[k * step : (k + 1) * step]
            back = [passes[0]] + [flip_flow_map(m, d) for m, d in zip(passes[1:], FLIP_DIRECTIONS)]
            out.append((sum(back) / np.float32(len(back))).astype(np.float32))
        return out

    def _soft_mask_forward(
        self, feats, metas: list[dict], boxes_in: list[torch.Tensor], labels: list[torch.Tensor]
    ):
        """Mask head on network-input-scale boxes of each image: per image ``(N_i, h, w)`` probabilities."""
        from mmdet.structures.bbox import bbox2roi

        roi_head = self._mask_roi_head
        rois = bbox2roi(boxes_in)
        n_per = [len(bb) for bb in boxes_in]
        if rois.shape[0] == 0:
            return [torch.zeros((0, 1, 1), device=rois.device) for _ in boxes_in]
        mask_preds = roi_head._mask_forward(feats, rois)["mask_preds"].float()
        lab = torch.cat(labels)
        if not getattr(roi_head.mask_head, "class_agnostic", False):
            mask_preds = mask_preds[torch.arange(len(lab), device=lab.device), lab]
        else:
            mask_preds = mask_preds[:, 0]
        return list(mask_preds.sigmoid().split(n_per, 0))

    def _mask_thr(self) -> float:
        tc = self._mask_roi_head.test_cfg
        thr = tc.get("mask_thr_binary", 0.5) if tc is not None else 0.5
        return float(thr) if thr is not None and thr >= 0 else 0.5

    def _forward_soft(self, imgs: Sequence[np.ndarray], image_ids: Sequence[str]) -> list[ImagePredictions]:
        """Two-stage mask model: RPN -> box head -> mask head probabilities pasted into the boxes (one batch)."""
        data = self.model.data_preprocessor(self._prepare(imgs), False)
        inputs, samples = data["inputs"], data["data_samples"]
        metas = [s.metainfo for s in samples]
        roi_head = self._mask_roi_head
        with _autocast(self.device, self.fp16):
            feats = self.model.extract_feat(inputs)
            if samples[0].get("proposals", None) is None:
                rpn = self.model.rpn_head.predict(feats, samples, rescale=False)
            else:
                rpn = [s.proposals for s in samples]
            results = roi_head.predict_bbox(feats, metas, rpn, rcnn_test_cfg=roi_head.test_cfg, rescale=False)
            boxes_in = [r.bboxes.float() for r in results]
            probs = self._soft_mask_forward(feats, metas, boxes_in, [r.labels for r in results])
        out = []
        for img, image_id, meta, r, bb, pr in zip(imgs, image_ids, metas, results, boxes_in, probs):
            h, w = img.shape[:2]
            sf = bb.new_tensor(meta["scale_factor"]).repeat(2)
            boxes = bb / sf  # original image pixels (as mmdet's mask head rescales them)
            scores = r.scores.float()
            finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
            if not bool(finite.all()):
                warnings.warn(
                    f"image {image_id}: dropped {int((~finite).sum())} detection(s) with non-finite box or score",
                    stacklevel=2,
                )
                boxes, scores, labels, pr = boxes[finite], scores[finite], r.labels[finite], pr[finite]
            else:
                labels = r.labels
            masks, crops = paste_soft_masks(pr, boxes, h, w, self._mask_thr())
            out.append(
                _finite_predictions(
                    image_id,
                    h,
                    w,
                    to_numpy(boxes),
                    to_numpy(scores),
                    to_numpy(labels),
                    masks,
                    crops if self.soft_masks else None,
                )
            )
        return out

    @torch.no_grad()
    def predict_raw(self, imgs: Sequence[np.ndarray], image_ids: Sequence[str]) -> list[ImagePredictions]:
        """One network pass over a batch of BGR images (no TTA), each converted to :class:`ImagePredictions`."""
        if len(imgs) == 0:
            return []
        if self.pastes_masks:
            return self._forward_soft(imgs, image_ids)
        with _autocast(self.device, self.fp16):
            samples = self.model.test_step(self._prepare(imgs))
        return [
            self.to_predictions(s, i, img.shape[0], img.shape[1])
            for s, i, img in zip(samples, image_ids, imgs)
        ]

    def predict_batch(
        self, imgs: Sequence[np.ndarray], image_ids: Sequence[str], tta: bool = False
    ) -> list[ImagePredictions]:
        """Predict a batch of BGR images (H, W, 3); with ``tta`` the three flip passes of every image run in the
        same batch and are merged per image (:func:`merge_tta`)."""
        if self.is_flow:
            maps = self.predict_flow_maps(imgs, tta=tta)
            return [self._flow_instances(m, i) for m, i in zip(maps, image_ids)]
        if not tta:
            return self.predict_raw(imgs, image_ids)
        batch, ids = [], []
        for img, image_id in zip(imgs, image_ids):
            batch += [img] + [flip_image(img, d) for d in FLIP_DIRECTIONS]
            ids += [image_id] * (1 + len(FLIP_DIRECTIONS))
        raw = self.predict_raw(batch, ids)
        step = 1 + len(FLIP_DIRECTIONS)
        out = []
        for k in range(len(imgs)):
            passes = raw[k * step : (k + 1) * step]
            passes = [passes[0]] + [flip_predictions(p, d) for p, d in zip(passes[1:], FLIP_DIRECTIONS)]
            out.append(merge_tta(passes))
        return out

    def predict(self, img: np.ndarray, image_id: str, tta: bool = False) -> ImagePredictions:
        """Predict one BGR image (H, W, 3), optionally with flip TTA."""
        return self.predict_batch([img], [image_id], tta=tta)[0]

    @torch.no_grad()
    def predict_masks_on_boxes_batch(
        self, imgs: Sequence[np.ndarray], givens: Sequence[ImagePredictions], soft: bool | None = None
    ) -> list[ImagePredictions]:
        """Soft masks of a two-stage mask model for given boxes/labels (its RoI mask head run on them).

        Args:
            imgs: BGR images (H, W, 3).
            givens: Per image, the boxes (xyxy pixels), scores and labels to keep; masks are replaced.
            soft: Whether to return ``mask_probs`` (default: the model's ``soft_masks``).

        Returns:
            ``givens`` with this model's binary masks and, unless ``soft_masks`` is off, the mask head's
            probabilities pasted into the box windows (``mask_probs``); ``semantic`` is kept.

        Raises:
            ValueError: If the model has no RoI mask head or an image size differs.
        """
        roi_head = self._mask_roi_head
        if roi_head is None:
            raise ValueError("--mask-head-on needs a two-stage model with a mask head (e.g. Mask R-CNN)")
        for img, g in zip(imgs, givens):
            h, w = img.shape[:2]
            if (g.height, g.width) != (h, w):
                raise ValueError(f"image {g.image_id}: boxes are for {g.height}x{g.width}, image is {h}x{w}")
        data = self.model.data_preprocessor(self._prepare(imgs), False)
        inputs, samples = data["inputs"], data["data_samples"]
        metas = [s.metainfo for s in samples]
        dev = inputs.device
        boxes = [torch.as_tensor(g.boxes, dtype=torch.float32, device=dev) for g in givens]
        scaled = [
            bb * torch.as_tensor(m["scale_factor"], dtype=torch.float32, device=dev).repeat(2)
            for bb, m in zip(boxes, metas)
        ]
        labels = [torch.as_tensor(g.labels, dtype=torch.long, device=dev) for g in givens]
        with _autocast(self.device, self.fp16):
            feats = self.model.extract_feat(inputs)
            probs = self._soft_mask_forward(feats, metas, scaled, labels)
        out = []
        for g, bb, pr in zip(givens, boxes, probs):
            masks, crops = paste_soft_masks(pr, bb, g.height, g.width, self._mask_thr())
            out.append(
                ImagePredictions(
                    g.image_id,
                    g.height,
                    g.width,
                    g.boxes,
                    g.scores,
                    g.labels,
                    masks,
                    g.semantic,
                    crops if (self.soft_masks if soft is None else soft) else None,
                )  # fmt: skip
            )
        return out

    def predict_masks_on_boxes(self, img: np.ndarray, given: ImagePredictions) -> ImagePredictions:
        """:meth:`predict_masks_on_boxes_batch` for one image."""
        return self.predict_masks_on_boxes_batch([img], [given])[0]

    def predict_on_boxes(
        self, imgs: Sequence[np.ndarray], givens: Sequence[ImagePredictions], tta: bool = False
    ) -> list[ImagePredictions]:
        """Step 2 of box-first fusion: soft masks of this model for given (fused) boxes, one batch.

        A two-stage mask model runs its RoI mask head on the boxes (:meth:`predict_masks_on_boxes_batch`); a
        segmentor predicts its foreground probability map, cropped to each box's pixel window
        (:func:`semantic_on_boxes`); a flow model its cell probability (sigmoid of the cell logit), cropped the
        same way (plain crops: nothing is decoded). With ``tta`` the horizontally and vertically flipped images
        (and boxes) run in the same batch and the probabilities are averaged per pixel (binary masks: mean
        ``>= mask_thr``; a flow model averages its maps, then takes the sigmoid).

        Args:
            imgs: BGR images (H, W, 3).
            givens: Per image, the boxes, scores and labels (kept unchanged in the result).
            tta: Flip TTA.

        Returns:
            Per image, ``givens`` with masks and ``mask_probs``.

        Raises:
            ValueError: If the model cannot predict masks (a box-only detector) or an image size differs.
        """
        if self.is_flow:
            maps = self.predict_flow_maps(imgs, tta=tta)
            probs = [(1.0 / (1.0 + np.exp(-np.clip(m[2], -60.0, 60.0)))).astype(np.float32) for m in maps]
            return [semantic_on_boxes(g, p) for g, p in zip(givens, probs)]
        if self.library == "mmseg":
            maps = self.predict_batch(imgs, [g.image_id for g in givens], tta=tta)
            return [semantic_on_boxes(g, m.semantic) for g, m in zip(givens, maps)]
        if self._mask_roi_head is None:
            raise ValueError(
                "--mask-head-on needs a two-stage model with a mask head (e.g. Mask R-CNN) or a segmentor"
            )
        if not tta:
            return self.predict_masks_on_boxes_batch(imgs, givens)
        batch_imgs, batch_given = [], []
        for img, g in zip(imgs, givens):
            batch_imgs += [img] + [flip_image(img, d) for d in FLIP_DIRECTIONS]
            batch_given += [g] + [flip_predictions(_boxes_only(g), d) for d in FLIP_DIRECTIONS]
        raw = self.predict_masks_on_boxes_batch(batch_imgs, batch_given, soft=True)
        step = 1 + len(FLIP_DIRECTIONS)
        out = []
        for k, g in enumerate(givens):
            passes = raw[k * step : (k + 1) * step]
            passes = [passes[0]] + [flip_predictions(p, d) for p, d in zip(passes[1:], FLIP_DIRECTIONS)]
            out.append(_average_soft_passes(g, passes, self._mask_thr(), self.soft_masks))
        return out


def load_model(
    config: str | os.PathLike,
    checkpoint: str | os.PathLike | None,
    device: str | None = None,
    cfg_options: dict | None = None,
    score_thr: float = 0.05,
    max_per_img: int = 1000,
    fp16: bool = False,
    soft_masks: bool = True,
) -> InferenceModel:
    """Build a model from its config and load a checkpoint (``weights_only``-safe with onedl-mmengine).

    Args:
        config: Config file.
        checkpoint: Checkpoint file (``None``: random weights, for tests).
        device: ``'cuda'``, ``'cpu'``, ... (default: CUDA when available).
        cfg_options: Config overrides.
        score_thr: Lowest score the detector's post-processing should keep.
        max_per_img: Most detections it should keep per image.
        fp16: fp16 autocast (CUDA only).
        soft_masks: Two-stage mask models also return mask probabilities.

    Returns:
        The model ready for :meth:`InferenceModel.predict_batch`.

    Raises:
        FileNotFoundError: If the checkpoint does not exist.
        ValueError: If ``fp16`` is asked without CUDA.
        custom_modules.checkpoints.CheckpointMismatch: (a ``ValueError``) If the checkpoint's weights do not fit
            the config (missing, unexpected or shape-mismatched keys; the first few are named).
    """
    from custom_modules.checkpoints import load_fitting_checkpoint

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
    if fp16 and not str(device).startswith("cuda"):
        raise ValueError(f"--fp16 needs a CUDA device, got {device!r}")
    model = MODELS.build(cfg.model)
    if checkpoint is not None:
        # refuse, before any work, weights that do not fit the config (another model's checkpoint would
        # otherwise load partly and predict from random layers)
        load_fitting_checkpoint(
            model, checkpoint, where=f"checkpoint {checkpoint} does not fit config {config}"
        )
    else:
        model.init_weights()
    model.cfg = cfg
    model.to(device).eval()
    return InferenceModel(model, cfg, library, fp16=fp16, soft_masks=soft_masks)


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
    batch_size: int = 1,
    image_class_from: str | os.PathLike | None = None,
) -> list[ImagePredictions]:
    """Predict every image and write one prediction file (``ensemble.predictions`` format, atomic).

    Args:
        model: From :func:`load_model`.
        images: Images to predict.
        out_path: Output ``.npz`` path.
        tta: Flip TTA (also with ``mask_head_on``: probabilities averaged over the passes).
        score_thr: Detections below this score are dropped (detectors).
        max_per_img: At most this many detections per image, highest scores first.
        mask_head_on: Prediction file (e.g. the fused boxes of ``python -m ensemble.fuse_boxes``) whose
            boxes/scores/labels get soft masks from this model (:meth:`InferenceModel.predict_on_boxes`).
        meta: Extra metadata stored in the file.
        progress: Show a tqdm bar.
        on_image: Optional callback per finished image.
        batch_size: Images per network pass (with ``tta`` each image adds its three flip passes to the batch).
            The result does not depend on it (up to floating-point reassociation in batched kernels).
        image_class_from: Flow models only: prediction file of another model (with labels) whose majority class
            of each image labels this model's instances (:func:`image_labels_from_file`); None: label 0 with a
            warning. Not with ``mask_head_on`` (the given boxes keep their labels).

    Returns:
        The predictions written.

    Raises:
        ValueError: On an invalid combination, or when ``mask_head_on`` / ``image_class_from`` lacks an image
            being predicted.
    """
    from tqdm import tqdm

    if int(batch_size) < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    flow_labels, flow_meta = _flow_image_labels(model, images, mask_head_on, image_class_from)
    given: dict[str, ImagePredictions] | None = None
    if mask_head_on is not None:
        given, _ = load_predictions(mask_head_on)
        missing = [it.image_id for it in images if it.image_id not in given]
        if missing:
            raise ValueError(f"{mask_head_on}: no boxes for image(s) {', '.join(missing[:5])}")
    preds: list[ImagePredictions] = []
    bar = tqdm(total=len(images), desc="infer", unit="img", disable=not progress)
    for start in range(0, len(images), int(batch_size)):
        items = images[start : start + int(batch_size)]
        imgs = [read_image(it.path) for it in items]
        ids = [it.image_id for it in items]
        if given is not None:
            batch = model.predict_on_boxes(imgs, [given[i] for i in ids], tta=tta)
        else:
            batch = model.predict_batch(imgs, ids, tta=tta)
            if model.library == "mmdet" or model.is_flow:
                batch = [limit_predictions(p, score_thr, max_per_img) for p in batch]
            if flow_labels is not None:
                batch = [_relabelled(p, flow_labels[p.image_id]) for p in batch]
        for p in batch:
            preds.append(p)
            if on_image is not None:
                on_image(p)
        bar.update(len(items))
    bar.close()
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
        "has_mask_probs": bool(preds and preds[0].mask_probs is not None),
        "batch_size": int(batch_size),
        "fp16": bool(model.fp16),
        **flow_meta,
    }
    info.update(meta or {})
    save_predictions(out_path, preds, meta=info)
    return preds


def _flow_image_labels(
    model: InferenceModel,
    images: Sequence[ImageItem],
    mask_head_on: str | os.PathLike | None,
    image_class_from: str | os.PathLike | None,
) -> tuple[dict[str, int] | None, dict[str, Any]]:
    """The class of every image for a flow model's instances (None: keep the labels) and the file's flow meta.

    Raises:
        ValueError: ``image_class_from`` for a model that is not a flow model, with ``mask_head_on``, or lacking
            an image.
    """
    if image_class_from is not None and not model.is_flow:
        raise ValueError("--image-class-from is for flow models (their instances have no cell type)")
    if not model.is_flow:
        return None, {}
    meta: dict[str, Any] = {"flow": True, "flow_decode": dict(model.flow_decode)}
    if mask_head_on is not None:
        if image_class_from is not None:
            raise ValueError(
                "--image-class-from does not apply with --mask-head-on (the given boxes keep labels)"
            )
        return None, meta
    ids = [it.image_id for it in images]
    if image_class_from is None:
        warnings.warn(
            f"flow model without --image-class-from: every instance is labelled {CLASSES[FLOW_DEFAULT_LABEL]!r}; "
            "in an ensemble pass another model's prediction file of the same images",
            stacklevel=3,
        )
        meta["image_class_from"] = None
        return dict.fromkeys(ids, FLOW_DEFAULT_LABEL), meta
    labels, defaulted = image_labels_from_file(image_class_from, ids)
    meta["image_class_from"] = str(image_class_from)
    meta["image_class_defaulted"] = defaulted
    return labels, meta
