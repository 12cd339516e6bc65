# CPU demo: UPerNet on ResNet-18-V1c, 128x128 crops, batch 2 (PPM BatchNorm needs >= 2), 30 iterations.
_base_ = ['../_base_/models/upernet_r50.py', '../_base_/seg_demo_cpu.py']
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    data_preprocessor=dict(size=_base_.crop_size),
    backbone=dict(depth=18, norm_cfg=norm_cfg),
    decode_head=dict(in_channels=[64, 128, 256, 512], channels=128, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=256, channels=64, norm_cfg=norm_cfg),
)
