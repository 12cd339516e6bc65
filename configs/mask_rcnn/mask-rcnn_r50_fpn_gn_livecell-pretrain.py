# Mask R-CNN R50-FPN (GroupNorm, from scratch) pretrained on LIVECell (Edlund et al. 2021: 5,239 phase-contrast
# 704x520 images, ~1.7M cells of 8 cell lines, mapped to the 3 Sartorius classes by tools/prepare_livecell.py), the
# first step of configs/recipes/sartorius_gpu_livecell.yaml; its last checkpoint is the `load_from` of the
# Sartorius fine-tuning (same architecture, same classes: every weight carries over).
#   python tools/prepare_livecell.py --ann livecell_coco_train.json livecell_coco_val.json \
#       --images-dir LIVECell/images --out data/livecell
#   python tools/train.py configs/mask_rcnn/mask-rcnn_r50_fpn_gn_livecell-pretrain.py --cfg-options data_root=data/livecell
_base_ = ['./mask-rcnn_r50_fpn_1xb2-20e_sartorius.py']
data_root = 'data/livecell/'
max_epochs = 12
train_dataloader = dict(dataset=dict(data_root=data_root, ann_file='annotations/livecell_coco_train.json'))
val_dataloader = dict(dataset=dict(data_root=data_root, ann_file='annotations/livecell_coco_val.json'))
test_dataloader = val_dataloader
train_cfg = dict(max_epochs=max_epochs, val_interval=2)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[8, 11], gamma=0.1),
]
