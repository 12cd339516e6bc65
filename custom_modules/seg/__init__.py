"""mmseg extensions: Sartorius semantic datasets, SE-U-Net with Feature Random Enhancement, its redraw hook
and a foreground IoU/Dice metric (all registered in ``mmseg.registry`` on import)."""

from .datasets import SartoriusBoundarySemanticDataset, SartoriusSemanticDataset
from .fre import FeatureRandomEnhancement
from .hooks import FRERedrawHook
from .metrics import ForegroundIoUMetric
from .se import SEBlock
from .se_unet import SEUNet

__all__ = [
    'FRERedrawHook',
    'FeatureRandomEnhancement',
    'ForegroundIoUMetric',
    'SEBlock',
    'SEUNet',
    'SartoriusBoundarySemanticDataset',
    'SartoriusSemanticDataset',
]
