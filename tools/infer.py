"""Predict images with a trained model and write an ensemble prediction file (ensemble/predictions.py format).

A shim: ``python tools/infer.py ARGS`` is ``python -m workflow.cli.infer ARGS`` (options and logic there).
"""

import sys

from workflow.cli.infer import main

if __name__ == "__main__":
    sys.exit(main())
