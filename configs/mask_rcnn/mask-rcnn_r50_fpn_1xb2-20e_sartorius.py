# Mask R-CNN R50-FPN, 1 GPU x batch 2, 20 epochs, Sartorius fold 0, from scratch (no pretrained weights) with
# GroupNorm (batch 2 is too small for BatchNorm statistics; configs/_base_/models/mask-rcnn_r50_fpn_gn_sartorius.py).
#   python tools/train.py configs/mask_rcnn/mask-rcnn_r50_fpn_1xb2-20e_sartorius.py
# From ImageNet or COCO weights use mask-rcnn_r50_fpn_pretrained_1xb2-20e_sartorius.py (BatchNorm, as the weights).
_base_ = [
    '../_base_/models/mask-rcnn_r50_fpn_gn_sartorius.py',
    '../_base_/datasets/sartorius_instance.py',
    '../_base_/schedules/schedule_20e.py',
    '../_base_/default_runtime_det.py',
]

# LR of the 16-image schedule scaled linearly to a batch of 2; no weight decay on the GN affine parameters.
optim_wrapper = dict(optimizer=dict(lr=0.0025), paramwise_cfg=dict(norm_decay_mult=0.0))
