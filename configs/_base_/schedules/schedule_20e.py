# 20-epoch step schedule (mmdet's 20e): linear warm-up 500 iters, LR x0.1 at epochs 16 and 19.
# The LR is for a total batch of 16; leaves set their own and `auto_scale_lr` rescales with --auto-scale-lr.
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=20, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=20, by_epoch=True, milestones=[16, 19], gamma=0.1),
]

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=0.0001),
    clip_grad=dict(max_norm=35, norm_type=2),
)

auto_scale_lr = dict(enable=False, base_batch_size=16)
