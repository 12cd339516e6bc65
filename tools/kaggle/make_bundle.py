"""Pack a tuned ensemble into an upload-ready Kaggle model bundle.

A shim: ``python tools/kaggle/make_bundle.py ARGS`` is ``python -m workflow.cli.make_bundle ARGS`` (options and
logic there).
"""

import sys

from workflow.cli.make_bundle import main

if __name__ == "__main__":
    sys.exit(main())
