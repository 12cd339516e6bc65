"""Fuse per-model prediction files into a Kaggle submission, and score it when ground truth is known.

Usage::

    python -m ensemble.run --config configs/ensemble/sartorius_ensemble.yaml
    python -m ensemble.run --config cfg.yaml --truth data/sartorius/annotations/fold0_val.json --overlays 6
    python -m ensemble.run --predictions work_dirs/preds/mask_rcnn_val.npz work_dirs/preds/yolox_val.npz \
        --weights 2 1 --name quick                                                  # no config
    python -m ensemble.run --config work_dirs/ensemble/tuned.yaml --predictions-dir work_dirs/preds \
        --predictions-pattern '{name}_test.npz' --out submissions/test.csv     # a tuned config on other images

For every image: WBF boxes -> weighted pixel voting masks -> rerank, per-class thresholds, overlap removal
(:func:`ensemble.masks.fuse_image`). Outputs (nothing is written unless every step succeeded; each file atomically):

* ``<out_dir>/<name>.csv`` (or ``--out``): the submission (``id,predicted``);
* with ground truth: ``<out_dir>/<name>_score.json`` (competition score, per class, per IoU threshold, per image,
  plus the configuration) and a short table on stdout. The images of the prediction files are scored; extra
  ground-truth images (e.g. other folds of a full ``train.csv``) are ignored and counted
  (``n_truth_images_ignored``). Every score is labelled (``evaluation``): ``in-sample`` when the config was tuned
  on these images (its ``tuning.images``), ``held-out`` when it was tuned on other images, ``untuned`` when it
  was not tuned, ``partly in-sample`` for a mix;
* ground truth from the config's ``truth:`` that does not hold the predicted images (e.g. a tuned config applied
  to test images with ``--predictions-dir``) is ignored with a note; ``--truth`` given on the command line must
  hold them;
* with ground truth and ``--overlays N > 0``: ``<out_dir>/<name>_overlays/<rank>_<id>.png`` for N images spread
  over the score range (worst to best): truth contours in green, predicted contours in red, on the image when it
  can be found (``--images-dir``, ``images_dir:`` of the config, or next to a COCO truth file), else on black.

Exit code 0 on success, 2 on invalid input (one ``error:`` line naming the file and the problem).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from celldata.fileio import atomic_write_bytes, check_output_path, encode_png
from celldata.instances import InstanceMasks
from ensemble.config import EnsembleConfig, ModelEntry, load_config
from ensemble.metrics import ScoreReport, evaluate
from ensemble.pipeline import FuseState, common_image_ids, fuse_predictions, load_models
from ensemble.submission import load_truth, write_submission

__all__ = [
    "find_image",
    "draw_overlay",
    "run_ensemble",
    "build_parser",
    "main",
]

TRUTH_COLOR = (0, 220, 0)  # BGR green
PRED_COLOR = (40, 40, 255)  # BGR red


def find_image(
    image_id: str, images_dir: str | Path | None, truth_path: str | Path | None = None
) -> Path | None:
    """Locate ``<id>.png`` in ``images_dir`` (or its ``train/``/``test/``), else next to a COCO truth file.

    Returns:
        The path, or None when not found.
    """
    candidates: list[Path] = []
    if images_dir is not None:
        d = Path(images_dir)
        candidates += [d / f"{image_id}.png", d / "train" / f"{image_id}.png", d / "test" / f"{image_id}.png"]
    if truth_path is not None and Path(truth_path).suffix.lower() == ".json":
        root = Path(truth_path).resolve().parent.parent  # <root>/annotations/<file>.json
        candidates += [root / "train" / f"{image_id}.png", root / "test" / f"{image_id}.png"]
    return next((c for c in candidates if c.is_file()), None)


def _draw_contours(canvas: np.ndarray, masks: InstanceMasks, color: tuple[int, int, int]) -> None:
    for crop, (x0, y0, _, _) in zip(masks.crops, masks.boxes):
        if crop.size == 0:
            continue
        contours, _ = cv2.findContours(
            crop.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE, offset=(int(x0), int(y0))
        )
        cv2.drawContours(canvas, contours, -1, color, 1)


def draw_overlay(
    image: np.ndarray | None, truth: InstanceMasks | None, pred: InstanceMasks, title: str = ""
) -> np.ndarray:
    """Truth (green) and predicted (red) contours on the image (or black).

    Args:
        image: uint8 (H, W) grayscale or (H, W, 3) BGR image, or None for a black background.
        truth: True masks, or None.
        pred: Predicted masks.
        title: Text written in the top-left corner.

    Returns:
        uint8 (H, W, 3) BGR picture.
    """
    h, w = pred.height, pred.width
    if image is None:
        canvas = np.zeros((h, w, 3), dtype=np.uint8)
    else:
        canvas = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image.copy()
        if canvas.shape[:2] != (h, w):
            canvas = cv2.resize(canvas, (w, h), interpolation=cv2.INTER_LINEAR)
    if truth is not None:
        _draw_contours(canvas, truth, TRUTH_COLOR)
    _draw_contours(canvas, pred, PRED_COLOR)
    if title:
        cv2.putText(canvas, title, (5, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(canvas, title, (5, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return canvas


def _overlay_ids(report: ScoreReport, n: int) -> list[str]:
    """n image ids spread over the score range, worst first."""
    ranked = sorted(report.per_image, key=lambda k: (report.per_image[k], k))
    if n <= 0 or not ranked:
        return []
    idx = np.unique(np.linspace(0, len(ranked) - 1, min(n, len(ranked))).round().astype(int))
    return [ranked[i] for i in idx]


def _matching_truth(
    truth_path: str | Path | None,
    explicit: bool,
    ids: Sequence[str],
    models: Sequence[dict],
    notes: list[str],
) -> tuple[dict[str, InstanceMasks] | None, dict[str, str]]:
    """The ground truth of the predicted images, or None (with a note) for a config truth that does not fit.

    Raises:
        ValueError: an explicit truth without some predicted image, or an image size that differs.
    """
    truth: dict[str, InstanceMasks] | None = None
    cell_types: dict[str, str] = {}
    if truth_path is None:
        return truth, cell_types
    if not explicit and not Path(truth_path).is_file():
        notes.append(f"note: the config's truth {truth_path} does not exist; not scoring")
        return truth, cell_types
    truth, cell_types = load_truth(truth_path)
    unknown = [k for k in ids if k not in truth]
    if unknown and not explicit:
        notes.append(
            f"note: {len(unknown)} of the {len(ids)} predicted images are not in the config's truth "
            f"{truth_path} (e.g. {unknown[:3]}); it is ignored and nothing is scored"
        )
        return None, cell_types
    if unknown:
        raise ValueError(
            f"{truth_path}: {len(unknown)} predicted image(s) have no ground truth, e.g. {unknown[:3]}"
        )
    for k in ids:
        p, t = models[0][k], truth[k]
        if (p.height, p.width) != (t.height, t.width):
            raise ValueError(
                f"image {k}: predictions are {p.height}x{p.width} but the ground truth is {t.height}x{t.width}"
            )
    return truth, cell_types


def _score_files(
    config: EnsembleConfig,
    ids: Sequence[str],
    instances: dict[str, InstanceMasks],
    truth: dict[str, InstanceMasks],
    cell_types: dict[str, str],
    truth_path: str | Path,
    out_csv: Path,
    images_dir: str | Path | None,
    overlays: int,
    progress: bool,
    summary: dict[str, Any],
) -> list[tuple[Path, bytes]]:
    """Scores the fused images; returns the score report and overlay PNGs to write (and fills ``summary``)."""
    # The prediction files define the evaluated images (e.g. one validation fold scored against the full
    # train.csv); ground-truth images without predictions are left out and counted in the report.
    ignored = [k for k in truth if k not in instances]
    if ignored:
        summary["notes"].append(
            f"note: scoring the {len(ids)} predicted images; {len(ignored)} other ground-truth image(s) ignored"
        )
    report = evaluate({k: truth[k] for k in ids}, instances, cell_types=cell_types, progress=progress)
    label = config.evaluation_of(ids)
    payload = report.to_dict()
    payload["evaluation"] = label
    payload["n_truth_images_ignored"] = len(ignored)
    payload["name"] = config.name
    payload["submission"] = str(out_csv)
    payload["truth"] = str(truth_path)
    payload["config"] = config.to_dict()
    score_json = out_csv.parent / f"{config.name}_score.json"
    pending = [(score_json, json.dumps(payload, indent=2).encode())]
    summary.update(score_json=str(score_json), report=report, evaluation=label, overlays=[])
    for rank, image_id in enumerate(_overlay_ids(report, overlays)):
        path = find_image(image_id, images_dir, truth_path)
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) if path is not None else None
        title = f"{image_id} {cell_types.get(image_id, '')} score {report.per_image[image_id]:.3f}"
        pic = draw_overlay(image, truth[image_id], instances[image_id], title)
        png = out_csv.parent / f"{config.name}_overlays" / f"{rank:02d}_{image_id}.png"
        pending.append((png, encode_png(pic)))
        summary["overlays"].append(str(png))
    return pending


def run_ensemble(
    config: EnsembleConfig,
    out_csv: str | Path | None = None,
    truth_path: str | Path | None = None,
    images_dir: str | Path | None = None,
    overlays: int = 4,
    progress: bool = True,
    workers: int | None = 1,
) -> dict[str, Any]:
    """Fuse, write the submission and (with ground truth) the score report and overlays.

    Args:
        config: The ensemble configuration.
        out_csv: Submission path (default ``<config.out_dir>/<config.name>.csv``).
        truth_path: Ground truth overriding ``config.truth``; it must hold every predicted image. A
            ``config.truth`` that does not is ignored (with a note).
        images_dir: Image directory overriding ``config.images_dir`` (for overlays).
        overlays: Number of overlay PNGs (only with ground truth).
        progress: Show progress bars.
        workers: Fusion processes (``None``/0: all cores; same result for any number).

    Returns:
        Summary dict: ``submission`` path, ``n_images``, ``n_instances``, ``notes`` (lines for the user), and with
        truth ``score_json``, ``evaluation`` (:meth:`EnsembleConfig.evaluation_of`), ``overlays`` (paths) and ``report``
        (:class:`ScoreReport`).

    Raises:
        ValueError: Invalid prediction files, truth or configuration; nothing is written then.
    """
    out_csv = Path(out_csv) if out_csv is not None else Path(config.out_dir) / f"{config.name}.csv"
    explicit_truth = truth_path is not None
    truth_path = truth_path if explicit_truth else config.truth
    images_dir = images_dir if images_dir is not None else config.images_dir
    notes: list[str] = []
    # load and validate everything before computing or writing anything
    models = load_models(config.models)
    ids = common_image_ids(models, [m.name for m in config.models])
    state = FuseState.from_config(config, models)
    truth, cell_types = _matching_truth(truth_path, explicit_truth, ids, models, notes)
    fused = fuse_predictions(state, config.weights, config.fusion, ids, workers=workers, progress=progress)
    instances = {
        k: v.masks if v.masks is not None else InstanceMasks.empty(v.height, v.width)
        for k, v in fused.items()
    }
    summary: dict[str, Any] = {
        "submission": str(out_csv),
        "n_images": len(ids),
        "n_instances": int(sum(len(m) for m in instances.values())),
        "notes": notes,
    }
    pending: list[tuple[Path, bytes]] = []
    if truth is not None:
        pending = _score_files(
            config,
            ids,
            instances,
            truth,
            cell_types,
            truth_path,
            out_csv,
            images_dir,
            overlays,
            progress,
            summary,
        )
    write_submission(out_csv, ids, instances)
    for path, data in pending:
        atomic_write_bytes(path, data)
    return summary


def build_parser() -> argparse.ArgumentParser:
    """Command-line parser of ``python -m ensemble.run``."""
    p = argparse.ArgumentParser(prog="python -m ensemble.run", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", type=Path, help="ensemble YAML config")
    src.add_argument("--predictions", nargs="+", help="prediction files to fuse with default parameters")
    p.add_argument("--weights", nargs="+", type=float, help="weights for --predictions (default: all 1)")
    p.add_argument("--name", default="ensemble", help="ensemble name for --predictions (default: ensemble)")
    p.add_argument("--out", type=Path, help="submission CSV path (default: <out_dir>/<name>.csv)")
    p.add_argument("--truth", type=Path, help="ground truth (train.csv-format .csv or COCO .json)")
    p.add_argument("--images-dir", type=Path, help="directory with <id>.png images for the overlays")
    p.add_argument(
        "--overlays", type=int, default=4, help="number of overlay PNGs with ground truth (default 4)"
    )
    p.add_argument(
        "--predictions-dir",
        type=Path,
        help="apply the config to the prediction files in this directory instead (see --predictions-pattern)",
    )
    p.add_argument(
        "--predictions-pattern",
        default="{file}",
        help="file name of each model in --predictions-dir; fields {name} (model name), {file} (current file name), "
        "{stem} (its stem), e.g. '{name}_test.npz' (default: {file})",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="fusion processes (default 0: all cores; same result for any number)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 2 invalid input)."""
    args = build_parser().parse_args(argv)
    try:
        if args.config is not None:
            if args.weights:
                raise ValueError("--weights is only used with --predictions (set weights in the config)")
            config = load_config(args.config)
        else:
            weights = args.weights or [1.0] * len(args.predictions)
            if len(weights) != len(args.predictions):
                raise ValueError(f"{len(args.predictions)} prediction files but {len(weights)} weights")
            if any(not w > 0 for w in weights):
                raise ValueError(f"--weights must be positive, got {weights}")
            config = EnsembleConfig(
                name=args.name,
                models=[ModelEntry(Path(p).stem, p, w) for p, w in zip(args.predictions, weights)],
            )
        if args.predictions_dir is not None:
            config = config.with_predictions_dir(args.predictions_dir, args.predictions_pattern)
        if args.workers < 0:
            raise ValueError(f"--workers must be >= 0, got {args.workers}")
        check_output_path(
            args.out if args.out is not None else Path(config.out_dir) / f"{config.name}.csv",
            "file",
            "--out" if args.out is not None else "out_dir/name.csv",
        )
        summary = run_ensemble(
            config,
            out_csv=args.out,
            truth_path=args.truth,
            images_dir=args.images_dir,
            overlays=args.overlays,
            progress=not args.no_progress,
            workers=args.workers,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for line in summary["notes"]:
        print(line, file=sys.stderr)
    print(f"wrote {summary['submission']} ({summary['n_images']} images, {summary['n_instances']} instances)")
    if "report" in summary:
        print(f"evaluation: {summary['evaluation']}")
        print(summary["report"].format_table())
        print(
            f"wrote {summary['score_json']}"
            + (f" and {len(summary['overlays'])} overlays" if summary["overlays"] else "")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
