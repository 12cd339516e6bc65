# Ablation of the real-image 1x leaf (issue 22, docs/results/real_cpu.md): the same model, budget (800 iterations)
# and schedule, with the CPU demo's augmentations only (256x256 native crop + flips; no scale jitter, no
# brightness / contrast jitter). Measures whether the microscopy augmentations help at a CPU budget: fold 0 held-out
# 0.026 / 0.081 / 0.099 / 0.158 at 100 / 200 / 400 / 800 iterations vs 0.000 / 0.023 / 0.061 / 0.109 with them
# (docs/results/real_cpu.md); the member of configs/recipes/real_cpu.yaml.
#   python tools/train.py configs/mask_rcnn/mask-rcnn_r18_fpn_real-cpu-noaug_sartorius.py \
#       --work-dir work_dirs/real_cpu/models/mask_rcnn_1x_noaug/fold0 --cfg-options data_root=DIR fold=0
_base_ = './mask-rcnn_r18_fpn_real-cpu_sartorius.py'

train_pipeline = [
    dict(type='LoadImageFromFile', color_type='color'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomCrop', crop_size={{_base_.crop_size}}, allow_negative_crop=False),
    dict(type='RandomFlip', prob=[0.25, 0.25, 0.25], direction=['horizontal', 'vertical', 'diagonal']),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1, 1), keep_empty=False),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
