"""Evaluate a checkpoint on the test split of a config (mmdet or mmseg) with the config's test evaluator.

A shim: ``python tools/test.py ARGS`` is ``python -m workflow.cli.test ARGS`` (options and logic there).
"""

import sys

from workflow.cli.test import main

if __name__ == "__main__":
    sys.exit(main())
