# Paper comparison "U-Net+SE + SuperVision": a 1x1-conv classifier on the bottleneck (output index 0),
# upsampled to the label size, loss = (1 - lambda) * main + lambda * bottleneck (paper: lambda 0.3257 / 0.2781).
_base_ = ['./se-unet_c64-s4_4xb4-40k_sartorius-704x520.py']
ds_lambda = 0.3
model = dict(
    decode_head=dict(loss_decode=dict(loss_weight=1.0 - ds_lambda)),
    auxiliary_head=dict(
        type='FCNHead',
        in_channels=512,
        in_index=0,
        channels=512,
        num_convs=0,
        concat_input=False,
        dropout_ratio=0.0,
        num_classes=4,
        norm_cfg=_base_.norm_cfg,
        align_corners=False,
        loss_decode=dict(
            type='CrossEntropyLoss', use_sigmoid=False, avg_non_ignore=True, loss_weight=ds_lambda
        ),
    ),
)
