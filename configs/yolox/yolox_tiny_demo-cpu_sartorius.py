# CPU demo: YOLOX-tiny from scratch in a few minutes on 2 cores (make demo / tests), learning in every run.
# A few hundred iterations are far too few for Mosaic / MixUp / random affine: those mixes make every image
# a new puzzle, and with them the detector sometimes learned nothing at all in 400 iterations (competition
# score 0.000 in one run, 0.19 in another). Here every training image is a plain native-scale random crop
# (cells keep their real 10-70 px size), flipped, at one fixed input size (no multi-scale, no ProgressiveResize),
# with a linear warm-up, cosine decay, EMA weights and a fixed seed. Evaluated once at the end on full images.
#   python tools/train.py configs/yolox/yolox_tiny_demo-cpu_sartorius.py \
#       --work-dir work_dirs/demo/yolox --cfg-options data_root=work_dirs/demo/data/
_base_ = './yolox_s_8xb8-300e_sartorius.py'

max_iters = 400
warmup_iters = 40
crop = (320, 320)  # (w, h), native scale
randomness = dict(seed=0, deterministic=False)

model = dict(
    data_preprocessor=dict(batch_augments=None),
    backbone=dict(deepen_factor=0.33, widen_factor=0.375),
    neck=dict(in_channels=[96, 192, 384], out_channels=96),
    bbox_head=dict(in_channels=96, feat_channels=96),
)

train_pipeline = [
    dict(type='LoadImageFromFile', color_type='color'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='YOLOXHSVRandomAug'),  # before the crop/flip views (it converts in place)
    dict(type='RandomCrop', crop_size=(crop[1], crop[0]), allow_negative_crop=False),
    dict(type='RandomFlip', prob=[0.25, 0.25, 0.25], direction=['horizontal', 'vertical', 'diagonal']),
    dict(type='Pad', size=crop, pad_val=dict(img=(114.0, 114.0, 114.0))),
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
    _delete_=True,
    batch_size=2,
    num_workers=1,
    persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type={{_base_.dataset_type}},
        data_root={{_base_.data_root}},
        metainfo={{_base_.metainfo}},
        ann_file='annotations/fold0_train.json',
        filter_cfg=dict(filter_empty_gt=True, min_size=1),
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
    clip_grad=dict(max_norm=10, norm_type=2),
)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.05, by_epoch=False, begin=0, end=warmup_iters),
    dict(
        type='CosineAnnealingLR',
        by_epoch=False,
        begin=warmup_iters,
        end=max_iters,
        T_max=max_iters - warmup_iters,
        eta_min=1e-4,
    ),
]
default_hooks = dict(
    logger=dict(interval=20),
    checkpoint=dict(by_epoch=False, interval=100, max_keep_ckpts=1, save_best=None),
)
custom_hooks = [
    dict(type='EMAHook', ema_type='ExpMomentumEMA', momentum=0.0002, update_buffers=True, priority=49),
]
log_processor = dict(by_epoch=False, window_size=20)
env_cfg = dict(mp_cfg=dict(mp_start_method='fork', opencv_num_threads=1))
