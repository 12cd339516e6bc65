# Real Kaggle images on a CPU (issue 22): the CPU demo YOLOX-tiny (native-scale 320x320 crops, no Mosaic/MixUp,
# EMA, fixed seed) at 4x the demo's iterations (1600), a checkpoint every 200 (the learning curve's budgets,
# docs/results/real_cpu.md), plus scale jitter 0.8-1.25x for the microscopy images (flips and the HSV jitter,
# i.e. brightness on these gray images, are the demo's). Input scale 1x: anchor-free with finest stride 8,
# tools/analyze_boxes.py on the 26 real images puts 6.5 % of the cells (astro 15.9 %) below one stride at 1x.
# Scored with a Mask R-CNN mask head on its boxes (infer --mask-head-on), as the demo recipe's yolox_masks.
#   python tools/train.py configs/yolox/yolox_tiny_real-cpu_sartorius.py \
#       --work-dir work_dirs/real_cpu/models/yolox/fold0 --cfg-options data_root=work_dirs/real_cpu/data/ fold=0
_base_ = './yolox_tiny_demo-cpu_sartorius.py'

max_iters = 1600
warmup_iters = 80
crop = (320, 320)  # (w, h)

train_pipeline = [
    dict(type='LoadImageFromFile', color_type='color'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='YOLOXHSVRandomAug'),
    dict(type='RandomResize', scale=(704, 520), ratio_range=(0.8, 1.25), keep_ratio=True),
    dict(type='RandomCrop', crop_size=(crop[1], crop[0]), allow_negative_crop=False),
    dict(type='RandomFlip', prob=[0.25, 0.25, 0.25], direction=['horizontal', 'vertical', 'diagonal']),
    dict(type='Pad', size=crop, pad_val=dict(img=(114.0, 114.0, 114.0))),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1, 1), keep_empty=False),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))

train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.05, by_epoch=False, begin=0, end=warmup_iters),
    dict(
        type='CosineAnnealingLR',
        by_epoch=False,
        begin=warmup_iters,
        end=max_iters,
        T_max=max_iters - warmup_iters,
        eta_min=1e-4,
    ),
]
default_hooks = dict(checkpoint=dict(by_epoch=False, interval=200, max_keep_ckpts=-1, save_best=None))
