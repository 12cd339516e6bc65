# Sartorius cell instance dataset (mmdet), COCO json written by tools/prepare_sartorius.py:
#   <data_root>/annotations/fold{k}_train.json, fold{k}_val.json, train_all.json
#   (file_name relative to data_root, e.g. 'train/<kaggle id>.png'; categories 1 shsy5y, 2 astro, 3 cort;
#   COCO-RLE segmentations; each image carries its Kaggle id and cell_type).
# Override the root on the command line: --cfg-options data_root=work_dirs/demo/data/  (the evaluator reads
# the ground truth from the data samples, so no annotation path is repeated there).
# The 704x520 8-bit grayscale PNGs are read by LoadImageFromFile with color_type='color' (the default): OpenCV
# replicates the gray channel into 3 identical BGR channels, so 3-channel backbones and their mean/std apply.
dataset_type = 'SartoriusCocoDataset'
data_root = 'data/sartorius/'
classes = ('shsy5y', 'astro', 'cort')
metainfo = dict(classes=classes)
backend_args = None

# Cells are small (shsy5y ~180 px); the models see the images upscaled (train 1.0x-1.5x, test 1.5x).
img_scale = (1056, 780)  # (w, h) = 1.5 x (704, 520)

# Meta keys needed by SartoriusMetric (ground truth, Kaggle id, cell type) and tools/infer.py.
meta_keys = (
    'img_id',
    'img_path',
    'ori_shape',
    'img_shape',
    'scale_factor',
    'flip',
    'flip_direction',
    'instances',
    'kaggle_id',
    'cell_type',
)

train_pipeline = [
    dict(type='LoadImageFromFile', color_type='color', backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomResize', scale=img_scale, ratio_range=(2 / 3, 1.0), keep_ratio=True),
    dict(type='RandomFlip', prob=[0.25, 0.25, 0.25], direction=['horizontal', 'vertical', 'diagonal']),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1, 1), keep_empty=False),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile', color_type='color', backend_args=backend_args),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='PackDetInputs', meta_keys=meta_keys),
]

train_dataloader = dict(
    batch_size=2,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    batch_sampler=dict(type='AspectRatioBatchSampler'),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/fold0_train.json',
        filter_cfg=dict(filter_empty_gt=True, min_size=0),
        pipeline=train_pipeline,
        backend_args=backend_args,
    ),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/fold0_val.json',
        test_mode=True,
        pipeline=test_pipeline,
        backend_args=backend_args,
    ),
)
test_dataloader = val_dataloader

# Competition metric (score_thr + overlap removal, as a submission) at every validation; COCO bbox/segm mAP (1000
# dets/img, the slow part) only at every 5th validation and at the last one (coco_interval; tools/test.py: always).
val_evaluator = dict(
    type='SartoriusMetric', score_thr=0.3, iou_types=('bbox', 'segm'), max_dets=1000, coco_interval=5
)
test_evaluator = val_evaluator
