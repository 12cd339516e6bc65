"""Framework-free ensembling, scoring and submission writing for Sartorius-format cell instance segmentation.

This package depends only on numpy, opencv, pycocotools and numba: it never imports torch or OpenMMLab, so it is
fast to test and usable on cached predictions (e.g. in an offline Kaggle notebook).
"""

CLASSES: tuple[str, ...] = ("shsy5y", "astro", "cort")
"""Cell types of the Sartorius competition; label ``i`` (0-based) is ``CLASSES[i]``, COCO category id ``i + 1``."""

IMAGE_HEIGHT: int = 520
IMAGE_WIDTH: int = 704
