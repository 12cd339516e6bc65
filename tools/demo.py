"""Alias of ``make demo``: runs the CPU demo recipe (``tools/run_recipe.py configs/recipes/demo_cpu.yaml``).

A shim: ``python tools/demo.py ARGS`` is ``python -m workflow.cli.demo ARGS`` (options and logic there).
"""

import sys

from workflow.cli.demo import main

if __name__ == "__main__":
    sys.exit(main())
