# Mask R-CNN R50-FPN from ImageNet weights (or COCO weights through load_from), 1 GPU x batch 2, 20 epochs.
# mmdet's standard architecture with the BatchNorm the weights were trained with, frozen (norm_eval, as mmdet does
# for batch 2) together with the stem and first stage. Nothing is downloaded unless you ask for it:
#   python tools/train.py configs/mask_rcnn/mask-rcnn_r50_fpn_pretrained_1xb2-20e_sartorius.py \
#       --cfg-options pretrained=path/to/resnet50.pth            # torchvision ResNet-50 state dict (local file)
#   ...  --cfg-options pretrained=torchvision://resnet50         # downloads it (machines with internet only)
#   ...  --cfg-options load_from=path/to/mask_rcnn_r50_fpn_coco.pth   # whole-detector COCO weights (mmdet's
#        mask-rcnn_r50_fpn_1x_coco; the 80-class heads are skipped as shape mismatches, the rest loads)
_base_ = [
    '../_base_/models/mask-rcnn_r50_fpn_sartorius.py',
    '../_base_/datasets/sartorius_instance.py',
    '../_base_/schedules/schedule_20e.py',
    '../_base_/default_runtime_det.py',
]
pretrained = 'data/pretrained/resnet50.pth'  # default location of a local torchvision ResNet-50 checkpoint
model = dict(
    backbone=dict(
        frozen_stages=1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=True,
        init_cfg=dict(_delete_=True, type='Pretrained', checkpoint=pretrained),
    )
)
optim_wrapper = dict(optimizer=dict(lr=0.0025))
