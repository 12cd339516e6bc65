"""mmseg datasets over the prepared Sartorius layout (see ``tools/prepare_sartorius.py``).

Layout under ``data_root``: images ``train/<id>.png`` (704x520 grayscale), semantic labels
``semantic/train/<id>.png`` (uint8: 0 background, 1 shsy5y, 2 astro, 3 cort) or ``semantic/train_boundary/<id>.png``
(same + 4 = boundary between touching cells), splits ``splits/fold{k}_{train,val}.txt`` (one image id per line).
Images are loaded by the pipeline (``LoadImageFromFile``, default ``color_type='color'``) as 3 identical channels.
"""

from __future__ import annotations

import os.path as osp

from mmengine.fileio import get_local_path
from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS

_PALETTE = [[0, 0, 0], [230, 25, 75], [60, 180, 75], [0, 130, 200], [255, 225, 25]]


@DATASETS.register_module()
class SartoriusSemanticDataset(BaseSegDataset):
    """Semantic cell-type segmentation: classes background, shsy5y, astro, cort (labels 0..3).

    Args:
        ann_file: Split file (relative to ``data_root``) listing one image id per line; blank lines ignored.
        check_files: Verify that every listed image and label file exists (clear error naming the id).
        **kwargs: Passed to :class:`mmseg.datasets.BaseSegDataset` (``data_root``, ``data_prefix=dict(
            img_path='train', seg_map_path='semantic/train')``, ``pipeline``, ...).
    """

    METAINFO = dict(classes=('background', 'shsy5y', 'astro', 'cort'), palette=_PALETTE[:4])

    def __init__(
        self,
        ann_file: str = '',
        img_suffix: str = '.png',
        seg_map_suffix: str = '.png',
        reduce_zero_label: bool = False,
        check_files: bool = True,
        **kwargs,
    ) -> None:
        self.check_files = check_files
        super().__init__(
            ann_file=ann_file,
            img_suffix=img_suffix,
            seg_map_suffix=seg_map_suffix,
            reduce_zero_label=reduce_zero_label,
            **kwargs,
        )

    def load_data_list(self) -> list[dict]:
        """Read the split file into ``[{img_path, seg_map_path, label_map, reduce_zero_label, seg_fields}]``.

        Raises:
            FileNotFoundError: The split file, an image or a label map is missing (names the split and id).
            ValueError: The split file lists no image or an id twice.
        """
        if not self.ann_file:
            raise ValueError(f'{type(self).__name__}: ann_file (split file of image ids) is required')
        if not osp.isfile(self.ann_file):
            raise FileNotFoundError(f'{type(self).__name__}: split file not found: {self.ann_file}')
        with get_local_path(self.ann_file) as path, open(path, encoding='utf-8') as f:
            ids = [line.strip() for line in f if line.strip()]
        if not ids:
            raise ValueError(f'{type(self).__name__}: split file {self.ann_file} lists no image id')
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
            raise ValueError(f'{type(self).__name__}: split file {self.ann_file} repeats ids {dup}')
        img_dir = self.data_prefix.get('img_path', '')
        ann_dir = self.data_prefix.get('seg_map_path', None)
        data_list = []
        for line_no, img_id in enumerate(ids, start=1):
            img_path = osp.join(img_dir, img_id + self.img_suffix)
            info = dict(img_path=img_path, label_map=self.label_map, reduce_zero_label=self.reduce_zero_label)
            info['seg_fields'] = []
            if ann_dir is not None:
                info['seg_map_path'] = osp.join(ann_dir, img_id + self.seg_map_suffix)
            if self.check_files:
                for key in ('img_path', 'seg_map_path'):
                    if key in info and not osp.isfile(info[key]):
                        raise FileNotFoundError(
                            f'{type(self).__name__}: {self.ann_file} line {line_no} (id {img_id!r}): '
                            f'{key} not found: {info[key]}'
                        )
            data_list.append(info)
        return data_list


@DATASETS.register_module()
class SartoriusBoundarySemanticDataset(SartoriusSemanticDataset):
    """As :class:`SartoriusSemanticDataset` plus class 4 ``boundary`` (pixels between touching cells).

    Use with ``data_prefix=dict(img_path='train', seg_map_path='semantic/train_boundary')``.
    """

    METAINFO = dict(classes=('background', 'shsy5y', 'astro', 'cort', 'boundary'), palette=_PALETTE)
