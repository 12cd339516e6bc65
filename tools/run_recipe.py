"""Run a recipe: the whole competition pipeline as one resumable command (configs/recipes/README.md).

A shim: ``python tools/run_recipe.py ARGS`` is ``python -m workflow.cli.run_recipe ARGS`` (options and logic there).
"""

import sys

from workflow.cli.run_recipe import main

if __name__ == "__main__":
    sys.exit(main())
