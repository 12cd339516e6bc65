"""The recipe steps that are Python calls rather than one tool command.

Each is a small callable object holding its paths; ``step(ctx)`` does the work, running project tools through
``ctx.run`` (output into the step's log) where a tool exists, and writing every file atomically. None imports
torch except :class:`MergeFolds` (which reuses the TTA merge of :mod:`custom_modules.inference` when several
fold models predicted the same images).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import yaml

from celldata.fileio import atomic_write_json, atomic_write_text
from workflow.recipe.config import REPO, Recipe

__all__ = [
    "StepContext",
    "ensemble_start_dict",
    "FuseBoxes",
    "JoinFolds",
    "MergeFolds",
    "SemanticScore",
    "ScoreSingle",
    "Tune",
    "Submission",
    "Bundle",
    "Summary",
]


class StepContext(Protocol):
    """What a step may use from the runner."""

    def run(self, cmd: list[str]) -> str:
        """Run a command (output to the step log); returns its output; raises ``RuntimeError`` on failure."""

    def log(self, text: str) -> None:
        """Write a line to the step log (and the console when verbose)."""


def ensemble_start_dict(recipe: Recipe, name: str, files: dict[str, Path]) -> dict[str, Any]:
    """Starting ensemble config (the ``ensemble.config`` YAML layout) for the members ``files``.

    Fusion parameters and class thresholds come from the recipe's ``ensemble.start`` file (if any) with the
    recipe's ``ensemble.fusion`` / ``ensemble.class_thresholds`` on top; weights from the recipe's models.
    """
    base: dict[str, Any] = {}
    if recipe.ensemble.start:
        p = Path(recipe.ensemble.start)
        base = yaml.safe_load((p if p.is_absolute() else REPO / p).read_text()) or {}
    fusion = {**(base.get("fusion") or {}), **recipe.ensemble.fusion}
    thr = {**(base.get("class_thresholds") or {}), **recipe.ensemble.class_thresholds}
    weights = {n: w for n, _, w in recipe.members()}
    semantic = {n for n, kind, _ in recipe.members() if kind == "semantic"}
    if recipe.ensemble.mode == "box_first":
        fusion.setdefault("mode", "box_first")
    if not semantic & set(files):
        fusion.pop("semantic_weight", None)
    out: dict[str, Any] = {
        "name": name,
        "models": [
            {"name": n, "predictions": str(p), "weight": float(weights.get(n, 1.0))} for n, p in files.items()
        ],
        "fusion": fusion,
        "class_thresholds": thr,
    }
    return out


def _write_yaml(path: Path, data: dict[str, Any], header: str | None = None) -> None:
    text = yaml.safe_dump(data, sort_keys=False)
    if header:
        text = "".join(f"# {line}\n" for line in header.splitlines()) + text
    atomic_write_text(path, text)


def _validate_ensemble_yaml(path: Path) -> None:
    from ensemble.config import load_config

    load_config(path)


@dataclass
class FuseBoxes:
    """Box-first step 1: WBF of the box models' boxes into one prediction file (``ensemble.fuse_boxes``)."""

    recipe: Recipe
    files: dict[str, Path]
    weights: dict[str, float]
    out: Path
    config_path: Path
    python: str

    def __call__(self, ctx: StepContext) -> None:
        data = ensemble_start_dict(self.recipe, "fused_boxes", self.files)
        for m in data["models"]:
            m["weight"] = float(self.weights[m["name"]])
        _write_yaml(self.config_path, data)
        ctx.run(
            [
                self.python,
                "-m",
                "ensemble.fuse_boxes",
                "--config",
                str(self.config_path),
                "--out",
                str(self.out),
            ]
        )


@dataclass
class JoinFolds:
    """Join the per-fold validation predictions of one member (disjoint images) into one file."""

    parts: list[Path]
    out: Path

    def __call__(self, ctx: StepContext) -> None:
        from ensemble.predictions import load_predictions, save_predictions

        merged: dict[str, Any] = {}
        meta: dict[str, Any] = {}
        for p in self.parts:
            preds, m = load_predictions(p)
            dup = sorted(set(preds) & set(merged))
            if dup:
                raise RuntimeError(
                    f"{p}: images {dup[:3]} already predicted by another fold (folds overlap?)"
                )
            merged.update(preds)
            meta = meta or dict(m)
        meta["folds_joined"] = [str(p) for p in self.parts]
        save_predictions(self.out, list(merged.values()), meta=meta)
        ctx.log(f"joined {len(self.parts)} fold file(s): {len(merged)} images -> {self.out}")


@dataclass
class MergeFolds:
    """Merge the test predictions of several fold models of one member (flip-TTA merge rule across folds)."""

    parts: list[Path]
    out: Path

    def __call__(self, ctx: StepContext) -> None:
        from ensemble.tta import merge_fold_files

        n = merge_fold_files(self.parts, self.out)
        ctx.log(f"merged {len(self.parts)} fold model(s) over {n} images -> {self.out}")


def _read_label(path: Path) -> np.ndarray:
    import cv2

    lab = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if lab is None:
        raise RuntimeError(f"cannot read the semantic label {path}")
    return lab


@dataclass
class SemanticScore:
    """Foreground IoU (cells vs background, map thresholded at 0.5) of a semantic member on its images."""

    predictions: Path
    data_root: Path
    out: Path

    def __call__(self, ctx: StepContext) -> None:
        from ensemble.metrics import ForegroundCounts, foreground_counts
        from ensemble.predictions import load_predictions

        preds, _ = load_predictions(self.predictions)
        pooled = ForegroundCounts()
        per_image: dict[str, float] = {}
        for iid, p in preds.items():
            if p.semantic is None:
                raise RuntimeError(f"{self.predictions}: image {iid} has no semantic map")
            fg_true = _read_label(self.data_root / "semantic" / "train" / f"{iid}.png") > 0
            counts = foreground_counts(p.semantic >= 0.5, fg_true)
            pooled += counts
            per_image[iid] = counts.iou
        report = {
            "metric": "foreground IoU (map >= 0.5 vs any cell), pooled over the images",
            "fg_iou": pooled.iou,
            "fg_iou_mean_per_image": float(np.mean(list(per_image.values()))) if per_image else float("nan"),
            "n_images": len(per_image),
            "per_image": per_image,
        }
        atomic_write_json(self.out, report, indent=2)
        ctx.log(f"fgIoU {report['fg_iou']:.4f} on {len(per_image)} images")


@dataclass
class ScoreSingle:
    """One member alone with the starting parameters on the out-of-fold images (``ensemble.run``)."""

    recipe: Recipe
    name: str
    predictions: Path
    truth: Path
    data_root: Path
    config_path: Path
    out_dir: Path
    python: str

    def __call__(self, ctx: StepContext) -> None:
        data = ensemble_start_dict(self.recipe, self.name, {self.name: self.predictions})
        _write_yaml(self.config_path, data)
        _validate_ensemble_yaml(self.config_path)
        ctx.run(
            [self.python, "-m", "ensemble.run", "--config", str(self.config_path), "--truth", str(self.truth),
             "--out", str(self.out_dir / f"{self.name}.csv"), "--images-dir", str(self.data_root / "train"),
             "--overlays", str(self.recipe.outputs.overlays), "--no-progress"]
        )  # fmt: skip


@dataclass
class Tune:
    """Tune one ensemble (or one member alone) on the out-of-fold predictions, then score the result there."""

    recipe: Recipe
    run_name: str
    files: dict[str, Path]
    truth: Path
    data_root: Path
    out_dir: Path
    python: str

    def __call__(self, ctx: StepContext) -> None:
        t = self.recipe.ensemble.tune
        start = self.out_dir / f"{self.run_name}.yaml"
        tuned = self.out_dir / f"{self.run_name}_tuned.yaml"
        _write_yaml(start, ensemble_start_dict(self.recipe, self.run_name, self.files))
        _validate_ensemble_yaml(start)
        common = ["--truth", str(self.truth), "--images-dir", str(self.data_root / "train"), "--no-progress"]
        # the starting parameters, nothing fitted on these images
        ctx.run([self.python, "-m", "ensemble.run", "--config", str(start), "--out", str(start.with_suffix(".csv")),
                 "--overlays", "0", *common])  # fmt: skip
        cmd = [self.python, "-m", "ensemble.tune", "--config", str(start), "--truth", str(self.truth),
               "--out", str(tuned), "--method", t.method, "--rounds", str(t.rounds), "--trials", str(t.trials),
               "--seed", str(t.seed), "--no-progress"]  # fmt: skip
        heldout_json = self.out_dir / f"{self.run_name}_heldout.json"
        if t.cv:
            cmd += ["--cv", str(t.cv)]
        if t.workers is not None:
            cmd += ["--workers", str(t.workers)]
        ctx.run(cmd)
        record = (yaml.safe_load(tuned.read_text()) or {}).get("tuning") or {}
        if record.get("cv"):
            cv = record["cv"]
            atomic_write_json(
                heldout_json,
                {"score_held_out": cv.get("score_held_out"), "score_in_sample": record.get("score_in_sample"),
                 "score_start": record.get("score_start"), "k": cv.get("k"), "grouped_by": cv.get("grouped_by"),
                 "folds": cv.get("folds"), "n_images": record.get("n_images")},
                indent=2,
            )  # fmt: skip
        ctx.run([self.python, "-m", "ensemble.run", "--config", str(tuned), "--out", str(tuned.with_suffix(".csv")),
                 "--overlays", str(self.recipe.outputs.overlays), *common])  # fmt: skip


@dataclass
class Submission:
    """The tuned ensemble applied to the test predictions (``ensemble.run --predictions-dir``) -> the CSV; the
    retargeted config is also written (``ensemble_test.yaml``: what the Kaggle bundle packs)."""

    tuned: Path
    test_dir: Path
    test_config: Path
    submission: Path
    python: str

    def __call__(self, ctx: StepContext) -> None:
        from ensemble.config import load_config, save_config

        pattern = "{name}_test.npz"
        retargeted = load_config(self.tuned).with_predictions_dir(self.test_dir, pattern)
        save_config(retargeted, self.test_config, header=f"{self.tuned} applied to {self.test_dir}/{pattern}")
        ctx.run([self.python, "-m", "ensemble.run", "--config", str(self.tuned), "--predictions-dir", str(self.test_dir),
                 "--predictions-pattern", pattern, "--out", str(self.submission), "--no-progress"])  # fmt: skip
        from ensemble.submission import read_submission

        read_submission(self.submission)  # a valid CSV, or a clear error


@dataclass
class Bundle:
    """Kaggle bundle of the tuned ensemble retargeted to the test predictions (``python -m
    workflow.cli.make_bundle``, the module behind ``tools/kaggle/make_bundle.py``: each member's config and
    checkpoints as its prediction file recorded them, every fold network of a merged member)."""

    tuned: Path
    out: Path
    python: str

    def __call__(self, ctx: StepContext) -> None:
        ctx.run([self.python, "-m", "workflow.cli.make_bundle", "--ensemble", str(self.tuned), "--out",
                 str(self.out), "--overwrite"])  # fmt: skip


@dataclass
class Summary:
    """``summary.md`` / ``summary.json`` + plots (see :mod:`workflow.recipe.summary`)."""

    recipe: Recipe
    work_dir: Path
    data_root: Path

    def __call__(self, ctx: StepContext) -> None:
        from workflow.recipe.summary import write_summary

        s = write_summary(self.recipe, self.work_dir, self.data_root)
        ctx.log(s["markdown"])
