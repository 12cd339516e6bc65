# As sartorius_semantic.py with a 5th class `boundary` (label 4: pixels between touching cells, from
# semantic/train_boundary/<id>.png). Models on it need num_classes=5; foreground = every class but 0.
_base_ = ['./sartorius_semantic.py']
dataset_type = 'SartoriusBoundarySemanticDataset'
num_classes = 5
boundary_data_prefix = dict(img_path='train', seg_map_path='semantic/train_boundary')
train_dataloader = dict(dataset=dict(type=dataset_type, data_prefix=boundary_data_prefix))
val_dataloader = dict(dataset=dict(type=dataset_type, data_prefix=boundary_data_prefix))
test_dataloader = val_dataloader
