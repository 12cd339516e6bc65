# CPU demo overrides for the semantic models: 256x256 crops, batch 2, 250 iterations (about 2.5 minutes for
# UPerNet-R18 on 2 cores; leaves may set their own schedule), one validation at the end, plain BN (leaves set
# it), data in work_dirs/demo/data/ (tools/make_synthetic.py + tools/prepare_sartorius.py).
# Cells cover only 0.2-7.5 % of the pixels, so the loss adds to the CE a Dice term on the three cell classes
# (mmseg DiceLoss's `ignore_index` drops a class *channel*: 0 drops background), which makes the heads predict
# foreground early instead of settling on "all background". (Down-weighting background in the CE as well made
# the U-Net over-predict cells: fgIoU 44 against 80.)
_base_ = ['./datasets/sartorius_semantic.py', './seg_default_runtime.py', './schedules/seg_schedule_40k.py']
data_root = 'work_dirs/demo/data/'
crop_size = (256, 256)
max_iters = 250
warmup_iters = 20
loss_decode = [
    dict(type='CrossEntropyLoss', use_sigmoid=False, avg_non_ignore=True, loss_weight=1.0),
    dict(type='DiceLoss', use_sigmoid=False, ignore_index=0, naive_dice=True, loss_weight=1.0),
]
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.9),
    dict(type='RandomFlip', prob=[0.25, 0.25], direction=['horizontal', 'vertical']),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=2,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=train_pipeline),
)
val_dataloader = dict(num_workers=0, persistent_workers=False, dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
optim_wrapper = dict(optimizer=dict(_delete_=True, type='AdamW', lr=2e-3, weight_decay=1e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, begin=0, end=warmup_iters, by_epoch=False),
    dict(type='PolyLR', eta_min=1e-5, power=0.9, begin=warmup_iters, end=max_iters, by_epoch=False),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20, log_metric_by_epoch=False),
    # every 50 iterations (and at the end): an interrupted demo resumes from the last one
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=50, max_keep_ckpts=1, save_best=None),
)
env_cfg = dict(cudnn_benchmark=False)
