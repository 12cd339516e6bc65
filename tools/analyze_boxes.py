"""Box sizes per class and anchor coverage of detector configs (is a cell too small for the anchors?).

A shim: ``python tools/analyze_boxes.py ARGS`` is ``python -m workflow.cli.analyze_boxes ARGS`` (options and logic there).
"""

import sys

from workflow.cli.analyze_boxes import main

if __name__ == "__main__":
    sys.exit(main())
