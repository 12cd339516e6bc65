# CPU demo: YOLOX-tiny from scratch in a few minutes on 2 cores (make demo / tests).
# Every training image is a 320x320 native-scale random crop, then Mosaic + random affine + MixUp at 320x320
# (cells keep roughly their real size), multi-scale input 256-384 that grows from 224-288 over the first 100
# iterations (ProgressiveResizeHook) and EMA weights. Evaluated once at the end on full 704x520 images.
# Iteration-based, so the epoch-based YOLOXModeSwitchHook of the full config is left out here.
#   python tools/train.py configs/yolox/yolox_tiny_demo-cpu_sartorius.py \
#       --work-dir work_dirs/demo/yolox --cfg-options data_root=work_dirs/demo/synthetic/
_base_ = './yolox_s_8xb8-300e_sartorius.py'

max_iters = 400
crop = (320, 320)  # (w, h)

model = dict(
    data_preprocessor=dict(
        batch_augments=[
            dict(type='BatchSyncRandomResize', random_size_range=(256, 384), size_divisor=32, interval=10)
        ]
    ),
    backbone=dict(deepen_factor=0.33, widen_factor=0.375),
    neck=dict(in_channels=[96, 192, 384], out_channels=96),
    bbox_head=dict(in_channels=96, feat_channels=96),
)

train_pipeline = [
    dict(type='Mosaic', img_scale=crop, pad_val=114.0),
    dict(type='RandomAffine', scaling_ratio_range=(0.75, 1.25), border=(-crop[0] // 2, -crop[1] // 2)),
    dict(type='MixUp', img_scale=crop, ratio_range=(0.8, 1.25), pad_val=114.0),
    dict(type='YOLOXHSVRandomAug'),
    dict(type='RandomFlip', prob=[0.25, 0.25], direction=['horizontal', 'vertical']),
    dict(type='Resize', scale=crop, keep_ratio=True),
    dict(type='Pad', pad_to_square=True, pad_val=dict(img=(114.0, 114.0, 114.0))),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1, 1), keep_empty=False),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile', color_type='color'),
    dict(type='Resize', scale=(704, 704), keep_ratio=True),
    dict(type='Pad', size_divisor=32, pad_val=dict(img=(114.0, 114.0, 114.0))),
    dict(type='PackDetInputs', meta_keys={{_base_.meta_keys}}),
]
train_dataloader = dict(
    batch_size=2,
    num_workers=1,
    persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        dataset=dict(
            pipeline=[
                dict(type='LoadImageFromFile', color_type='color'),
                dict(type='LoadAnnotations', with_bbox=True),
                dict(type='RandomCrop', crop_size=(crop[1], crop[0]), allow_negative_crop=False),
            ]
        ),
        pipeline=train_pipeline,
    ),
)
val_dataloader = dict(num_workers=0, persistent_workers=False, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-3, weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0),
    clip_grad=dict(max_norm=35, norm_type=2),
)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(
        type='CosineAnnealingLR', by_epoch=False, begin=50, end=max_iters, T_max=max_iters - 50, eta_min=1e-4
    ),
]
default_hooks = dict(
    logger=dict(interval=20),
    checkpoint=dict(by_epoch=False, interval=max_iters, max_keep_ckpts=1, save_best=None),
)
custom_hooks = [
    dict(type='ProgressiveResizeHook', start_size_range=(224, 288), warmup_iters=100, priority=48),
    dict(type='EMAHook', ema_type='ExpMomentumEMA', momentum=0.0002, update_buffers=True, priority=49),
]
log_processor = dict(by_epoch=False, window_size=20)
env_cfg = dict(mp_cfg=dict(mp_start_method='fork', opencv_num_threads=1))
