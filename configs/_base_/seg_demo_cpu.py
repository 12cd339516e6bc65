# CPU demo overrides for the semantic models: 128x128 crops, batch 2, 30 iterations, one validation at the
# end, plain BN (leaves set it), data in work_dirs/demo/synthetic/ (tools/make_synthetic.py + tools/prepare_sartorius.py).
_base_ = ['./datasets/sartorius_semantic.py', './seg_default_runtime.py', './schedules/seg_schedule_40k.py']
data_root = 'work_dirs/demo/synthetic/'
crop_size = (128, 128)
max_iters = 30
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
optim_wrapper = dict(optimizer=dict(_delete_=True, type='AdamW', lr=1e-3, weight_decay=1e-4))
param_scheduler = [dict(type='PolyLR', eta_min=1e-5, power=0.9, begin=0, end=max_iters, by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=5, log_metric_by_epoch=False),
    checkpoint=dict(
        type='CheckpointHook', by_epoch=False, interval=max_iters, max_keep_ckpts=1, save_best=None
    ),
)
env_cfg = dict(cudnn_benchmark=False)
