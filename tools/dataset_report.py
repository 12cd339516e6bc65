"""Dataset report: counts per class, instance size histograms, mask overlays, report.json / report.md.

A shim: ``python tools/dataset_report.py ARGS`` is ``python -m workflow.cli.dataset_report ARGS`` (options and logic there).
"""

import sys

from workflow.cli.dataset_report import main

if __name__ == "__main__":
    sys.exit(main())
