"""OpenMMLab extensions of the stack, registered in mmdet/mmseg/mmengine registries on import.

Configs load them with ``custom_imports = dict(imports=['custom_modules'], allow_failed_imports=False)``.

* ``datasets``, ``hooks``, ``metrics``: mmdet side (SartoriusCocoDataset, ProgressiveResizeHook, SartoriusMetric).
* ``seg``: mmseg side (semantic datasets, SE-U-Net + FRE, FRERedrawHook, foreground metric).
"""

from . import datasets, hooks, metrics, seg  # noqa: F401
