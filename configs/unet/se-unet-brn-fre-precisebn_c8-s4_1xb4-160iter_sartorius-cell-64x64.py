# FRE study row "FRE + precise BN": the FRE row, then after the last iteration the norm layers' running
# statistics are recomputed over 20 training batches with FRE switched off (PreciseBNHook), so inference
# normalizes with statistics of the features it sees (before validation and the final checkpoint).
_base_ = ['./se-unet-brn-fre_c8-s4_1xb4-160iter_sartorius-cell-64x64.py']
custom_hooks = [dict(type='FRERedrawHook', interval='epoch'), dict(type='PreciseBNHook', num_batches=20)]
