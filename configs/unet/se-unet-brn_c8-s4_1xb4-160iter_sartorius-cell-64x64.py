# FRE study baseline at CPU scale ("U-Net + SE block" row of the FRE paper's Tables 1-2): SE-U-Net with
# 8 base channels (8-16-32-64, the 64-channel bottleneck is the paper's "yellow layer"), batch
# renormalization before every ReLU as in the paper (r_max 1 -> 3, d_max 0 -> 5 after a 25-iteration warm-up,
# the paper's 5k/35k/20k-step schedule scaled to 160 iterations), from scratch. Loss: softmax cross-entropy
# (the paper's) plus a Dice term on the cell class(es), without which 100-200 iterations ended predicting only
# background (measured: cell IoU 0 after 100 iterations with CE alone), and cells (about 11 % of the pixels)
# weighted 4x in the CE: with CE + Dice unweighted the baseline still predicted only background after 160
# iterations at lr 3e-3 (2 of 2 seeds) and at lr 1e-2. AdamW at lr 1e-2.
# Labels: cell vs background (SartoriusCellDataset merges the three cell types); the boundary variant swaps
# in SartoriusCellBoundaryDataset (see studies/fre.py). Random 64x64 crops, batch 4,
# AdamW, 160 iterations, one whole-image validation at the end on the fold's validation split.
# Data: a prepared Kaggle-layout root (tools/prepare_sartorius.py), set with --cfg-options data_root=DIR; the
# study (studies/fre.py) uses a copy downscaled 2x (352x260 images, nearest-neighbour labels),
# so a 64x64 crop covers the field of view of a 128x128 crop at full resolution at a quarter of the cost.
_base_ = [
    '../_base_/models/se_unet.py',
    '../_base_/datasets/sartorius_semantic.py',
    '../_base_/seg_default_runtime.py',
    '../_base_/schedules/seg_schedule_40k.py',
]
data_root = 'data/sartorius/'
crop_size = (64, 64)
max_iters = 160
warmup_iters = 20
num_classes = 2
dataset_type = 'SartoriusCellDataset'
loss_decode = [
    dict(
        type='CrossEntropyLoss',
        use_sigmoid=False,
        avg_non_ignore=False,  # mmseg fails with class_weight and True; the class-weighted mean is over valid pixels anyway
        loss_weight=1.0,
        class_weight=[1.0, 4.0],
    ),
    dict(type='DiceLoss', use_sigmoid=False, ignore_index=0, naive_dice=True, loss_weight=1.0),
]
norm_cfg = dict(
    type='BRN',
    requires_grad=True,
    momentum=0.1,
    r_max=3.0,
    d_max=5.0,
    warmup_iters=25,
    r_max_ramp_iters=100,
    d_max_ramp_iters=80,
)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(base_channels=8, num_stages=4, se_ratio=8, norm_cfg=norm_cfg),
    decode_head=dict(
        in_channels=8, channels=8, num_classes=num_classes, norm_cfg=norm_cfg, loss_decode=loss_decode
    ),
)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.95),
    dict(type='RandomFlip', prob=[0.25, 0.25], direction=['horizontal', 'vertical']),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(type=dataset_type, data_root=data_root, pipeline=train_pipeline),
)
val_dataloader = dict(
    num_workers=0, persistent_workers=False, dataset=dict(type=dataset_type, data_root=data_root)
)
test_dataloader = val_dataloader
val_evaluator = [dict(type='PerClassIoUMetric', iou_metrics=['mIoU'])]
test_evaluator = val_evaluator
optim_wrapper = dict(optimizer=dict(_delete_=True, type='AdamW', lr=1e-2, weight_decay=1e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, begin=0, end=warmup_iters, by_epoch=False),
    dict(type='PolyLR', eta_min=1e-5, power=0.9, begin=warmup_iters, end=max_iters, by_epoch=False),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    checkpoint=dict(
        type='CheckpointHook', by_epoch=False, interval=max_iters, max_keep_ckpts=1, save_best=None
    ),
    visualization=dict(type='SegVisualizationHook', draw=False),
)
env_cfg = dict(cudnn_benchmark=False)
