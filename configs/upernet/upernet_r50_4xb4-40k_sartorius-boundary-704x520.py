# UPerNet R50 on 5 classes (background, shsy5y, astro, cort, boundary): the boundary class between touching
# cells helps split instances from the semantic map. Otherwise as upernet_r50_4xb4-40k_sartorius-704x520.py.
_base_ = [
    '../_base_/models/upernet_r50.py',
    '../_base_/datasets/sartorius_semantic_boundary.py',
    '../_base_/seg_default_runtime.py',
    '../_base_/schedules/seg_schedule_40k.py',
]
model = dict(decode_head=dict(num_classes=5), auxiliary_head=dict(num_classes=5))
