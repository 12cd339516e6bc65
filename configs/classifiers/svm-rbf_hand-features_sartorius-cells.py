# Liposome report's incumbent baseline: SVM (RBF, class weights inversely proportional to class frequencies) on
# hand-crafted object features (custom_modules/cls/svm.py). Only for tools/cross_validate.py (no mmengine model).
_base_ = ['./_base_/sartorius_cls_instances.py', './_base_/cls_default_runtime.py']
svm = dict(kernel='rbf', C=1.0, gamma='scale', class_weight='balanced')
