# YOLOX-s for Sartorius cells (ensemble paper, sec. 3.1): anchor-free, decoupled head, SiLU (Swish) activations,
# Mosaic + MixUp, progressive multi-scale input (ProgressiveResizeHook grows BatchSyncRandomResize's range over
# the first 15 epochs), YOLOX mode switch (no Mosaic/MixUp/affine in the last 15 epochs) and EMA weights.
# Box detector only: in the ensemble its boxes are fused (WBF) with Mask R-CNN's and masks come from Mask R-CNN /
# UPerNet voting (tools/infer.py writes masks=None, or masks from Mask R-CNN's head with --mask-head-on).
# From scratch by default (no pretrained weights, BatchNorm at 8 images per GPU). Starting weights, same config:
#   --cfg-options load_from=path/to/yolox_s_coco.pth      # mmdet's COCO YOLOX-s (80-class head layers skipped)
#   --cfg-options pretrained=path/to/cspdarknet_s.pth     # backbone-only weights (CSPDarknet, BatchNorm)
_base_ = [
    '../_base_/datasets/sartorius_instance.py',
    '../_base_/default_runtime_det.py',
]

# (w, h): 704x520 images upscaled ~1.45x (cells are small, finest stride is 8). tools/analyze_boxes.py on the 26
# real training images: at x1.45, 4.8 % of the cells have a shorter side below one stride (at x1.0: 6.5 %); x1.33
# would bring the 10th percentile to 1.5 strides, so 1024 keeps a margin.
img_scale = (1024, 1024)
# ImageNet/backbone weights through --cfg-options pretrained=... (custom_modules/config.py)
pretrained = None
max_epochs = 300
num_last_epochs = 15
val_interval = 10

model = dict(
    type='YOLOX',
    data_preprocessor=dict(
        type='DetDataPreprocessor',
        pad_size_divisor=32,
        batch_augments=[
            dict(type='BatchSyncRandomResize', random_size_range=(832, 1216), size_divisor=32, interval=10)
        ],
    ),
    backbone=dict(
        type='CSPDarknet',
        deepen_factor=0.33,
        widen_factor=0.5,
        out_indices=(2, 3, 4),
        use_depthwise=False,
        spp_kernal_sizes=(5, 9, 13),
        norm_cfg=dict(type='BN', momentum=0.03, eps=0.001),
        act_cfg=dict(type='Swish'),
        init_cfg=None,
    ),
    neck=dict(
        type='YOLOXPAFPN',
        in_channels=[128, 256, 512],
        out_channels=128,
        num_csp_blocks=1,
        use_depthwise=False,
        upsample_cfg=dict(scale_factor=2, mode='nearest'),
        norm_cfg=dict(type='BN', momentum=0.03, eps=0.001),
        act_cfg=dict(type='Swish'),
        init_cfg=None,
    ),
    bbox_head=dict(
        type='YOLOXHead',
        num_classes=3,
        in_channels=128,
        feat_channels=128,
        stacked_convs=2,
        strides=(8, 16, 32),
        use_depthwise=False,
        norm_cfg=dict(type='BN', momentum=0.03, eps=0.001),
        act_cfg=dict(type='Swish'),
        loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=True, reduction='sum', loss_weight=1.0),
        loss_bbox=dict(type='IoULoss', mode='square', eps=1e-16, reduction='sum', loss_weight=5.0),
        loss_obj=dict(type='CrossEntropyLoss', use_sigmoid=True, reduction='sum', loss_weight=1.0),
        loss_l1=dict(type='L1Loss', reduction='sum', loss_weight=1.0),
    ),
    train_cfg=dict(assigner=dict(type='SimOTAAssigner', center_radius=2.5)),
    # Dense images: keep up to 1000 boxes after NMS.
    test_cfg=dict(score_thr=0.01, nms=dict(type='nms', iou_threshold=0.65), max_per_img=1000),
)

train_pipeline = [
    dict(type='Mosaic', img_scale=img_scale, pad_val=114.0),
    dict(
        type='RandomAffine', scaling_ratio_range=(0.5, 1.5), border=(-img_scale[0] // 2, -img_scale[1] // 2)
    ),
    dict(type='MixUp', img_scale=img_scale, ratio_range=(0.8, 1.6), pad_val=114.0),
    dict(type='YOLOXHSVRandomAug'),
    dict(type='RandomFlip', prob=[0.25, 0.25], direction=['horizontal', 'vertical']),
    # Resize and Pad are what remains in the last `num_last_epochs` (YOLOXModeSwitchHook drops the mixes).
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='Pad', pad_to_square=True, pad_val=dict(img=(114.0, 114.0, 114.0))),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1, 1), keep_empty=False),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile', color_type='color'),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='Pad', pad_to_square=True, pad_val=dict(img=(114.0, 114.0, 114.0))),
    dict(type='PackDetInputs', meta_keys={{_base_.meta_keys}}),
]

train_dataloader = dict(
    _delete_=True,
    batch_size=8,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(
        type='MultiImageMixDataset',
        dataset=dict(
            type={{_base_.dataset_type}},
            data_root={{_base_.data_root}},
            metainfo={{_base_.metainfo}},
            ann_file='annotations/fold0_train.json',
            pipeline=[
                dict(type='LoadImageFromFile', color_type='color'),
                dict(type='LoadAnnotations', with_bbox=True),
            ],
            filter_cfg=dict(filter_empty_gt=False, min_size=1),
        ),
        pipeline=train_pipeline,
    ),
)
val_dataloader = dict(batch_size=1, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

# Box detector: the competition score of the filled boxes (a localisation proxy) at every validation, COCO bbox mAP
# at every 3rd validation (every 30 epochs) and at the last one.
val_evaluator = dict(
    type='SartoriusMetric',
    score_thr=0.3,
    iou_types=('bbox',),
    box_as_mask=True,
    max_dets=1000,
    coco_interval=3,
)
test_evaluator = val_evaluator

train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=val_interval)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

base_lr = 0.01  # for 8 GPUs x 8 images
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=base_lr, momentum=0.9, weight_decay=5e-4, nesterov=True),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0),
)
param_scheduler = [
    dict(type='mmdet.QuadraticWarmupLR', by_epoch=True, begin=0, end=5, convert_to_iter_based=True),
    dict(
        type='CosineAnnealingLR',
        eta_min=base_lr * 0.05,
        begin=5,
        T_max=max_epochs - num_last_epochs,
        end=max_epochs - num_last_epochs,
        by_epoch=True,
        convert_to_iter_based=True,
    ),
    dict(type='ConstantLR', by_epoch=True, factor=1, begin=max_epochs - num_last_epochs, end=max_epochs),
]

default_hooks = dict(
    checkpoint=dict(interval=val_interval, max_keep_ckpts=3, save_best='sartorius/score', rule='greater')
)
custom_hooks = [
    dict(type='ProgressiveResizeHook', start_size_range=(640, 832), warmup_epochs=15, priority=48),
    dict(type='YOLOXModeSwitchHook', num_last_epochs=num_last_epochs, priority=48),
    dict(type='SyncNormHook', priority=48),
    dict(type='EMAHook', ema_type='ExpMomentumEMA', momentum=0.0001, update_buffers=True, priority=49),
]
auto_scale_lr = dict(enable=False, base_batch_size=64)
