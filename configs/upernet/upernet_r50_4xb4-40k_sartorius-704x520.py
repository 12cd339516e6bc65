# UPerNet R50 (from scratch), 4 GPUs x 4 whole 704x520 images, 40k iterations, fold 0.
_base_ = [
    '../_base_/models/upernet_r50.py',
    '../_base_/datasets/sartorius_semantic.py',
    '../_base_/seg_default_runtime.py',
    '../_base_/schedules/seg_schedule_40k.py',
]
