# YOLOX-s pretrained on LIVECell (5,239 phase-contrast 704x520 images, ~1.7M cells, mapped to the 3 Sartorius
# classes by tools/prepare_livecell.py), the first step of configs/recipes/sartorius_gpu_livecell.yaml; its last
# checkpoint is the `load_from` of the Sartorius fine-tuning (same architecture and classes).
#   python tools/train.py configs/yolox/yolox_s_8xb8-100e_livecell-pretrain.py --cfg-options data_root=data/livecell
_base_ = './yolox_s_8xb8-300e_sartorius.py'
data_root = 'data/livecell/'
max_epochs = 100
num_last_epochs = 10
train_dataloader = dict(
    dataset=dict(dataset=dict(data_root=data_root, ann_file='annotations/livecell_coco_train.json'))
)
val_dataloader = dict(dataset=dict(data_root=data_root, ann_file='annotations/livecell_coco_val.json'))
test_dataloader = val_dataloader
train_cfg = dict(max_epochs=max_epochs, val_interval=10)
param_scheduler = [
    dict(type='mmdet.QuadraticWarmupLR', by_epoch=True, begin=0, end=3, convert_to_iter_based=True),
    dict(
        type='CosineAnnealingLR',
        eta_min=0.01 * 0.05,
        begin=3,
        T_max=max_epochs - num_last_epochs,
        end=max_epochs - num_last_epochs,
        by_epoch=True,
        convert_to_iter_based=True,
    ),
    dict(type='ConstantLR', by_epoch=True, factor=1, begin=max_epochs - num_last_epochs, end=max_epochs),
]
custom_hooks = [
    dict(type='ProgressiveResizeHook', start_size_range=(640, 832), warmup_epochs=5, priority=48),
    dict(type='YOLOXModeSwitchHook', num_last_epochs=num_last_epochs, priority=48),
    dict(type='SyncNormHook', priority=48),
    dict(type='EMAHook', ema_type='ExpMomentumEMA', momentum=0.0001, update_buffers=True, priority=49),
]
