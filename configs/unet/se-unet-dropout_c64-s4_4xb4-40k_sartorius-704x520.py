# Paper comparison "Dropout (same percentage as FRE)": channel dropout (Dropout2d) at the bottleneck with
# rate B / C = 162 / 512.
_base_ = ['./se-unet_c64-s4_4xb4-40k_sartorius-704x520.py']
fre_num_enhanced = 162
bottleneck_channels = 512
model = dict(backbone=dict(bottleneck_dropout=fre_num_enhanced / bottleneck_channels))
