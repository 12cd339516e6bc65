# Runtime defaults of the mmdet (instance) models: hooks, logging, environment, custom module imports.
default_scope = 'mmdet'

custom_imports = dict(
    imports=['custom_modules.det'],
    allow_failed_imports=False,
)

default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(
        type='CheckpointHook', interval=1, max_keep_ckpts=3, save_best='sartorius/score', rule='greater'
    ),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='DetVisualizationHook'),
)

env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'),  # tools/train.py switches to gloo on CPU-only machines
)

vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='DetLocalVisualizer', vis_backends=vis_backends, name='visualizer')
log_processor = dict(type='LogProcessor', window_size=50, by_epoch=True)

log_level = 'INFO'
randomness = dict(seed=0)  # reproducible runs by default (--cfg-options randomness.seed=N to vary)
load_from = None  # a checkpoint to initialise from, e.g. --cfg-options load_from=path/to/coco_pretrained.pth
resume = False
