"""Convert LIVECell COCO annotations (polygons) into the project's COCO layout for pretraining.

A shim: ``python tools/prepare_livecell.py ARGS`` is ``python -m workflow.cli.prepare_livecell ARGS`` (options and logic there).
"""

import sys

from workflow.cli.prepare_livecell import main

if __name__ == "__main__":
    sys.exit(main())
