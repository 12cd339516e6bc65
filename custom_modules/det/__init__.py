"""mmdet extensions: the Sartorius COCO dataset, the progressive multi-scale resize hook and the competition
metric (all registered in ``mmdet.registry`` on import).

Detector configs load this sub-package alone through
``custom_imports = dict(imports=['custom_modules.det'], allow_failed_imports=False)``, so an mmdet run never
imports mmseg.
"""

from .datasets import SartoriusCocoDataset
from .hooks import ProgressiveResizeHook
from .metrics import SartoriusMetric

__all__ = ["ProgressiveResizeHook", "SartoriusCocoDataset", "SartoriusMetric"]
