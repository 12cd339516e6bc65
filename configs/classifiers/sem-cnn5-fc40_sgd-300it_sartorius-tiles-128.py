# SEM nanofiber paper (Ieracitano et al. 2020), CNN5* = 5 conv blocks + FC 40 + softmax on 128x128 inputs;
# Gaussian init std 1e-2; SGD momentum 0.9, weight decay 1e-4, lr 1e-3, batch 32, 300 iterations.
_base_ = ['./_base_/sartorius_cls_tiles.py', './_base_/cls_default_runtime.py']
model = dict(
    type='SEMCNN',
    num_blocks=5,
    fc_hidden=40,
    num_classes=3,
    input_size=128,
    init_std=0.01,
    data_preprocessor=dict(type='ImgDataPreprocessor', mean=[127.5], std=[127.5]),
)
optim_wrapper = dict(
    type='OptimWrapper', optimizer=dict(type='SGD', lr=1e-3, momentum=0.9, weight_decay=1e-4)
)
train_cfg = dict(type='IterBasedTrainLoop', max_iters=300, val_interval=100)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
log_processor = dict(by_epoch=False)
default_hooks = dict(checkpoint=dict(by_epoch=False), logger=dict(interval=50))
