# FRE study row "U-Net + SE block + SuperVision": a 1x1-conv classifier on the 64-channel bottleneck (output
# index 0), upsampled to the label size; loss = (1 - lambda) * main + lambda * bottleneck CE (paper eq. 1).
# lambda is searched with TPE (configs/unet/search/ds_lambda.yaml); the value here is that search's best
# (3 trials on fold 1, docs/results/fre_study.md).
_base_ = ['./se-unet-brn_c8-s4_1xb4-160iter_sartorius-cell-64x64.py']
ds_lambda = 0.35
model = dict(
    decode_head=dict(
        loss_decode=[
            dict(
                type='CrossEntropyLoss',
                use_sigmoid=False,
                avg_non_ignore=False,
                loss_weight=1.0 - ds_lambda,
                class_weight=_base_.loss_decode[0]['class_weight'],
            ),
            dict(
                type='DiceLoss',
                use_sigmoid=False,
                ignore_index=0,
                naive_dice=True,
                loss_weight=1.0 - ds_lambda,
            ),
        ]
    ),
    auxiliary_head=dict(
        type='FCNHead',
        in_channels=64,
        in_index=0,
        channels=64,
        num_convs=0,
        concat_input=False,
        dropout_ratio=0.0,
        num_classes=_base_.num_classes,
        norm_cfg=_base_.norm_cfg,
        align_corners=False,
        loss_decode=dict(
            type='CrossEntropyLoss', use_sigmoid=False, avg_non_ignore=True, loss_weight=ds_lambda
        ),
    ),
)
