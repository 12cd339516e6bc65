# Real Kaggle images on a CPU (issue 22), input scale 2x: the 1x leaf with every image upscaled to 1408x1040
# (train and test), so a median shsy5y cell (~17 px) is ~34 px: 8x8 stride-4 features instead of 4x4 for the
# RoI heads. Training crops 128x128 native pixels FIRST, then upscales the crop 2x (with the 0.8-1.25 jitter:
# ~205-320 px): resizing the whole 1408x1040 image with its hundreds of bitmap masks before the crop cost 2 s of
# data time per iteration on one core (measured, 20 iterations). Same ~256x256 network input per crop as the 1x
# leaf (about the same cost per iteration, a quarter of the native area per crop; astro cells over 128 px are
# cut); inference on 4x the pixels. Anchor scale 4 (16 px at stride 4 on the 2x image = 8 px native):
# analyze_boxes at this test scale leaves 5.8 % of the cells without an anchor at IoU >= 0.5 (scale 3: 7.7 %,
# 5: 5.9 %, 6: 6.2 %, 8: 11.0 %).
#   python tools/train.py configs/mask_rcnn/mask-rcnn_r18_fpn_real-cpu-2x_sartorius.py \
#       --work-dir work_dirs/real_cpu/mask_rcnn_2x --cfg-options data_root=work_dirs/real_cpu/data/ fold=0
_base_ = './mask-rcnn_r18_fpn_real-cpu_sartorius.py'

input_scale = (1408, 1040)  # (w, h): 2x

model = dict(rpn_head=dict(anchor_generator=dict(scales=[4])))

train_pipeline = [
    dict(type='LoadImageFromFile', color_type='color'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomCrop', crop_size=(128, 128), allow_negative_crop=False),  # native pixels
    dict(type='RandomResize', scale=(256, 256), ratio_range=(0.8, 1.25), keep_ratio=True),  # 2x, jittered
    dict(type='RandomFlip', prob=[0.25, 0.25, 0.25], direction=['horizontal', 'vertical', 'diagonal']),
    dict(
        type='PhotoMetricDistortion',
        brightness_delta=24,
        contrast_range=(0.75, 1.25),
        saturation_range=(1.0, 1.0),
        hue_delta=0,
    ),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1, 1), keep_empty=False),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile', color_type='color'),
    dict(type='Resize', scale=input_scale, keep_ratio=True),
    dict(type='PackDetInputs', meta_keys={{_base_.meta_keys}}),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
