"""Recipes (``workflow.recipe``): the whole competition pipeline (prepare -> pretrain -> train -> OOF -> tune -> test -> submission)
as one resumable command, ``tools/run_recipe.py RECIPE.yaml``.

* :mod:`workflow.recipe.config` parses and validates a recipe YAML (``configs/recipes/README.md`` documents it);
* :mod:`workflow.recipe.plan` turns a recipe into an ordered list of steps (commands or Python calls) with their
  inputs' fingerprints and outputs;
* :mod:`workflow.recipe.runner` runs a plan: skips finished steps (stamps), resumes interrupted training, times each
  step, honours ``--only`` / ``--from`` / ``--dry-run``;
* :mod:`workflow.recipe.summary` writes ``summary.md`` / ``summary.json`` and the plots.

The package is framework-free at import time (no torch / mmdet / mmseg); training and inference run as
subprocesses of the project's own tools.
"""

__all__ = ["config", "plan", "runner", "summary"]
