"""Train an mmdet or mmseg model from a config (mmengine Runner).

A shim: ``python tools/train.py ARGS`` is ``python -m workflow.cli.train ARGS`` (options and logic there).
"""

import sys

from workflow.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
