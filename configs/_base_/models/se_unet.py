# U-Net with SE blocks (FRE paper, Fig. 4): 4 encoder stages 64-128-256-512, the 512-channel bottleneck
# being the layer farthest from the loss; 1x1-conv classifier on the full-resolution decoder output
# (FCNHead with num_convs=0). Leaves add fre_cfg / bottleneck_dropout / an auxiliary head at index 0.
_base_ = ['./seg_data_preprocessor.py']
norm_cfg = {{_base_.norm_cfg}}

model = dict(
    type='EncoderDecoder',
    data_preprocessor={{_base_.data_preprocessor}},
    pretrained=None,
    backbone=dict(
        type='SEUNet',
        in_channels=3,
        base_channels=64,
        num_stages=4,
        se_ratio=16,
        norm_cfg=norm_cfg,
        bottleneck_dropout=0.0,
        init_cfg=None,
    ),
    decode_head=dict(
        type='FCNHead',
        in_channels=64,
        in_index=-1,
        channels=64,
        num_convs=0,
        concat_input=False,
        dropout_ratio=0.0,
        num_classes=4,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, avg_non_ignore=True, loss_weight=1.0),
    ),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'),
)
