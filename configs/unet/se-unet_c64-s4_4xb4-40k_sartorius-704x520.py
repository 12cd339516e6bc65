# Baseline of the FRE paper: U-Net with SE blocks (64-128-256-512), from scratch, 4 GPUs x 4 images.
_base_ = [
    '../_base_/models/se_unet.py',
    '../_base_/datasets/sartorius_semantic.py',
    '../_base_/seg_default_runtime.py',
    '../_base_/schedules/seg_schedule_40k.py',
]
