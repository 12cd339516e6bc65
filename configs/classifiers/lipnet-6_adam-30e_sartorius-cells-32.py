# Liposome report, LipNet-6: LipNet-4 with a third conv block, 32x32 inputs.
_base_ = ['./lipnet-4_adam-30e_sartorius-cells-28.py']
crop_size = 32
model = dict(variant='6')
train_dataloader = dict(dataset=dict(crop_size=crop_size))
val_dataloader = dict(dataset=dict(crop_size=crop_size))
test_dataloader = val_dataloader
