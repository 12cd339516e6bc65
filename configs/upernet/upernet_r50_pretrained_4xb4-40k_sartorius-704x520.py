# UPerNet R50 from ImageNet weights (ResNet-50-V1c, mmseg's backbone for UPerNet), 4 GPUs x 4 images, 40k iterations.
# Same norm as the from-scratch config (SyncBN, trainable: what mmseg's own ImageNet-initialised UPerNet configs use
# at 4 images per GPU). Nothing is downloaded unless asked:
#   python tools/train.py configs/upernet/upernet_r50_pretrained_4xb4-40k_sartorius-704x520.py \
#       --cfg-options pretrained=path/to/resnet50_v1c.pth      # local mmseg/mmcv ResNet-50-V1c checkpoint
#   ...  --cfg-options pretrained=open-mmlab://resnet50_v1c    # downloads it (machines with internet only)
#   ...  --cfg-options load_from=path/to/upernet_r50_ade20k.pth # whole-model weights (class heads skipped)
_base_ = ['./upernet_r50_4xb4-40k_sartorius-704x520.py']
pretrained = 'data/pretrained/resnet50_v1c.pth'  # default location of a local ResNet-50-V1c checkpoint
model = dict(
    pretrained=None, backbone=dict(init_cfg=dict(_delete_=True, type='Pretrained', checkpoint=pretrained))
)
