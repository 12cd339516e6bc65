# Study combination RMSprop + Jaccard-BCE (the paper's best: its Table 3 last row).
_base_ = ['./unet-s5-c64_bce-rmsprop_1xb8-8k_sartorius-cell-256x256.py']
model = dict(decode_head=dict(loss_decode=dict(_delete_=True, type='JaccardBCELoss')))
