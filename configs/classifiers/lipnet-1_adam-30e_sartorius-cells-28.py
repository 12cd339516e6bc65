# Liposome report, LipNet-1 (see custom_modules/cls/models.py); otherwise as LipNet-4.
_base_ = ['./lipnet-4_adam-30e_sartorius-cells-28.py']
model = dict(variant='1')
