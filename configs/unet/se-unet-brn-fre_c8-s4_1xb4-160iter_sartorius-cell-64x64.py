# FRE study row "Proposed method": Feature Random Enhancement at the 64-channel bottleneck, B channels times
# X in training only, re-drawn every epoch (5 iterations: 20 images / batch 4) by FRERedrawHook; identity at
# inference. B and X are searched with TPE (configs/unet/search/fre_b_x.yaml); the values here are that
# search's best (6 trials on fold 1, docs/results/fre_study.md). Batch renormalization as in the paper (the base config's norm_cfg).
_base_ = ['./se-unet-brn_c8-s4_1xb4-160iter_sartorius-cell-64x64.py']
fre_num_enhanced = 51
fre_factor = 38.6
model = dict(backbone=dict(fre_cfg=dict(num_enhanced=fre_num_enhanced, factor=fre_factor)))
custom_hooks = [dict(type='FRERedrawHook', interval='epoch')]
