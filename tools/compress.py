"""Compress a trained mmseg segmentor: int8 PTQ, quantization-aware fine-tuning, structured channel pruning.

A shim: ``python tools/compress.py ARGS`` is ``python -m workflow.cli.compress ARGS`` (options and logic there).
"""

import sys

from workflow.cli.compress import main

if __name__ == "__main__":
    sys.exit(main())
