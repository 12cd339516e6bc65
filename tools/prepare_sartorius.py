"""Convert a Kaggle-layout Sartorius dataset into COCO folds, semantic label PNGs and split lists.

A shim: ``python tools/prepare_sartorius.py ARGS`` is ``python -m workflow.cli.prepare_sartorius ARGS`` (options and logic there).
"""

import sys

from workflow.cli.prepare_sartorius import main

if __name__ == "__main__":
    sys.exit(main())
