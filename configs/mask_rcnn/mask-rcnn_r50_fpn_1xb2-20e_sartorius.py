# Mask R-CNN R50-FPN, 1 GPU x batch 2, 20 epochs, Sartorius fold 0, from scratch (no pretrained weights).
#   python tools/train.py configs/mask_rcnn/mask-rcnn_r50_fpn_1xb2-20e_sartorius.py
#   (with a checkpoint: --cfg-options load_from=path/to/mask_rcnn_coco.pth)
_base_ = [
    '../_base_/models/mask-rcnn_r50_fpn_sartorius.py',
    '../_base_/datasets/sartorius_instance.py',
    '../_base_/schedules/schedule_20e.py',
    '../_base_/default_runtime_det.py',
]

# LR of the 16-image schedule scaled linearly to a batch of 2.
optim_wrapper = dict(optimizer=dict(lr=0.0025))
