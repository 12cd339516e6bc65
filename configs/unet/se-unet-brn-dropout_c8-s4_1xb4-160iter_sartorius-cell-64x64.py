# FRE study row "Dropout (same percentage as the proposed method)": channel dropout at the bottleneck with
# rate B / C, B being the FRE row's searched number of enhanced channels and C = 64.
_base_ = ['./se-unet-brn-fre_c8-s4_1xb4-160iter_sartorius-cell-64x64.py']
bottleneck_channels = 64
model = dict(backbone=dict(fre_cfg=None, bottleneck_dropout=_base_.fre_num_enhanced / bottleneck_channels))
custom_hooks = []
