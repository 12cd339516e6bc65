"""mmseg extensions: Sartorius semantic datasets, SE-U-Net with Feature Random Enhancement, its redraw hook
and a foreground IoU/Dice metric (all registered in ``mmseg.registry`` on import)."""

from .batch_renorm import BatchRenorm2d
from .cell_datasets import SartoriusCellBoundaryDataset, SartoriusCellDataset
from .datasets import SartoriusBoundarySemanticDataset, SartoriusSemanticDataset
from .fre import FeatureRandomEnhancement
from .hooks import FRERedrawHook
from .metrics import ForegroundIoUMetric
from .per_class_metric import PerClassIoUMetric
from .precise_bn import PreciseBNHook, recompute_norm_stats
from .se import SEBlock
from .se_unet import SEUNet

__all__ = [
    'BatchRenorm2d',
    'PerClassIoUMetric',
    'PreciseBNHook',
    'SartoriusCellBoundaryDataset',
    'SartoriusCellDataset',
    'recompute_norm_stats',
    'FRERedrawHook',
    'FeatureRandomEnhancement',
    'ForegroundIoUMetric',
    'SEBlock',
    'SEUNet',
    'SartoriusBoundarySemanticDataset',
    'SartoriusSemanticDataset',
]
