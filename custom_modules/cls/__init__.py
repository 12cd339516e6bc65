"""Microscopy image classifiers (the SEM CNN and LipNet papers) for cell-type classification.

Registered on import in mmengine's own root registries (``mmengine.registry.MODELS``, ``DATASETS``,
``DATA_SAMPLERS``, ``TRANSFORMS``, ``METRICS``); configs use ``default_scope = 'mmengine'`` and
``custom_imports = dict(imports=['custom_modules.cls'])`` (``tools/train.py`` / ``tools/test.py`` accept that scope).
mmpretrain is not used: the original package depends on the original mmcv/mmengine, and its onedl fork
(``onedl-mmpretrain``) is not part of this environment; the classifiers need nothing beyond mmengine's registries,
``BaseModel``, ``BaseDataset`` and ``BaseMetric``. Nothing here imports mmdet or mmseg.
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
