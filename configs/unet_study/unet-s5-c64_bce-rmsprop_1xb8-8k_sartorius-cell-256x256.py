# Study combination RMSprop + BCE (Keras defaults: rho 0.9 = torch alpha, eps 1e-7).
_base_ = ['./unet-s5-c64_bce-adam_1xb8-8k_sartorius-cell-256x256.py']
optim_wrapper = dict(optimizer=dict(_delete_=True, type='RMSprop', lr=_base_.lr, alpha=0.9, eps=1e-7))
