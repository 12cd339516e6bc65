"""Framework-free data layer of the stack: the Sartorius formats and the tools that make and describe data sets.

The ground floor: ``ensemble``, ``custom_modules`` and ``tools`` import from here; nothing here imports them, torch
or OpenMMLab (a test keeps it so).

* :mod:`celldata.rle`: Kaggle RLE (row-major, 1-based) and COCO RLE.
* :mod:`celldata.instances`: :class:`~celldata.instances.InstanceMasks`, instance masks as crops + windows.
* :mod:`celldata.fileio`: atomic file writes (temporary file, then rename).
* :mod:`celldata.kaggle_csv`: reading and validating ``train.csv`` and its images.
* :mod:`celldata.prepare`: Kaggle layout -> COCO json per fold, semantic label PNGs, split lists.
* :mod:`celldata.synthetic`: synthetic data in the exact Kaggle layout.
* :mod:`celldata.livecell`: LIVECell annotations -> the stack's COCO layout.
* :mod:`celldata.report`: the dataset report (statistics, histograms, overlays).
"""

CLASSES: tuple[str, ...] = ("shsy5y", "astro", "cort")
"""Cell types of the Sartorius competition; label ``i`` (0-based) is ``CLASSES[i]``, COCO category id ``i + 1``."""

IMAGE_HEIGHT: int = 520
IMAGE_WIDTH: int = 704
