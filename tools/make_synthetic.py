"""Write a synthetic Sartorius dataset in the Kaggle layout (train.csv, train/, test/, sample_submission.csv).

A shim: ``python tools/make_synthetic.py ARGS`` is ``python -m workflow.cli.make_synthetic ARGS`` (options and logic there).
"""

import sys

from workflow.cli.make_synthetic import main

if __name__ == "__main__":
    sys.exit(main())
