# Mask R-CNN R50-FPN with GroupNorm everywhere (backbone, FPN, a 4-conv + 1-fc box head, mask head), for training
# from scratch at a small batch: BatchNorm statistics of 2 images per GPU are too noisy to learn from (mmdet's
# scratch recipe, Wu & He 2018 "Group Normalization"; He et al. 2019 "Rethinking ImageNet Pre-training").
# GN has no running statistics, so train and test behave alike at any batch size. ImageNet/COCO weights expect
# BatchNorm: use the *_pretrained leaf (over ./mask-rcnn_r50_fpn_sartorius.py) for those.
_base_ = ['./mask-rcnn_r50_fpn_sartorius.py']
norm_cfg = dict(type='GN', num_groups=32, requires_grad=True)
model = dict(
    backbone=dict(
        frozen_stages=-1, zero_init_residual=False, norm_cfg=norm_cfg, norm_eval=False, init_cfg=None
    ),
    neck=dict(norm_cfg=norm_cfg),
    roi_head=dict(
        bbox_head=dict(type='Shared4Conv1FCBBoxHead', conv_out_channels=256, norm_cfg=norm_cfg),
        mask_head=dict(norm_cfg=norm_cfg),
    ),
)
