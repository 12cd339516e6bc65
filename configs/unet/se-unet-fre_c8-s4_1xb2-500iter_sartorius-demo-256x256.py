# CPU demo: U-Net+SE+FRE with 8 base channels (bottleneck 64 channels), 256x256 crops, 500 iterations (about
# 0.2 s each on 2 cores), CE + Dice on the cell classes (configs/_base_/seg_demo_cpu.py).
# FRE scaled to the narrow bottleneck: B = 8 of 64 channels, X = 10 (the paper's B=162/512, X=632 swamps a
# 64-channel bottleneck trained for a few hundred iterations, and the BN after it keeps statistics of the
# enhanced features that eval mode, where FRE is the identity, does not see), re-drawn every epoch.
_base_ = ['../_base_/models/se_unet.py', '../_base_/seg_demo_cpu.py']
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    data_preprocessor=dict(size=_base_.crop_size),
    backbone=dict(base_channels=8, norm_cfg=norm_cfg, fre_cfg=dict(num_enhanced=8, factor=10.0)),
    decode_head=dict(in_channels=8, channels=8, norm_cfg=norm_cfg, loss_decode=_base_.loss_decode),
)
custom_hooks = [dict(type='FRERedrawHook', interval='epoch')]
# 8-channel classifier input: a larger step than the UPerNet demo, and twice its iterations (each is cheaper).
optim_wrapper = dict(optimizer=dict(lr=5e-3))
max_iters = 500
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, begin=0, end=_base_.warmup_iters, by_epoch=False),
    dict(type='PolyLR', eta_min=1e-5, power=0.9, begin=_base_.warmup_iters, end=max_iters, by_epoch=False),
]
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(checkpoint=dict(interval=max_iters))
