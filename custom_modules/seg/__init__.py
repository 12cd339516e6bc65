"""mmseg extensions: Sartorius semantic datasets, SE-U-Net with Feature Random Enhancement, its redraw hook,
a foreground IoU/Dice metric, and Cellpose-style flow heads with their target transforms (all registered in
``mmseg.registry`` on import)."""

from .batch_renorm import BatchRenorm2d
from .cell_datasets import SartoriusCellBoundaryDataset, SartoriusCellDataset
from .datasets import SartoriusBoundarySemanticDataset, SartoriusSemanticDataset
from .flow_head import FlowEncoderDecoder, FlowHead, FlowUPerHead
from .flow_transforms import GenerateFlowTargets, LoadFlowSource, PackFlowSegInputs, RandomRotate90
from .fre import FeatureRandomEnhancement
from .hooks import FRERedrawHook
from .losses import BCELoss, DiceBCELoss, DiceFocalLoss, JaccardBCELoss
from .metrics import ForegroundIoUMetric
from .per_class_metric import PerClassIoUMetric
from .precise_bn import PreciseBNHook, recompute_norm_stats
from .pruning import MagnitudePruningHook
from .se import SEBlock
from .se_unet import SEUNet
from .unet_paper import PaperUNet

__all__ = [
    'FlowEncoderDecoder',
    'FlowHead',
    'FlowUPerHead',
    'GenerateFlowTargets',
    'LoadFlowSource',
    'PackFlowSegInputs',
    'RandomRotate90',
    'BCELoss',
    'DiceBCELoss',
    'DiceFocalLoss',
    'JaccardBCELoss',
    'MagnitudePruningHook',
    'PaperUNet',
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
