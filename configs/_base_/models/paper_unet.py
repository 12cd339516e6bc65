# The U-Net of the optimizer x loss x compression study (5 levels 64-128-256-512-1024, 2 x conv-BN-ReLU per
# level, bilinear up-sampling + 1x1 conv in the decoder so that every layer can run int8) with a 1-channel
# sigmoid foreground head (FCNHead with num_convs=0: a 1x1 classifier on the full-resolution decoder output).
# Leaves set loss_decode; `decoder='deconv'` switches to ConvTranspose2d up-sampling.
_base_ = ['./seg_data_preprocessor.py']
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    type='EncoderDecoder',
    data_preprocessor={{_base_.data_preprocessor}},
    pretrained=None,
    backbone=dict(
        type='PaperUNet',
        in_channels=3,
        base_channels=64,
        num_stages=5,
        decoder='upsample',
        norm_cfg=norm_cfg,
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
        num_classes=2,
        out_channels=1,
        threshold=0.5,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='BCELoss'),
    ),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'),
)
