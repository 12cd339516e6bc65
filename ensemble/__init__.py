"""Framework-free fusion, scoring and submission writing for Sartorius-format cell instance segmentation.

Built on :mod:`celldata` (formats, RLE, instance masks, file writes); depends only on numpy, opencv, pycocotools,
numba and the libraries they need: it never imports torch or OpenMMLab, so it is fast to test and usable on cached
predictions (e.g. in an offline Kaggle notebook).
"""

from celldata import CLASSES, IMAGE_HEIGHT, IMAGE_WIDTH

__all__ = ["CLASSES", "IMAGE_HEIGHT", "IMAGE_WIDTH"]
