# CPU demo: U-Net+SE+FRE with 8 base channels (bottleneck 64 channels), 128x128 crops, 30 iterations.
# B scaled to the narrower bottleneck: 20 of 64 channels (~162/512), X = 632.
_base_ = ['../_base_/models/se_unet.py', '../_base_/seg_demo_cpu.py']
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    data_preprocessor=dict(size=_base_.crop_size),
    backbone=dict(base_channels=8, norm_cfg=norm_cfg, fre_cfg=dict(num_enhanced=20, factor=632.0)),
    decode_head=dict(in_channels=8, channels=8, norm_cfg=norm_cfg),
)
custom_hooks = [dict(type='FRERedrawHook', interval='epoch')]
# 8-channel classifier input: a larger step than the UPerNet demo so 30 iterations move the loss.
optim_wrapper = dict(optimizer=dict(lr=1e-2))
