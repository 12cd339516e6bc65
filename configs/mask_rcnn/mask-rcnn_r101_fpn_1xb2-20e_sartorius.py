# Mask R-CNN R101-FPN (deeper backbone, same heads and schedule as the R50 config).
_base_ = './mask-rcnn_r50_fpn_1xb2-20e_sartorius.py'

model = dict(backbone=dict(depth=101, init_cfg=None))
