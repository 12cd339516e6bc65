# Image-level samples of the prepared Sartorius COCO files, label = the image's cell type: every 128x128 tile of a
# grid over the 704x520 image (20 tiles; the SEM paper used one 128x128 sub-image per 1024x1024 image, without
# downsampling, which on 26-606 Sartorius images would leave too few samples).
data_root = 'data/sartorius/'
classes = ('shsy5y', 'astro', 'cort')
tile_size = 128
tile_mode = 'grid'
train_pipeline = [dict(type='PackClsInputs', meta_keys=('image_id', 'sample_id'))]
test_pipeline = [dict(type='PackClsInputs', meta_keys=('image_id', 'sample_id'))]
train_dataloader = dict(
    batch_size=32,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),
    dataset=dict(
        type='SartoriusImageTileDataset',
        data_root=data_root,
        ann_file='annotations/fold0_train.json',
        classes=classes,
        tile_size=tile_size,
        mode=tile_mode,
        pipeline=train_pipeline,
    ),
)
val_dataloader = dict(
    batch_size=64,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='default_collate'),
    dataset=dict(
        type='SartoriusImageTileDataset',
        data_root=data_root,
        ann_file='annotations/fold0_val.json',
        classes=classes,
        tile_size=tile_size,
        mode=tile_mode,
        pipeline=test_pipeline,
        test_mode=True,
    ),
)
test_dataloader = val_dataloader
val_evaluator = dict(type='ClsMetric', classes=classes)
test_evaluator = val_evaluator
cv_ann_file = 'annotations/train_all.json'
