# Mask R-CNN R18-FPN (lighter backbone, same heads and schedule as the R50 config).
_base_ = './mask-rcnn_r50_fpn_1xb2-20e_sartorius.py'

model = dict(backbone=dict(depth=18, init_cfg=None), neck=dict(in_channels=[64, 128, 256, 512]))
