# Shared by the semantic models (UPerNet, SE-U-Net): grayscale images arrive as 3 identical channels;
# mean/std measured on Sartorius images (mean 128, std 7-15). SyncBN becomes plain BN when not distributed.
norm_cfg = dict(type='SyncBN', requires_grad=True)
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[128.0, 128.0, 128.0],
    std=[12.0, 12.0, 12.0],
    bgr_to_rgb=False,
    pad_val=0,
    seg_pad_val=255,
    size=(520, 704),
)
