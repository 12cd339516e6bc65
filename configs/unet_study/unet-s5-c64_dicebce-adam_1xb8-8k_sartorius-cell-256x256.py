# Study combination Adam + Dice-BCE (BCE + soft Dice, 1:1).
_base_ = ['./unet-s5-c64_bce-adam_1xb8-8k_sartorius-cell-256x256.py']
model = dict(decode_head=dict(loss_decode=dict(_delete_=True, type='DiceBCELoss')))
