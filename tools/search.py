"""Hyperparameter search (optuna TPE) over config keys, one short training run per trial.

A shim: ``python tools/search.py ARGS`` is ``python -m workflow.cli.search ARGS`` (options and logic there).
"""

import sys

from workflow.cli.search import main

if __name__ == "__main__":
    sys.exit(main())
