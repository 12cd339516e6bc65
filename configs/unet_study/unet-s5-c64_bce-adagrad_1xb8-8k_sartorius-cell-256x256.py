# Study combination Adagrad + BCE (Keras defaults: initial accumulator 0.1, eps 1e-7; same lr as the others).
_base_ = ['./unet-s5-c64_bce-adam_1xb8-8k_sartorius-cell-256x256.py']
optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='Adagrad', lr=_base_.lr, initial_accumulator_value=0.1, eps=1e-7)
)
