"""Hybrid segmentation losses of the U-Net optimizer x loss study: BCE, Dice-BCE, Dice-Focal, Jaccard-BCE.

Each loss is ``pixel_weight * pixel term + region_weight * region term`` and follows mmseg's loss contract
(``forward(pred, target, weight=None, ignore_index=255, **kwargs)``, ``loss_name`` starting with ``loss_``):

- pixel term: binary cross-entropy (``BCELoss``, ``DiceBCELoss``, ``JaccardBCELoss``) or focal loss
  (``DiceFocalLoss``) per pixel, weighted by ``weight`` and averaged over the valid (not ``ignore_index``)
  pixels, or summed and divided by ``avg_factor`` when given;
- region term: soft Dice ``1 - (2 sum(p y) + s) / (sum(p) + sum(y) + s)`` or soft Jaccard
  ``1 - (sum(p y) + s) / (sum(p) + sum(y) - sum(p y) + s)`` over the valid pixels (``weight`` multiplies
  ``p`` and ``y``), pooled over the batch (``per_image=False``, as Keras' ``segmentation_models`` which the
  paper's losses come from) or per image and averaged, and averaged over the classes.

A 1-channel ``pred`` ``(N, 1, H, W)`` is a sigmoid foreground logit with ``target`` ``(N, H, W)`` in {0, 1}
(plus ``ignore_index``); a C-channel ``pred`` ``(N, C, H, W)``, C >= 2, is a softmax over C classes with
``target`` in ``0..C-1`` (cross-entropy and multi-class focal loss; the region term averages the C classes).

Reduction: ``'mean'`` (default) as above; ``'sum'`` sums the pixel term and the per-image region terms;
``'none'`` returns the per-image loss ``(N,)`` (pixel term averaged over each image's valid pixels, region
term per image).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from mmseg.registry import MODELS
from torch import nn

_REDUCTIONS = ('none', 'mean', 'sum')


def _check_inputs(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, ignore_index: int):
    if pred.dim() != 4:
        raise ValueError(f'pred must be (N, C, H, W), got shape {tuple(pred.shape)}')
    n, c, h, w = pred.shape
    if target.shape != (n, h, w):
        raise ValueError(f'target must be (N, H, W) = {(n, h, w)}, got {tuple(target.shape)}')
    if weight is not None and weight.shape != (n, h, w):
        raise ValueError(f'weight must be (N, H, W) = {(n, h, w)}, got {tuple(weight.shape)}')
    valid = target != ignore_index
    labels = target[valid]
    max_label = 1 if c == 1 else c - 1
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > max_label):
        raise ValueError(
            f'target labels must be in 0..{max_label} (or ignore_index={ignore_index}) for a {c}-channel pred, '
            f'got range {int(labels.min())}..{int(labels.max())}'
        )


def _probs_and_onehot(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor):
    """Probabilities ``(N, K, H, W)`` and one-hot truth ``(N, K, H, W)`` (K = 1 for sigmoid, C for softmax)."""
    safe = torch.where(valid, target, torch.zeros_like(target)).long()
    if pred.shape[1] == 1:
        return pred.sigmoid(), safe.unsqueeze(1).to(pred.dtype)
    onehot = F.one_hot(safe, pred.shape[1]).permute(0, 3, 1, 2).to(pred.dtype)
    return pred.softmax(dim=1), onehot


def pixel_bce(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-pixel (binary) cross-entropy ``(N, H, W)``; 0 at invalid pixels."""
    safe = torch.where(valid, target, torch.zeros_like(target)).long()
    if pred.shape[1] == 1:
        loss = F.binary_cross_entropy_with_logits(pred[:, 0], safe.to(pred.dtype), reduction='none')
    else:
        loss = F.cross_entropy(pred, safe, reduction='none')
    return loss * valid


def pixel_focal(
    pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, gamma: float, alpha: float | None
) -> torch.Tensor:
    """Per-pixel focal loss ``-a_t (1 - p_t)**gamma log p_t`` ``(N, H, W)``; 0 at invalid pixels.

    Binary: ``a_t = alpha`` for foreground, ``1 - alpha`` for background; softmax: ``a_t = alpha`` (None: 1).
    """
    safe = torch.where(valid, target, torch.zeros_like(target)).long()
    if pred.shape[1] == 1:
        y = safe.to(pred.dtype)
        logp = F.logsigmoid(pred[:, 0])
        log1mp = F.logsigmoid(-pred[:, 0])
        logpt = y * logp + (1 - y) * log1mp
        a_t = 1.0 if alpha is None else y * alpha + (1 - y) * (1 - alpha)
    else:
        logpt = F.log_softmax(pred, dim=1).gather(1, safe.unsqueeze(1))[:, 0]
        a_t = 1.0 if alpha is None else alpha
    pt = logpt.exp()
    return -a_t * (1 - pt).clamp(min=0) ** gamma * logpt * valid


def region_loss(
    probs: torch.Tensor, onehot: torch.Tensor, mask: torch.Tensor, kind: str, smooth: float, per_image: bool
) -> torch.Tensor:
    """Soft Dice / Jaccard loss averaged over classes: ``(N,)`` if ``per_image`` else a scalar.

    Args:
        probs: ``(N, K, H, W)`` probabilities.
        onehot: ``(N, K, H, W)`` truth.
        mask: ``(N, H, W)`` pixel weights (0 at ignored pixels).
        kind: ``'dice'`` or ``'jaccard'``.
        smooth: Additive smoothing of numerator and denominator.
        per_image: Reduce over each image separately instead of pooling the batch.
    """
    m = mask.unsqueeze(1)
    dims = (2, 3) if per_image else (0, 2, 3)
    inter = (probs * onehot * m).sum(dims)
    p_sum = (probs * m).sum(dims)
    y_sum = (onehot * m).sum(dims)
    if kind == 'dice':
        score = (2 * inter + smooth) / (p_sum + y_sum + smooth)
    else:
        score = (inter + smooth) / (p_sum + y_sum - inter + smooth)
    return (1 - score).mean(dim=-1)


class HybridSegLoss(nn.Module):
    """``pixel_weight * (BCE or focal) + region_weight * (Dice or Jaccard)``; see the module docstring.

    Args:
        pixel: ``'bce'`` or ``'focal'``.
        region: ``'dice'``, ``'jaccard'`` or None (pixel term only).
        pixel_weight: Weight of the pixel term.
        region_weight: Weight of the region term.
        loss_weight: Overall factor (mmseg convention).
        reduction: ``'mean'``, ``'sum'`` or ``'none'`` (per-image ``(N,)``).
        smooth: Smoothing of the region term.
        per_image: Region term per image (averaged) instead of pooled over the batch.
        gamma: Focal exponent.
        alpha: Focal class balance (binary: foreground weight; None: no balancing).
        loss_name: Name in the loss dict; must start with ``loss_``.
    """

    def __init__(
        self,
        pixel: str = 'bce',
        region: str | None = None,
        pixel_weight: float = 1.0,
        region_weight: float = 1.0,
        loss_weight: float = 1.0,
        reduction: str = 'mean',
        smooth: float = 1.0,
        per_image: bool = False,
        gamma: float = 2.0,
        alpha: float | None = 0.25,
        loss_name: str = 'loss_hybrid',
    ) -> None:
        super().__init__()
        if pixel not in ('bce', 'focal'):
            raise ValueError(f"{type(self).__name__}: pixel must be 'bce' or 'focal', got {pixel!r}")
        if region not in (None, 'dice', 'jaccard'):
            raise ValueError(
                f"{type(self).__name__}: region must be 'dice', 'jaccard' or None, got {region!r}"
            )
        if reduction not in _REDUCTIONS:
            raise ValueError(
                f'{type(self).__name__}: reduction must be one of {_REDUCTIONS}, got {reduction!r}'
            )
        if not loss_name.startswith('loss_'):
            raise ValueError(f"{type(self).__name__}: loss_name must start with 'loss_', got {loss_name!r}")
        if min(pixel_weight, region_weight) < 0 or smooth < 0 or gamma < 0:
            raise ValueError(f'{type(self).__name__}: weights, smooth and gamma must be >= 0')
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise ValueError(f'{type(self).__name__}: alpha must be in [0, 1] or None, got {alpha}')
        self.pixel = pixel
        self.region = region
        self.pixel_weight = float(pixel_weight)
        self.region_weight = float(region_weight) if region is not None else 0.0
        self.loss_weight = float(loss_weight)
        self.reduction = reduction
        self.smooth = float(smooth)
        self.per_image = per_image
        self.gamma = float(gamma)
        self.alpha = alpha
        self._loss_name = loss_name

    @property
    def loss_name(self) -> str:
        """Key of this loss in mmseg's loss dict (``loss_`` prefix: counted in the total loss)."""
        return self._loss_name

    def forward(
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        weight: torch.Tensor | None = None,
        ignore_index: int = 255,
        avg_factor: float | None = None,
        reduction_override: str | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """Loss of logits ``pred`` ``(N, C, H, W)`` against labels ``target`` ``(N, H, W)``.

        Args:
            pred: Logits; C = 1 (sigmoid foreground) or C >= 2 (softmax).
            target: Integer labels; ``ignore_index`` pixels do not count.
            weight: Optional per-pixel weights ``(N, H, W)``.
            ignore_index: Label to ignore.
            avg_factor: Divisor of the summed pixel term under ``'mean'`` (default: the number of valid
                pixels).
            reduction_override: Replaces ``reduction`` for this call.

        Returns:
            Scalar (``'mean'``/``'sum'``) or ``(N,)`` (``'none'``).
        """
        reduction = reduction_override or self.reduction
        if reduction not in _REDUCTIONS:
            raise ValueError(
                f'{type(self).__name__}: reduction must be one of {_REDUCTIONS}, got {reduction!r}'
            )
        _check_inputs(pred, target, weight, ignore_index)
        valid = target != ignore_index
        mask = valid.to(pred.dtype) if weight is None else valid.to(pred.dtype) * weight.to(pred.dtype)
        if self.pixel == 'bce':
            pix = pixel_bce(pred, target, valid)
        else:
            pix = pixel_focal(pred, target, valid, self.gamma, self.alpha)
        if weight is not None:
            pix = pix * weight.to(pred.dtype)
        n_valid = valid.sum(dim=(1, 2)).to(pred.dtype)
        if reduction == 'none':
            pixel_term = pix.sum(dim=(1, 2)) / n_valid.clamp(min=1)
        elif reduction == 'sum':
            pixel_term = pix.sum()
        else:
            denom = avg_factor if avg_factor is not None else valid.sum().clamp(min=1)
            pixel_term = pix.sum() / denom
        loss = self.pixel_weight * pixel_term
        if self.region is not None and self.region_weight > 0:
            probs, onehot = _probs_and_onehot(pred, target, valid)
            per_image = self.per_image or reduction == 'none'
            reg = region_loss(probs, onehot, mask, self.region, self.smooth, per_image)
            if per_image and reduction != 'none':
                reg = reg.sum() if reduction == 'sum' else reg.mean()
            loss = loss + self.region_weight * reg
        return self.loss_weight * loss


@MODELS.register_module()
class BCELoss(HybridSegLoss):
    """Binary (1-channel sigmoid) or softmax cross-entropy alone, with the hybrid losses' reduction rules."""

    def __init__(
        self, loss_weight: float = 1.0, reduction: str = 'mean', loss_name: str = 'loss_bce'
    ) -> None:
        super().__init__(
            pixel='bce', region=None, loss_weight=loss_weight, reduction=reduction, loss_name=loss_name
        )


@MODELS.register_module()
class DiceBCELoss(HybridSegLoss):
    """``bce_weight * BCE + dice_weight * soft Dice`` (segmentation_models' ``bce_dice_loss`` at 1:1)."""

    def __init__(
        self,
        bce_weight: float = 1.0,
        dice_weight: float = 1.0,
        loss_weight: float = 1.0,
        reduction: str = 'mean',
        smooth: float = 1.0,
        per_image: bool = False,
        loss_name: str = 'loss_dice_bce',
    ) -> None:
        super().__init__(
            'bce',
            'dice',
            bce_weight,
            dice_weight,
            loss_weight,
            reduction,
            smooth,
            per_image,
            loss_name=loss_name,
        )


@MODELS.register_module()
class DiceFocalLoss(HybridSegLoss):
    """``focal_weight * focal + dice_weight * soft Dice`` (``binary_focal_dice_loss``: gamma 2, alpha 0.25)."""

    def __init__(
        self,
        focal_weight: float = 1.0,
        dice_weight: float = 1.0,
        gamma: float = 2.0,
        alpha: float | None = 0.25,
        loss_weight: float = 1.0,
        reduction: str = 'mean',
        smooth: float = 1.0,
        per_image: bool = False,
        loss_name: str = 'loss_dice_focal',
    ) -> None:
        super().__init__(
            'focal',
            'dice',
            focal_weight,
            dice_weight,
            loss_weight,
            reduction,
            smooth,
            per_image,
            gamma=gamma,
            alpha=alpha,
            loss_name=loss_name,
        )


@MODELS.register_module()
class JaccardBCELoss(HybridSegLoss):
    """``bce_weight * BCE + jaccard_weight * soft Jaccard`` (segmentation_models' ``bce_jaccard_loss``)."""

    def __init__(
        self,
        bce_weight: float = 1.0,
        jaccard_weight: float = 1.0,
        loss_weight: float = 1.0,
        reduction: str = 'mean',
        smooth: float = 1.0,
        per_image: bool = False,
        loss_name: str = 'loss_jaccard_bce',
    ) -> None:
        super().__init__(
            'bce',
            'jaccard',
            bce_weight,
            jaccard_weight,
            loss_weight,
            reduction,
            smooth,
            per_image,
            loss_name=loss_name,
        )
