# U-Net+SE with the Feature Random Enhancement module at the 512-channel bottleneck: in training only,
# B=162 randomly chosen channels are multiplied by X=632 (the paper's values for 512 channels on its
# mouse-liver cell data; B=8, X=250 on its Drosophila data); the choice is re-drawn every epoch
# (one pass over the training set by all GPUs) by FRERedrawHook. Inference is identical in cost to the baseline.
_base_ = ['./se-unet_c64-s4_4xb4-40k_sartorius-704x520.py']
fre_num_enhanced = 162
fre_factor = 632.0
model = dict(backbone=dict(fre_cfg=dict(num_enhanced=fre_num_enhanced, factor=fre_factor)))
custom_hooks = [dict(type='FRERedrawHook', interval='epoch')]
