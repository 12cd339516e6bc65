# Paper comparison "U-Net+SE without deep layers": the 512-channel stage (and its decoder stage) removed.
_base_ = ['./se-unet_c64-s4_4xb4-40k_sartorius-704x520.py']
model = dict(backbone=dict(num_stages=3))
