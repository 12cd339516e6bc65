# FRE study row "U-Net + SE block without deep layers": the 64-channel stage (and its decoder stage) removed.
_base_ = ['./se-unet-brn_c8-s4_1xb4-160iter_sartorius-cell-64x64.py']
model = dict(backbone=dict(num_stages=3))
