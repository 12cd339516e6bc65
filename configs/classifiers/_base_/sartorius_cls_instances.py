# Instance crops of the prepared Sartorius COCO files (tools/prepare_sartorius.py), label = cell type.
# Default input mode: cropped and masked (the liposome report's best), 28x28; oversampled training set,
# the report's full augmentation (rotation 180, shift 10 %, flips, shear 0.2, zoom 0.8-1.0).
data_root = 'data/sartorius/'
classes = ('shsy5y', 'astro', 'cort')
crop_size = 28
crop_margin = 0
crop_masked = True
train_pipeline = [
    dict(type='ClsRandomAffine', rotation=180, shift=0.1, shear=0.2, zoom=(0.8, 1.0), border_mode='constant'),
    dict(type='ClsRandomFlip', horizontal=True, vertical=True, prob=0.5),
    dict(type='PackClsInputs'),
]
test_pipeline = [dict(type='PackClsInputs')]
train_dataloader = dict(
    batch_size=32,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='ImbalanceSampler', mode='oversample', fraction=0.2),
    collate_fn=dict(type='default_collate'),
    dataset=dict(
        type='SartoriusInstanceCropDataset',
        data_root=data_root,
        ann_file='annotations/fold0_train.json',
        classes=classes,
        crop_size=crop_size,
        margin=crop_margin,
        masked=crop_masked,
        pipeline=train_pipeline,
    ),
)
val_dataloader = dict(
    batch_size=128,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='default_collate'),
    dataset=dict(
        type='SartoriusInstanceCropDataset',
        data_root=data_root,
        ann_file='annotations/fold0_val.json',
        classes=classes,
        crop_size=crop_size,
        margin=crop_margin,
        masked=crop_masked,
        pipeline=test_pipeline,
        test_mode=True,
    ),
)
test_dataloader = val_dataloader
val_evaluator = dict(type='ClsMetric', classes=classes)
test_evaluator = val_evaluator
# cross-validation (tools/cross_validate.py) splits this file's samples, grouped by sample_id
cv_ann_file = 'annotations/train_all.json'
