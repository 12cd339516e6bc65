"""Orchestration: the floor between the command-line tools (``tools/``) and what OpenMMLab builds or runs
(``custom_modules/``). Nothing here registers anything in an OpenMMLab registry.

* ``workflow.recipe``: the whole competition pipeline (prepare -> pretrain -> train -> out-of-fold -> tune -> test
  -> submission -> bundle) as one resumable command, ``tools/run_recipe.py RECIPE.yaml``: recipe parsing, the plan,
  the Python-call steps, the step runner and the summary.
* ``workflow.search``: the hyper-parameter search (optuna TPE over any config; ``tools/search.py``).
* ``workflow.bundle``: the offline Kaggle bundle (``tools/kaggle/make_bundle.py`` and the inference notebook).

Imports only ``custom_modules``, ``ensemble`` and ``celldata`` (never ``tools``); torch and OpenMMLab are imported
on demand by the functions that need them, never at package import.
"""
