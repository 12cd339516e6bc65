"""OpenMMLab extensions of the stack, registered in mmdet/mmseg/mmengine registries on import.

Configs load them with ``custom_imports = dict(imports=['custom_modules'], allow_failed_imports=False)``.
"""

from . import seg  # noqa: F401  (mmseg: datasets, SE-U-Net + FRE, hooks, metrics)
