"""Image-level cell-type probabilities of a folder of PNGs or a COCO json, from a trained image-tile
classifier.

A shim: ``python tools/classify_images.py ARGS`` is ``python -m workflow.cli.classify_images ARGS`` (options and logic there).
"""

import sys

from workflow.cli.classify_images import main

if __name__ == "__main__":
    sys.exit(main())
