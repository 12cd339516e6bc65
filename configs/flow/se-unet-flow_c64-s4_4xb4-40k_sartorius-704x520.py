# Cellpose-style flow head (issue 19) on the FRE paper's SE-U-Net (64-128-256-512), whole 704x520 images, 4 GPUs x 4
# images, 40k iterations (SGD + poly). Flow targets from the training fold's COCO annotations, cached once per
# image under <data_root>/flow_cache, moved with the resize / crop / flips / 180-degree rotation (quarter turns
# would not fit the 520x704 batch); images scaled below 1 are padded, padding is ignored by the loss.
_base_ = [
    '../_base_/models/se_unet.py',
    '../_base_/datasets/sartorius_semantic.py',
    '../_base_/seg_default_runtime.py',
    '../_base_/schedules/seg_schedule_40k.py',
]
custom_imports = dict(imports=['custom_modules.seg'], allow_failed_imports=False)
dataset_type = 'SartoriusCellDataset'  # 0 background / 1 cell: RandomCrop's cat_max_ratio and the fg metric
model = dict(
    type='FlowEncoderDecoder',
    decode_head=dict(
        _delete_=True,
        type='FlowHead',
        in_channels=64,
        in_index=-1,
        channels=64,
        num_convs=0,
        concat_input=False,
        dropout_ratio=0.0,
        norm_cfg=_base_.norm_cfg,
        align_corners=False,
    ),
)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='LoadFlowSource', ann_file='annotations/fold0_train.json'),
    dict(type='RandomResize', scale=(704, 520), ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=_base_.crop_size, cat_max_ratio=0.9),
    dict(type='RandomFlip', prob=[0.25, 0.25], direction=['horizontal', 'vertical']),
    dict(type='RandomRotate90', prob=0.25, directions=(2,)),
    dict(
        type='PhotoMetricDistortion',
        brightness_delta=16,
        contrast_range=(0.8, 1.2),
        saturation_range=(1.0, 1.0),
        hue_delta=1,
    ),
    dict(type='GenerateFlowTargets'),
    dict(type='PackFlowSegInputs'),
]
train_dataloader = dict(dataset=dict(type=dataset_type, pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(type=dataset_type))
test_dataloader = val_dataloader
default_hooks = dict(checkpoint=dict(save_best='fgIoU'))
# Instance decoding at inference (tools/infer.py -> celldata.flows.decode_flow_map): Cellpose's defaults; any key
# of celldata.flows.DECODE_DEFAULTS, e.g. --cfg-options flow_decode.min_size=10
flow_decode = dict(prob_threshold=0.5, niter=200, flow_threshold=0.4, min_size=15)
