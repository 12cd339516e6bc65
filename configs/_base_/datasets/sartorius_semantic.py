# Sartorius semantic segmentation (mmseg) on the layout written by tools/prepare_sartorius.py:
#   <data_root>/train/<id>.png                 704x520 grayscale images (loaded as 3 identical channels)
#   <data_root>/semantic/train/<id>.png        uint8 labels: 0 background, 1 shsy5y, 2 astro, 3 cort
#   <data_root>/semantic/train_boundary/<id>.png  same + 4 boundary (use SartoriusBoundarySemanticDataset)
#   <data_root>/splits/fold{k}_train.txt, fold{k}_val.txt   one image id per line
# Leaves change the fold by overriding the three `ann_file`s, the data root with
# `--cfg-options train_dataloader.dataset.data_root=... val_dataloader.dataset.data_root=...
#  test_dataloader.dataset.data_root=...` (tools/train.py --cfg-options data_root=DIR does all three).
custom_imports = dict(imports=['custom_modules.seg'], allow_failed_imports=False)
dataset_type = 'SartoriusSemanticDataset'
data_root = 'data/sartorius/'
crop_size = (520, 704)  # (h, w): whole images
num_classes = 4

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=(704, 520), ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.9),
    dict(type='RandomFlip', prob=[0.25, 0.25], direction=['horizontal', 'vertical']),
    dict(
        type='PhotoMetricDistortion',
        brightness_delta=16,
        contrast_range=(0.8, 1.2),
        saturation_range=(1.0, 1.0),
        hue_delta=1,  # no-op on gray pixels (saturation 0); 0 is rejected by numpy's randint
    ),
    dict(type='PackSegInputs'),
]
# Whole-image inference at native resolution (full-resolution logits for tools/infer.py).
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]

train_dataloader = dict(
    batch_size=4,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='splits/fold0_train.txt',
        data_prefix=dict(img_path='train', seg_map_path='semantic/train'),
        pipeline=train_pipeline,
    ),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='splits/fold0_val.txt',
        data_prefix=dict(img_path='train', seg_map_path='semantic/train'),
        pipeline=test_pipeline,
    ),
)
test_dataloader = val_dataloader
# mmseg mIoU / mDice over the 4 classes + binary cell-vs-background IoU / Dice (custom_modules.seg.metrics).
val_evaluator = [
    dict(type='IoUMetric', iou_metrics=['mIoU', 'mDice']),
    dict(type='ForegroundIoUMetric'),
]
test_evaluator = val_evaluator
