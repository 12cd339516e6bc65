# U-Net optimizer x loss study (Polisi et al.), base combination: Adam + binary cross-entropy, on Sartorius
# cell-vs-background masks (SartoriusCellDataset: the three cell types of semantic/train merged into one class).
# Paper set-up: 256x256 images, batch 8, 100 epochs (~8k iterations of 8 on its 654 training images), lr 1e-4
# dropping to 1e-7 after 40 % of the training; Keras optimizer defaults (the paper's framework) where torch's
# differ. The other combinations are leaves of this file; compression: tools/compress.py, pruning during
# training: the *_pruned leaf (MagnitudePruningHook 0.5 -> 0.9 every 100 iterations).
_base_ = [
    '../_base_/models/paper_unet.py',
    '../_base_/datasets/sartorius_semantic.py',
    '../_base_/seg_default_runtime.py',
    '../_base_/schedules/seg_schedule_40k.py',
]
crop_size = (256, 256)
max_iters = 8000
lr = 1e-4
model = dict(data_preprocessor=dict(size=crop_size))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomCrop', crop_size=crop_size),
    dict(type='RandomFlip', prob=[0.25, 0.25], direction=['horizontal', 'vertical']),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(batch_size=8, dataset=dict(type='SartoriusCellDataset', pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(type='SartoriusCellDataset'))
test_dataloader = val_dataloader
val_evaluator = [dict(type='IoUMetric', iou_metrics=['mIoU', 'mDice']), dict(type='ForegroundIoUMetric')]
test_evaluator = val_evaluator
optim_wrapper = dict(optimizer=dict(_delete_=True, type='Adam', lr=lr, eps=1e-7))
param_scheduler = [
    dict(
        type='MultiStepLR',
        by_epoch=False,
        begin=0,
        end=max_iters,
        milestones=[int(0.4 * max_iters)],
        gamma=1e-3,
    )
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters // 10)
default_hooks = dict(
    checkpoint=dict(
        by_epoch=False, interval=max_iters // 10, max_keep_ckpts=1, save_best='fgIoU', rule='greater'
    )
)
