# CPU demo: UPerNet on ResNet-18-V1c, 256x256 crops, batch 2 (PPM BatchNorm needs >= 2), 250 iterations,
# CE + Dice on the cell classes (configs/_base_/seg_demo_cpu.py); slim heads
# (64 / 32 channels) keep an iteration near 0.5 s on 2 cores.
_base_ = ['../_base_/models/upernet_r50.py', '../_base_/seg_demo_cpu.py']
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    data_preprocessor=dict(size=_base_.crop_size),
    backbone=dict(depth=18, norm_cfg=norm_cfg),
    decode_head=dict(
        in_channels=[64, 128, 256, 512], channels=64, norm_cfg=norm_cfg, loss_decode=_base_.loss_decode
    ),
    auxiliary_head=dict(in_channels=256, channels=32, norm_cfg=norm_cfg),
)
