"""Microscopy image classifiers (the SEM CNN and LipNet papers) for cell-type classification.

Registered on import in mmengine's own root registries (``mmengine.registry.MODELS``, ``DATASETS``,
``DATA_SAMPLERS``, ``TRANSFORMS``, ``METRICS``); configs use ``default_scope = 'mmengine'`` and
``custom_imports = dict(imports=['custom_modules.cls'])``. mmpretrain is not used: no onedl fork of it exists and the
original package pins the original mmcv/mmengine. Nothing here imports mmdet or mmseg.
"""

from .data import SartoriusImageTileDataset, SartoriusInstanceCropDataset
from .metrics import ClsMetric
from .models import SEMCNN, LipNet
from .samplers import ImbalanceSampler
from .transforms import ClsRandomAffine, ClsRandomFlip, PackClsInputs

__all__ = [
    "ClsMetric",
    "ClsRandomAffine",
    "ClsRandomFlip",
    "ImbalanceSampler",
    "LipNet",
    "PackClsInputs",
    "SEMCNN",
    "SartoriusImageTileDataset",
    "SartoriusInstanceCropDataset",
]
