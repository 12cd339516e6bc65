"""Stratified k-fold cross-validation (grouped by sample_id) of a classifier config.

A shim: ``python tools/cross_validate.py ARGS`` is ``python -m workflow.cli.cross_validate ARGS`` (options and logic there).
"""

import sys

from workflow.cli.cross_validate import main

if __name__ == "__main__":
    sys.exit(main())
