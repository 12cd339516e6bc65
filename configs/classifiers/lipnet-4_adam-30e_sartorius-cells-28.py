# Liposome report, LipNet-4 (VGG-11 style: 2 x [conv, conv, max-pool, dropout], FC, softmax), 28x28 instance crops,
# cropped and masked, oversampled training set, full augmentation; Adam (the report: Adam and SGD performed alike),
# batch 32, label smoothing 0.1, fixed epoch count (the report fixes it by early stopping beforehand).
_base_ = ['./_base_/sartorius_cls_instances.py', './_base_/cls_default_runtime.py']
model = dict(
    type='LipNet',
    variant='4',
    num_classes=3,
    label_smoothing=0.1,
    data_preprocessor=dict(type='ImgDataPreprocessor', mean=[127.5], std=[127.5]),
)
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='Adam', lr=1e-3))
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=30, val_interval=5)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
