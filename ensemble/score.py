"""Score a Kaggle submission CSV against ground truth with the competition metric.

Usage::

    python -m ensemble.score --truth data/sartorius/annotations/fold0_val.json --submission submissions/val.csv
    python -m ensemble.score --truth data/sartorius/train.csv --submission submissions/val.csv \
        --images-from submission --json              # only the submitted images of a bigger truth file

``--truth`` is a ``train.csv``-format file (``id,annotation,width,height[,cell_type,...]``) or a COCO json.
The submission is validated like Kaggle does (header, ids, RLEs, overlapping masks); the first problem is
reported as one line naming the row and id, with exit code 2.

Which images are scored (``--images-from``): ``truth`` (default) scores every truth image, and a truth image
without any submission row scores as "no prediction" (0 when it has cells; one line on stderr says how many and
names ``--images-from submission``); ``submission`` scores only the submitted images (e.g. a validation fold's
submission against the whole ``train.csv``). A submission with images the truth does not hold (a test
submission: test images have no ground truth) is an error naming them, with exit code 2.

Output: the overall score and per-class / per-threshold tables, or with ``--json`` one JSON object with keys
``score``, ``n_images``, ``n_true``, ``n_pred``, ``n_missing``, ``per_class``, ``per_class_n_images``,
``per_threshold`` (and ``per_image`` with ``--per-image``; ``evaluation`` with ``--tuned-config``: whether the
scored images are the ones the ensemble was tuned on, ``in-sample``, or not, ``held-out``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from celldata.fileio import atomic_write_json, check_output_path
from ensemble.config import load_config
from ensemble.metrics import ScoreReport, evaluate
from ensemble.submission import load_truth, read_submission

__all__ = ["score_submission", "build_parser", "main"]


IMAGES_FROM = ("truth", "submission")


def score_submission(
    truth_path: str | Path,
    submission_path: str | Path,
    progress: bool = False,
    images_from: str = "truth",
) -> tuple[ScoreReport, list[str]]:
    """Validate a submission and score it.

    Args:
        truth_path: ``train.csv``-format file or COCO json.
        submission_path: Submission CSV.
        progress: Show a progress bar while scoring.
        images_from: ``"truth"``: every truth image is scored (one without submission rows as "no
            prediction"); ``"submission"``: only the submitted images.

    Returns:
        ``(report, missing_ids)``: the score report and the scored truth ids absent from the submission (always
        empty with ``images_from="submission"``).

    Raises:
        ValueError: Malformed truth or submission (one message naming the file, row and id), or submitted images
            that the truth does not hold (the truth does not fit the submission).
    """
    if images_from not in IMAGES_FROM:
        raise ValueError(f"images_from must be one of {IMAGES_FROM}, got {images_from!r}")
    truth, cell_types = load_truth(truth_path)
    sizes = {k: (m.height, m.width) for k, m in truth.items()}
    pred = read_submission(submission_path, heights_widths=sizes)
    foreign = [k for k in pred if k not in truth]
    if foreign:
        shown = ", ".join(repr(k) for k in foreign[:3]) + (" ..." if len(foreign) > 3 else "")
        raise ValueError(
            f"{submission_path}: {len(foreign)} of {len(pred)} submitted images are not in the truth {truth_path} "
            f"({shown}): this truth does not fit the submission (test images have no ground truth; score a "
            f"validation submission against its fold's annotations/fold<k>_val.json or train.csv)"
        )
    if images_from == "submission":
        truth = {k: truth[k] for k in pred}
    missing = [k for k in truth if k not in pred]
    return evaluate(truth, pred, cell_types=cell_types, progress=progress), missing


def build_parser() -> argparse.ArgumentParser:
    """Command-line parser of ``python -m ensemble.score``."""
    p = argparse.ArgumentParser(prog="python -m ensemble.score", description=__doc__.split("\n\n")[0])
    p.add_argument("--truth", required=True, help="ground truth: train.csv-format .csv or COCO .json")
    p.add_argument("--submission", required=True, help="submission CSV (id,predicted)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--per-image", action="store_true", help="include per-image scores in the JSON output")
    p.add_argument(
        "--images-from",
        choices=IMAGES_FROM,
        default="truth",
        help="score every truth image (truth, default: one without rows scores as 'no prediction') or only the "
        "submitted ones (submission: e.g. a validation fold's submission against the whole train.csv)",
    )
    p.add_argument("--report", type=Path, default=None, help="also write the full JSON report to this file")
    p.add_argument("--progress", action="store_true", help="show a progress bar while scoring")
    p.add_argument(
        "--tuned-config",
        type=Path,
        help="the ensemble YAML that produced the submission: labels the score in-sample / held-out / untuned "
        "from its tuning record",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code (0 ok, 2 invalid input)."""
    args = build_parser().parse_args(argv)
    try:
        if args.report is not None:
            check_output_path(args.report, "file", "--report")
        report, missing = score_submission(
            args.truth, args.submission, progress=args.progress, images_from=args.images_from
        )
        evaluation = (
            load_config(args.tuned_config).evaluation_of(list(report.per_image))
            if args.tuned_config
            else None
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if missing:
        shown = ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else "")
        print(
            f"note: {len(missing)} of {report.n_images} ground-truth image(s) have no row in the submission and "
            f"score as 'no prediction' ({shown}); --images-from submission scores only the submitted images",
            file=sys.stderr,
        )
    full: dict[str, Any] = report.to_dict()
    full["n_missing"] = len(missing)
    if evaluation is not None:
        full["evaluation"] = evaluation
    if args.report is not None:
        atomic_write_json(args.report, full, indent=2)
    if args.json:
        out = {k: v for k, v in full.items() if k != "per_image" or args.per_image}
        print(json.dumps(out))
    else:
        if evaluation is not None:
            print(f"evaluation: {evaluation}")
        print(report.format_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
