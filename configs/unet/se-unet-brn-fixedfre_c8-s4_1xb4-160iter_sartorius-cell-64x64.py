# FRE study row "fixed filters" (the paper's additional experiment, Table 3): the same ten bottleneck channels
# (0-9 of 64) multiplied by 10,000 throughout training, no random re-draws; identity at inference.
_base_ = ['./se-unet-brn_c8-s4_1xb4-160iter_sartorius-cell-64x64.py']
model = dict(backbone=dict(fre_cfg=dict(fixed_channels=list(range(10)), factor=10000.0)))
