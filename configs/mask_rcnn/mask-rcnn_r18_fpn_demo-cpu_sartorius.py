# CPU demo: Mask R-CNN R18-FPN from scratch in a few minutes on 2 cores (make demo / tests).
# Trains on 256x256 native-scale random crops (cells keep their real size), evaluates on full 704x520 images
# once at the end. Dense shsy5y images keep up to 1000 detections. BatchNorm (not the GroupNorm of the full
# from-scratch configs): it learns in the 200 CPU iterations and GN's per-group statistics cost more on a CPU.
# RPN anchor scale 3 (12 px at stride 4) for native-scale cells: tools/analyze_boxes.py on the 26 real training
# images leaves 74.4 % of the cells without an anchor at IoU >= 0.5 with mmdet's scale 8, 9.5 % with 3 (4: 11.6 %);
# on the demo's synthetic data 49.7 % and 4.2 %. Fixed seed.
#   python tools/train.py configs/mask_rcnn/mask-rcnn_r18_fpn_demo-cpu_sartorius.py \
#       --work-dir work_dirs/demo/mask_rcnn --cfg-options data_root=work_dirs/demo/data/
_base_ = [
    '../_base_/models/mask-rcnn_r50_fpn_sartorius.py',
    '../_base_/datasets/sartorius_instance.py',
    '../_base_/schedules/schedule_20e.py',
    '../_base_/default_runtime_det.py',
]
randomness = dict(seed=0, deterministic=False)

max_iters = 200
crop_size = (256, 256)  # (h, w)

model = dict(
    # ResNet-18 at half width (base_channels 32: 4x fewer FLOPs) and slim FPN/heads: CPU-sized.
    backbone=dict(depth=18, base_channels=32, init_cfg=None),
    neck=dict(in_channels=[32, 64, 128, 256], out_channels=64),
    rpn_head=dict(in_channels=64, feat_channels=64, anchor_generator=dict(scales=[3])),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=64),
        bbox_head=dict(in_channels=64, fc_out_channels=256),
        mask_roi_extractor=dict(out_channels=64),
        mask_head=dict(num_convs=2, in_channels=64, conv_out_channels=64),
    ),
    train_cfg=dict(
        rpn=dict(sampler=dict(num=256)),
        rpn_proposal=dict(nms_pre=1000, max_per_img=500),
        rcnn=dict(sampler=dict(num=256)),
    ),
)

train_pipeline = [
    dict(type='LoadImageFromFile', color_type='color'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomCrop', crop_size=crop_size, allow_negative_crop=False),
    dict(type='RandomFlip', prob=[0.25, 0.25, 0.25], direction=['horizontal', 'vertical', 'diagonal']),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1, 1), keep_empty=False),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile', color_type='color'),
    dict(type='Resize', scale=(704, 520), keep_ratio=True),
    dict(type='PackDetInputs', meta_keys={{_base_.meta_keys}}),
]
train_dataloader = dict(
    batch_size=2,
    num_workers=1,
    persistent_workers=False,
    batch_sampler=None,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(pipeline=train_pipeline),
)
val_dataloader = dict(num_workers=0, persistent_workers=False, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(
        type='MultiStepLR',
        by_epoch=False,
        begin=0,
        end=max_iters,
        milestones=[int(max_iters * 0.8)],
        gamma=0.1,
    ),
]
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05),
    clip_grad=dict(max_norm=35, norm_type=2),
)

default_hooks = dict(
    logger=dict(interval=20),
    # a checkpoint every 50 iterations: an interrupted demo resumes (tools/train.py --resume, run_recipe.py)
    checkpoint=dict(by_epoch=False, interval=50, max_keep_ckpts=1, save_best=None),
    visualization=dict(type='DetVisualizationHook'),
)
log_processor = dict(by_epoch=False, window_size=20)
env_cfg = dict(mp_cfg=dict(mp_start_method='fork', opencv_num_threads=1))
