"""What OpenMMLab builds or runs: the stack's extensions, registered in the mmdet / mmseg registries when their
sub-package is imported, and the glue that builds runners and runs models.

* ``custom_modules.det``: mmdet side (SartoriusCocoDataset, ProgressiveResizeHook, SartoriusMetric; ``box_stats``,
  the box-size and anchor-coverage report of ``tools/analyze_boxes.py``).
* ``custom_modules.seg``: mmseg side (semantic datasets, SE-U-Net + FRE, FRERedrawHook, foreground metric, the
  Cellpose-style flow head and its targets, int8 / pruning compression).
* ``custom_modules.cls``: the microscopy image classifiers (mmengine registries) and their cross-validation.
* ``config``: the one config loader (``data_root`` / ``fold`` / ``pretrained`` / ``load_from`` overrides; torch-free).
* ``checkpoints``: a checkpoint against a config (class-dependent keys, the fit check, the pretrained-start hook).
* ``conversion``, ``inference``, ``runner_utils``: framework glue shared by both (imports only mmengine/torch at
  module level; mmdet or mmseg are imported on demand for the config's own library).

Orchestration (recipes, search, the Kaggle bundle, the command-line entry points) lives a floor up, in
``workflow``; nothing here imports it.

Importing ``custom_modules`` itself registers nothing: each config names its own sub-package in
``custom_imports`` so an mmdet run never imports mmseg and vice versa.
"""
