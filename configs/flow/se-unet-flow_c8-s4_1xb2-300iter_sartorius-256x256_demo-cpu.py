# CPU demo of the Cellpose-style flow head (issue 19): SE-U-Net with 8 base channels, 256x256 crops, batch 2,
# 300 iterations. The head predicts (flow y, flow x, cell logit) with the Cellpose loss; targets are built from the
# prepared COCO annotations of the training fold (cached once per image under <data_root>/flow_cache) and follow
# the crops, flips and 90-degree rotations (custom_modules/seg/flow_transforms.py). Validation: foreground IoU of
# logit > 0 (FlowEncoderDecoder); instances come from celldata.flows.flows_to_labels on seg_logits.
_base_ = ['../_base_/models/se_unet.py', '../_base_/seg_demo_cpu.py']
custom_imports = dict(imports=['custom_modules.seg'], allow_failed_imports=False)
norm_cfg = dict(type='BN', requires_grad=True)
dataset_type = 'SartoriusCellDataset'  # 0 background / 1 cell: RandomCrop's cat_max_ratio and the fg metric
model = dict(
    type='FlowEncoderDecoder',
    data_preprocessor=dict(size=_base_.crop_size),
    backbone=dict(base_channels=8, norm_cfg=norm_cfg),
    decode_head=dict(
        _delete_=True,
        type='FlowHead',
        in_channels=8,
        in_index=-1,
        channels=8,
        num_convs=0,
        concat_input=False,
        dropout_ratio=0.0,
        norm_cfg=norm_cfg,
        align_corners=False,
    ),
)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='LoadFlowSource', ann_file='annotations/fold0_train.json'),
    dict(type='RandomCrop', crop_size=_base_.crop_size, cat_max_ratio=0.9),
    dict(type='RandomFlip', prob=[0.25, 0.25], direction=['horizontal', 'vertical']),
    dict(type='RandomRotate90', prob=0.5),
    dict(type='GenerateFlowTargets'),
    dict(type='PackFlowSegInputs'),
]
train_dataloader = dict(dataset=dict(type=dataset_type, pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(type=dataset_type))
test_dataloader = val_dataloader
optim_wrapper = dict(optimizer=dict(lr=5e-3))
max_iters = 300
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, begin=0, end=_base_.warmup_iters, by_epoch=False),
    dict(type='PolyLR', eta_min=1e-5, power=0.9, begin=_base_.warmup_iters, end=max_iters, by_epoch=False),
]
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(checkpoint=dict(interval=100))
# Instance decoding at inference (tools/infer.py -> celldata.flows.decode_flow_map): Cellpose's defaults; any key
# of celldata.flows.DECODE_DEFAULTS, e.g. --cfg-options flow_decode.min_size=10
flow_decode = dict(prob_threshold=0.5, niter=200, flow_threshold=0.4, min_size=15)
