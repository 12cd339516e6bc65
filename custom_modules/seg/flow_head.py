"""Cellpose-style flow heads for mmseg: 3 output channels ``(flow_y, flow_x, cell probability logit)``.

Training targets come from ``data_sample.gt_flows`` (``PixelData``, float ``(4, h, w)``: unit-scale flow y, flow x,
cell probability 0/1, validity 0/1), written by the ``GenerateFlowTargets`` / ``PackFlowSegInputs`` transforms of
:mod:`custom_modules.seg.flow_transforms`. The loss is Cellpose's: MSE between the raw flow channels and
``FLOW_SCALE * flows`` (5x the unit flows; weighted 0.5 as Cellpose divides it by 2) plus BCE-with-logits of the
probability channel, both averaged over the valid pixels (padding and pixels without a source are invalid).

``predict`` returns ``(N, 3, H, W)`` at the padded input size with the flow channels divided by ``FLOW_SCALE``,
i.e. unit-scale flows ready for :func:`celldata.flows.flows_to_labels` (after ``sigmoid`` of channel 2).

* :class:`FlowHead`: an ``FCNHead`` (the SE-U-Net's ``num_convs=0`` 1x1 classifier, or with convs).
* :class:`FlowUPerHead`: a ``UPerHead`` (UPerNet's PPM + FPN fusion).
* :class:`FlowEncoderDecoder`: an ``EncoderDecoder`` whose results make sense for flows: ``seg_logits`` the
  3-channel map at the original image size (flow signs fixed for flip test-time augmentation) and
  ``pred_sem_seg`` the foreground ``logit > 0`` (0/1, for the foreground IoU metric), instead of an argmax
  over the three channels. Plain ``EncoderDecoder`` works too (its ``pred_sem_seg`` is then meaningless).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from mmengine.structures import PixelData
from mmseg.models.decode_heads import FCNHead, UPerHead
from mmseg.models.segmentors import EncoderDecoder
from mmseg.models.utils import resize
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample
from torch import Tensor

from celldata.flows import FLOW_SCALE

__all__ = [
    'FlowEncoderDecoder',
    'FlowHead',
    'FlowUPerHead',
    'flow_loss',
    'is_flow_segmentor',
    'stack_flow_targets',
]

NUM_FLOW_CHANNELS = 3
"""Output channels of a flow head: flow y, flow x, cell probability logit."""


def stack_flow_targets(
    batch_data_samples: list[SegDataSample], size: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """Batch targets padded to ``size``: ``(targets (N, 3, H, W), valid (N, 1, H, W))`` float.

    Each sample's ``gt_flows`` ``(4, h, w)`` (h <= H, w <= W) goes to the top-left corner (where the data
    preprocessor leaves the image); the rest is invalid.

    Raises:
        KeyError: a sample has no ``gt_flows`` (the pipeline lacks ``GenerateFlowTargets``/``PackFlowSegInputs``).
        ValueError: a target is larger than ``size`` or not 4-channel.
    """
    h, w = size
    tgts = []
    for i, ds in enumerate(batch_data_samples):
        if 'gt_flows' not in ds:
            raise KeyError(
                f'sample {i} has no gt_flows: add GenerateFlowTargets and PackFlowSegInputs to the pipeline'
            )
        t = ds.gt_flows.data
        if t.ndim != 3 or t.shape[0] != 4 or t.shape[1] > h or t.shape[2] > w:
            raise ValueError(f'sample {i}: gt_flows of shape {tuple(t.shape)} does not fit (4, {h}, {w})')
        tgts.append(F.pad(t.float(), (0, w - t.shape[2], 0, h - t.shape[1])))
    stacked = torch.stack(tgts)
    return stacked[:, :3], stacked[:, 3:4]


def flow_loss(
    logits: Tensor,
    targets: Tensor,
    valid: Tensor,
    flow_weight: float = 0.5,
    prob_weight: float = 1.0,
) -> dict[str, Tensor]:
    """Cellpose loss on valid pixels.

    Args:
        logits: ``(N, 3, H, W)`` raw head output (flows at ``FLOW_SCALE`` scale, probability logit).
        targets: ``(N, 3, H, W)`` unit-scale flows and 0/1 cell probability.
        valid: ``(N, 1, H, W)`` 0/1 pixel weights.
        flow_weight: Weight of the flow MSE (mean over valid pixels and both components).
        prob_weight: Weight of the BCE-with-logits (mean over valid pixels).

    Returns:
        ``{'loss_flow': ..., 'loss_prob': ...}`` scalars.
    """
    v = valid.to(logits.dtype)
    denom = v.sum().clamp(min=1.0)
    sq = (logits[:, :2] - FLOW_SCALE * targets[:, :2]) ** 2
    loss_flow = (sq * v).sum() / (2.0 * denom)
    bce = F.binary_cross_entropy_with_logits(logits[:, 2:3], targets[:, 2:3], reduction='none')
    loss_prob = (bce * v).sum() / denom
    return dict(loss_flow=flow_weight * loss_flow, loss_prob=prob_weight * loss_prob)


class _FlowHeadMixin:
    """Replaces a decode head's loss and prediction with the flow ones (mixed in before the mmseg head)."""

    align_corners: bool
    flow_weight: float
    prob_weight: float

    def _init_flow(self, flow_weight: float, prob_weight: float) -> None:
        self.flow_weight = float(flow_weight)
        self.prob_weight = float(prob_weight)

    def loss_by_feat(self, seg_logits: Tensor, batch_data_samples: list[SegDataSample]) -> dict:
        """Cellpose loss of ``seg_logits`` ``(N, 3, h, w)`` (resized to the padded input) against ``gt_flows``."""
        meta = batch_data_samples[0].metainfo
        size = tuple(meta.get('batch_input_shape', meta.get('pad_shape', meta.get('img_shape'))))[:2]
        targets, valid = stack_flow_targets(batch_data_samples, size)
        logits = resize(seg_logits, size=size, mode='bilinear', align_corners=self.align_corners)
        return flow_loss(
            logits, targets.to(logits.device), valid.to(logits.device), self.flow_weight, self.prob_weight
        )

    def predict_by_feat(self, seg_logits: Tensor, batch_img_metas: list[dict]) -> Tensor:
        """``(N, 3, H, W)`` at the input size: unit-scale flows (divided by ``FLOW_SCALE``) and the logit."""
        out = super().predict_by_feat(seg_logits, batch_img_metas)  # type: ignore[misc]
        return torch.cat([out[:, :2] / FLOW_SCALE, out[:, 2:]], dim=1)


def _flow_kwargs(kwargs: dict) -> dict:
    for key in ('num_classes', 'out_channels'):
        if kwargs.get(key, NUM_FLOW_CHANNELS) != NUM_FLOW_CHANNELS:
            raise ValueError(f'flow heads predict {NUM_FLOW_CHANNELS} channels; got {key}={kwargs[key]}')
    kwargs['num_classes'] = NUM_FLOW_CHANNELS
    kwargs['out_channels'] = NUM_FLOW_CHANNELS
    kwargs.setdefault(
        'loss_decode', dict(type='CrossEntropyLoss', avg_non_ignore=True, loss_weight=0.0)
    )  # unused; the base needs one
    return kwargs


@MODELS.register_module()
class FlowHead(_FlowHeadMixin, FCNHead):
    """``FCNHead`` predicting ``(flow_y, flow_x, cell logit)`` with the Cellpose loss (see the module docstring).

    Args:
        flow_weight: Weight of the flow MSE (0.5: Cellpose halves it).
        prob_weight: Weight of the probability BCE.
        **kwargs: ``FCNHead`` arguments (``in_channels``, ``channels``, ``num_convs``, ``in_index``, ...);
            ``num_classes`` / ``out_channels`` are fixed to 3.

    Shapes: ``forward`` maps the selected feature ``(N, C, h, w)`` to ``(N, 3, h, w)``.
    """

    def __init__(self, flow_weight: float = 0.5, prob_weight: float = 1.0, **kwargs) -> None:
        super().__init__(**_flow_kwargs(kwargs))
        self._init_flow(flow_weight, prob_weight)


@MODELS.register_module()
class FlowUPerHead(_FlowHeadMixin, UPerHead):
    """``UPerHead`` predicting ``(flow_y, flow_x, cell logit)`` with the Cellpose loss (see :class:`FlowHead`).

    Shapes: ``forward`` maps the multi-level features to ``(N, 3, h, w)`` at the finest level's size.
    """

    def __init__(self, flow_weight: float = 0.5, prob_weight: float = 1.0, **kwargs) -> None:
        super().__init__(**_flow_kwargs(kwargs))
        self._init_flow(flow_weight, prob_weight)


def is_flow_segmentor(model: object) -> bool:
    """Whether a built model predicts flows: a ``FlowEncoderDecoder`` or any segmentor with a flow decode head."""
    return isinstance(model, FlowEncoderDecoder) or isinstance(
        getattr(model, 'decode_head', None), _FlowHeadMixin
    )


@MODELS.register_module()
class FlowEncoderDecoder(EncoderDecoder):
    """``EncoderDecoder`` for flow heads: flip-aware flow channels and a foreground ``pred_sem_seg``.

    ``postprocess_result`` gives every sample ``seg_logits`` float ``(3, H0, W0)`` at the original image size
    (unit-scale flow y, flow x, cell logit; a horizontal flip in the meta negates flow x, a vertical one flow y,
    after the base class flipped the map back) and ``pred_sem_seg`` int64 ``(1, H0, W0)`` = ``logit > 0``.
    """

    def postprocess_result(self, seg_logits: Tensor, data_samples: list[SegDataSample] | None = None) -> list:
        """See the class docstring."""
        data_samples = super().postprocess_result(seg_logits, data_samples)
        for ds in data_samples:
            logits = ds.seg_logits.data
            flip = ds.metainfo.get('flip', False)
            if flip:
                sign = torch.ones(logits.shape[0], 1, 1, dtype=logits.dtype, device=logits.device)
                sign[1 if ds.metainfo.get('flip_direction') == 'horizontal' else 0] = -1
                logits = logits * sign
            ds.set_data(
                dict(
                    seg_logits=PixelData(data=logits),
                    pred_sem_seg=PixelData(data=(logits[2:3] > 0).long()),
                )
            )
        return data_samples
