# Study combination Nadam + BCE (torch.optim.NAdam, eps 1e-7 as Keras).
_base_ = ['./unet-s5-c64_bce-adam_1xb8-8k_sartorius-cell-256x256.py']
optim_wrapper = dict(optimizer=dict(_delete_=True, type='NAdam', lr=_base_.lr, eps=1e-7))
