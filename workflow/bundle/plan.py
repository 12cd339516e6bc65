"""The offline inference plan of a bundle: the :class:`workflow.execution.Step` list that turns a folder of test
images into a submission (what the Kaggle notebook runs with :func:`workflow.execution.execute`).

One ``python -m workflow.cli.infer`` run per network (box providers first; ``--tta``, ``--score-thr``,
``--max-per-img`` and ``--mask-head-on`` as when the ensemble was tuned) writing ``<work_dir>/<model>.npz`` (fold
networks: ``<model>.fold<k>.npz``, then merged into ``<model>.npz`` by a Python step); for a box-first ensemble
``python -m ensemble.fuse_boxes`` after its box models (per fold when they ran per fold); then ``python -m
ensemble.run`` with the bundle's ensemble YAML on ``work_dir`` (``--predictions-dir``), writing the submission.
Torch-free.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workflow.bundle.format import BundleError, fold_file, load_bundle
from workflow.execution import LogContext, Step

__all__ = ["MergeFoldPredictions", "inference_plan"]


@dataclass
class MergeFoldPredictions:
    """A plan step's function: merge a model's fold predictions (:func:`ensemble.tta.merge_fold_files`).

    Attributes:
        parts: The fold networks' prediction files.
        out: The merged file.
        name: The model name stored in its meta.
    """

    parts: list[str]
    out: str
    name: str

    def __call__(self, ctx: LogContext) -> None:
        """Merge the files; one line to the step's log."""
        from ensemble.tta import merge_fold_files

        n = merge_fold_files(self.parts, self.out, self.name)
        ctx.log(f"merged {len(self.parts)} fold model(s) of {self.name} over {n} images -> {self.out}")


def _fuse_steps(m: Mapping[str, Any], root: Path, work: Path, py: str) -> list[Step]:
    """Box-first step 1 of fused-boxes entry ``m``: ``python -m ensemble.fuse_boxes`` once per fold."""
    steps = []
    for k in range(m["n_folds"]):
        pred = work / fold_file(m, k)
        pattern = "{name}.npz" if m["n_folds"] == 1 else f"{{name}}.fold{k}.npz"
        cmd = [py, "-m", "ensemble.fuse_boxes", "--config", str(root / m["boxes_config"])]
        cmd += [
            "--predictions-dir",
            str(work),
            "--predictions-pattern",
            pattern,
            "--out",
            str(pred),
            "--no-progress",
        ]
        title = m["name"] + (f" fold {k}" if m["n_folds"] > 1 else "")
        steps.append(Step(f"fuse_boxes/{m['name']}/{k}", "fuse_boxes", title, cmd=cmd, outputs=[pred]))
    return steps


def _infer_steps(
    m: Mapping[str, Any],
    by_name: Mapping[str, Any],
    root: Path,
    images: Path,
    work: Path,
    py: str,
    device: str | None,
) -> list[Step]:
    """One ``python -m workflow.cli.infer`` per network of model entry ``m``."""
    steps = []
    for k, fold in enumerate(m["folds"]):
        pred = work / fold_file(m, k)
        title = m["name"] + (f" fold {k}" if len(m["folds"]) > 1 else "")
        cmd = [py, "-m", "workflow.cli.infer", str(root / fold["config"]), str(root / fold["checkpoint"])]
        cmd += ["--images", str(images), "--out", str(pred), "--name", m["name"], "--no-progress"]
        cmd += ["--score-thr", repr(float(m["score_thr"])), "--max-per-img", str(int(m["max_per_img"]))]
        if m.get("tta"):
            cmd.append("--tta")
        if m.get("masks_from"):
            boxes = work / fold_file(by_name[m["masks_from"]], fold.get("masks_from_fold"))
            cmd += ["--mask-head-on", str(boxes)]
        if device:
            cmd += ["--device", device]
        steps.append(Step(f"infer/{m['name']}/{k}", "infer", title, cmd=cmd, outputs=[pred]))
    return steps


def inference_plan(
    bundle_dir: str | os.PathLike,
    images_dir: str | os.PathLike,
    work_dir: str | os.PathLike,
    out: str | os.PathLike,
    device: str | None = None,
    python: str | None = None,
) -> list[Step]:
    """The steps that turn a folder of test images into a submission with a bundle (see the module docstring).

    Steps' ``stage`` is ``'infer'``, ``'fuse_boxes'``, ``'merge'`` (a Python call) or ``'ensemble'``; ``title``
    names the model (``<model> fold k`` for one fold network).

    Args:
        bundle_dir: The bundle folder.
        images_dir: Test images (``<id>.png``).
        work_dir: Where prediction files go (created).
        out: The submission CSV.
        device: ``python -m workflow.cli.infer --device`` (None: CUDA when available).
        python: Interpreter (default: this one).

    Returns:
        The steps in run order.

    Raises:
        BundleError: An invalid bundle or a missing images folder.
    """
    root = Path(bundle_dir).resolve()
    bundle = load_bundle(root, verify=False)
    images = Path(images_dir)
    if not images.is_dir():
        raise BundleError(f"test images folder {images} not found")
    work = Path(work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    py = python or sys.executable
    by_name = {m["name"]: m for m in bundle["models"]}
    steps: list[Step] = []
    for m in bundle["models"]:
        if m["role"] == "fused_boxes":
            parts = _fuse_steps(m, root, work, py)
        else:
            parts = _infer_steps(m, by_name, root, images, work, py, device)
        steps += parts
        if len(parts) > 1 and (m["in_ensemble"] or m["role"] != "fused_boxes"):
            merged = work / m["predictions"]
            files = [str(p) for s in parts for p in s.outputs]
            title = f"{m['name']} ({len(parts)} folds)"
            func = MergeFoldPredictions(files, str(merged), m["name"])
            steps.append(Step(f"merge/{m['name']}", "merge", title, func=func, outputs=[merged]))
    sub = Path(out).resolve()
    cmd = [
        py,
        "-m",
        "ensemble.run",
        "--config",
        str(root / bundle["ensemble"]),
        "--predictions-dir",
        str(work),
    ]
    cmd += ["--out", str(sub), "--no-progress"]
    steps.append(Step("ensemble", "ensemble", "ensemble", cmd=cmd, outputs=[sub]))
    return steps
