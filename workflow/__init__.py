"""Orchestration: the floor between the command-line tools (``tools/``) and what OpenMMLab builds or runs
(``custom_modules/``). Nothing here registers anything in an OpenMMLab registry.

* ``workflow.cli``: the command-line entry points of the stack (``python -m workflow.cli.<tool>``; each
  ``tools/<tool>.py`` runs the same ``main``).
* ``workflow.execution``: the one step mechanism (a command with its output in a log, or a Python call), used by
  the recipe runner and the bundle's offline plan.
* ``workflow.recipe``: the whole competition pipeline (prepare -> pretrain -> train -> out-of-fold -> tune -> test
  -> submission -> bundle) as one resumable command, ``tools/run_recipe.py RECIPE.yaml``: recipe parsing, the plan,
  the Python-call steps, the step runner and the summary.
* ``workflow.search``: the hyper-parameter search (optuna TPE over any config; ``tools/search.py``).
* ``workflow.bundle``: the offline Kaggle bundle: its format and reader, collecting an ensemble's models, packing,
  the offline inference plan, submission validation (``tools/kaggle/make_bundle.py`` and the notebook).

Imports only ``custom_modules``, ``ensemble`` and ``celldata`` (never ``tools``); torch and OpenMMLab are imported
on demand by the functions that need them, never at package import.
"""
