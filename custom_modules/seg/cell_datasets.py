"""Cell-vs-background views of the prepared Sartorius semantic labels (the FRE study's label sets).

The prepared label PNGs keep the cell type (0 background, 1 shsy5y, 2 astro, 3 cort; 4 boundary in the
boundary variant). These datasets merge the three cell types into one class while loading, through
mmseg's ``label_map`` (applied by ``LoadAnnotations``), so no second copy of the labels is written:

* :class:`SartoriusCellDataset`: 0 background, 1 cell (``semantic/train``).
* :class:`SartoriusCellBoundaryDataset`: 0 background, 1 cell, 2 boundary between touching cells
  (``semantic/train_boundary``).
"""

from __future__ import annotations

from collections.abc import Sequence

from mmseg.registry import DATASETS

from .datasets import SartoriusSemanticDataset


@DATASETS.register_module()
class SartoriusCellDataset(SartoriusSemanticDataset):
    """Binary semantic segmentation (background, cell) over ``semantic/train`` label maps."""

    METAINFO = dict(classes=('background', 'cell'), palette=[[0, 0, 0], [230, 25, 75]])
    #: prepared label -> training label
    CELL_LABEL_MAP = {0: 0, 1: 1, 2: 1, 3: 1}

    @classmethod
    def get_label_map(cls, new_classes: Sequence | None = None) -> dict[int, int]:
        """The fixed merge of cell types (``new_classes`` other than the class's own are rejected)."""
        if new_classes is not None and list(new_classes) != list(cls.METAINFO['classes']):
            raise ValueError(
                f'{cls.__name__}: classes are fixed to {cls.METAINFO["classes"]}, got {new_classes}'
            )
        return dict(cls.CELL_LABEL_MAP)


@DATASETS.register_module()
class SartoriusCellBoundaryDataset(SartoriusCellDataset):
    """Background, cell, boundary over ``semantic/train_boundary`` label maps.

    Use with ``data_prefix=dict(img_path='train', seg_map_path='semantic/train_boundary')``.
    """

    METAINFO = dict(
        classes=('background', 'cell', 'boundary'), palette=[[0, 0, 0], [230, 25, 75], [255, 225, 25]]
    )
    CELL_LABEL_MAP = {0: 0, 1: 1, 2: 1, 3: 1, 4: 2}
