"""Kaggle model bundle: pack a tuned ensemble's models into one upload-ready folder, and run it offline.

A bundle is what a Kaggle notebook with the internet off needs besides the wheelhouse (see
``tools/kaggle/build_wheelhouse.sh``): for every model of the ensemble its resolved inference config and a stripped
checkpoint, the ensemble YAML rewritten to name bundle-relative prediction files, and ``bundle.json``::

    BUNDLE/
      bundle.json               format, models (role, TTA, thresholds, files with size and sha256), ensemble
      ensemble.yaml             the tuned ensemble; ``predictions: <model>.npz`` names files that the notebook
                                writes into its prediction folder (no path outside the bundle; the ``tuning``
                                record keeps its scores and image ids, its file paths reduced to file names)
      models/<name>[/fold<k>]/config.py   resolved inference config: no ``_base_``, no data paths, no pretrained
                                weights
      models/<name>[/fold<k>]/weights.pth ``state_dict`` (the EMA weights when the run kept them) + small
                                ``meta``; no optimizer state, no message hub
      fuse_boxes/<name>.yaml    box-first step 1 (``python -m ensemble.fuse_boxes``), when the ensemble is box-first

Where each model comes from: the prediction file an ensemble model names records the config, checkpoint, TTA,
thresholds and ``--mask-head-on`` source that ``python -m workflow.cli.infer`` used (its ``meta``). A model whose
masks were predicted on another file's boxes brings that box model into the bundle too (``in_ensemble: false`` when
the ensemble itself does not fuse it), and the notebook runs it first. Explicit ``models={name: (config,
checkpoint)}`` override what the files record.

Roles: ``boxes`` (an mmdet model without masks), ``instance`` (mmdet with masks), ``mask_head`` (mmdet masks
predicted on another model's boxes or on fused boxes), ``semantic`` (an mmseg foreground map), ``fused_boxes``
(box-first step 1: ``python -m ensemble.fuse_boxes`` of box models, with ``fuse_boxes/<name>.yaml`` in the bundle).

Modules, by role: :mod:`~workflow.bundle.format` (the format, ``load_bundle``, the inside-the-bundle checks),
:mod:`~workflow.bundle.collect` (which models), :mod:`~workflow.bundle.pack` (``make_bundle``),
:mod:`~workflow.bundle.plan` (the notebook's :class:`workflow.execution.Step` list),
:mod:`~workflow.bundle.submission` (``validate_submission``). Importing the package does not import torch.
"""

from __future__ import annotations

from workflow.bundle.collect import collect_models
from workflow.bundle.format import (
    BUNDLE_FILE,
    BUNDLE_FORMAT,
    ENSEMBLE_FILE,
    ROLES,
    BundleError,
    FoldSource,
    FusedBoxesSource,
    ModelSource,
    load_bundle,
    paths_outside,
    sha256_file,
)
from workflow.bundle.pack import check_checkpoint_loads, inference_config, make_bundle, strip_checkpoint
from workflow.bundle.plan import inference_plan
from workflow.bundle.submission import validate_submission

__all__ = [
    "BUNDLE_FILE",
    "BUNDLE_FORMAT",
    "ENSEMBLE_FILE",
    "ROLES",
    "BundleError",
    "FoldSource",
    "FusedBoxesSource",
    "ModelSource",
    "collect_models",
    "inference_config",
    "strip_checkpoint",
    "check_checkpoint_loads",
    "make_bundle",
    "load_bundle",
    "paths_outside",
    "inference_plan",
    "validate_submission",
    "sha256_file",
]
