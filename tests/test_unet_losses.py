"""Hybrid losses of the U-Net study: hand-computed values, gradients, weight / ignore_index / reduction."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from custom_modules.seg.losses import BCELoss, DiceBCELoss, DiceFocalLoss, JaccardBCELoss

# Two pixels: logits 0 and ln 3 -> probabilities 0.5 and 0.75; truth background, cell.
LOGITS = torch.tensor([[[[0.0, math.log(3.0)]]]])
TARGET = torch.tensor([[[0, 1]]])
BCE = (math.log(2.0) + math.log(4.0 / 3.0)) / 2  # 0.4904
DICE = 1 - (2 * 0.75 + 1) / (1.25 + 1 + 1)  # smooth 1: 0.2308
JACCARD = 1 - (0.75 + 1) / (1.25 + 1 - 0.75 + 1)  # 0.3
# Focal gamma 2, alpha 0.25: background pixel p_t 0.5 weight 0.75; cell pixel p_t 0.75 weight 0.25.
FOCAL = (0.75 * 0.25 * math.log(2.0) + 0.25 * 0.0625 * math.log(4.0 / 3.0)) / 2


@pytest.mark.parametrize(
    ('loss', 'expected'),
    [
        (BCELoss(), BCE),
        (DiceBCELoss(), BCE + DICE),
        (JaccardBCELoss(), BCE + JACCARD),
        (DiceFocalLoss(), FOCAL + DICE),
        (DiceBCELoss(bce_weight=2.0, dice_weight=0.5), 2 * BCE + 0.5 * DICE),
        (JaccardBCELoss(bce_weight=0.0, jaccard_weight=1.0, loss_weight=3.0), 3 * JACCARD),
        (DiceFocalLoss(alpha=None, gamma=0.0, dice_weight=0.0), BCE),  # focal with gamma 0, no alpha = BCE
    ],
)
def test_hand_computed_values(loss, expected):
    assert float(loss(LOGITS, TARGET)) == pytest.approx(expected, abs=1e-6)


def test_loss_names_start_with_loss():
    names = {
        BCELoss().loss_name,
        DiceBCELoss().loss_name,
        DiceFocalLoss().loss_name,
        JaccardBCELoss().loss_name,
    }
    assert names == {'loss_bce', 'loss_dice_bce', 'loss_dice_focal', 'loss_jaccard_bce'}
    with pytest.raises(ValueError, match='loss_'):
        DiceBCELoss(loss_name='dice_bce')


def test_ignore_index_pixels_do_not_count():
    logits = torch.tensor([[[[0.0, math.log(3.0), 5.0]]]])
    target = torch.tensor([[[0, 1, 255]]])
    for loss, expected in ((DiceBCELoss(), BCE + DICE), (JaccardBCELoss(), BCE + JACCARD)):
        assert float(loss(logits, target, ignore_index=255)) == pytest.approx(expected, abs=1e-6)
    # another ignore label
    target7 = torch.tensor([[[0, 1, 7]]])
    assert float(BCELoss()(logits, target7, ignore_index=7)) == pytest.approx(BCE, abs=1e-6)


def test_pixel_weight_and_avg_factor():
    weight = torch.tensor([[[2.0, 0.0]]])
    assert float(BCELoss()(LOGITS, TARGET, weight=weight)) == pytest.approx(2 * math.log(2.0) / 2, abs=1e-6)
    assert float(BCELoss()(LOGITS, TARGET, avg_factor=4.0)) == pytest.approx(2 * BCE / 4, abs=1e-6)


def test_reductions():
    torch.manual_seed(0)
    pred = torch.randn(3, 1, 5, 6)
    target = torch.randint(0, 2, (3, 5, 6))
    loss = JaccardBCELoss()
    per_image = loss(pred, target, reduction_override='none')
    assert per_image.shape == (3,)
    for i in range(3):  # per image == the loss of that image alone
        assert float(per_image[i]) == pytest.approx(float(loss(pred[i : i + 1], target[i : i + 1])), abs=1e-5)
    summed = BCELoss(reduction='sum')(pred, target)
    ref = F.binary_cross_entropy_with_logits(pred[:, 0], target.float(), reduction='sum')
    assert float(summed) == pytest.approx(float(ref), rel=1e-5)
    with pytest.raises(ValueError, match='reduction'):
        loss(pred, target, reduction_override='max')


def test_bce_matches_mmseg_cross_entropy_sigmoid():
    from mmseg.models.losses import CrossEntropyLoss

    torch.manual_seed(1)
    pred = torch.randn(2, 1, 8, 8)
    target = torch.randint(0, 2, (2, 8, 8))
    target[0, :2] = 255
    ours = BCELoss()(pred, target, ignore_index=255)
    ref = CrossEntropyLoss(use_sigmoid=True, avg_non_ignore=True)(pred, target, ignore_index=255)
    assert float(ours) == pytest.approx(float(ref), rel=1e-5)


def test_softmax_multiclass():
    torch.manual_seed(2)
    pred = torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 4, 4))
    target[1, 0, 0] = 255
    ce = F.cross_entropy(pred, target, ignore_index=255)
    assert float(BCELoss()(pred, target)) == pytest.approx(float(ce), rel=1e-5)
    valid = (target != 255).unsqueeze(1).float()
    probs = pred.softmax(1) * valid
    onehot = F.one_hot(target.clamp(max=2), 3).permute(0, 3, 1, 2).float() * valid
    inter, psum, ysum = (probs * onehot).sum((0, 2, 3)), probs.sum((0, 2, 3)), onehot.sum((0, 2, 3))
    dice = (1 - (2 * inter + 1) / (psum + ysum + 1)).mean()
    assert float(DiceBCELoss()(pred, target)) == pytest.approx(float(ce + dice), rel=1e-5)
    with pytest.raises(ValueError, match='labels'):
        DiceBCELoss()(pred, torch.full((2, 4, 4), 3))


@pytest.mark.parametrize('loss_cls', [BCELoss, DiceBCELoss, DiceFocalLoss, JaccardBCELoss])
@pytest.mark.parametrize('channels', [1, 3])
def test_gradients_match_finite_differences(loss_cls, channels):
    torch.manual_seed(3)
    pred = torch.randn(2, channels, 3, 4, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, max(2, channels), (2, 3, 4))
    target[0, 0, 0] = 255
    loss = loss_cls()
    assert torch.autograd.gradcheck(lambda p: loss(p, target), (pred,), eps=1e-6, atol=1e-5)
    out = loss(pred, target)
    out.backward()
    assert torch.isfinite(pred.grad).all()
    assert float(pred.grad[0, :, 0, 0].abs().sum()) == 0.0  # the ignored pixel gets no gradient


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match='target'):
        BCELoss()(torch.zeros(1, 1, 2, 2), torch.zeros(1, 3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match='labels'):
        BCELoss()(torch.zeros(1, 1, 2, 2), torch.full((1, 2, 2), 2))
