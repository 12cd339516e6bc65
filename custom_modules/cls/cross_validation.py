"""Stratified, grouped k-fold cross-validation of classifier configs and the report of both papers.

:func:`cross_validate` trains one mmengine Runner per fold on the samples of ``cv_ann_file`` outside the fold and
tests it on the fold (the config's ``test_evaluator`` must be :class:`~custom_modules.cls.metrics.ClsMetric`);
:func:`summarize_folds` turns per-fold confusion matrices into per-class precision / recall / F1 / normalised TPR,
accuracy and the k-fold average normalised confusion matrix (mean +- std over folds); :func:`write_report` writes
``cv_summary.json``, ``cv_summary.md`` and ``confusion_normalized.png``.

Folds: :func:`custom_modules.cls.folds.grouped_stratified_folds`, the detectors' folds
(:func:`celldata.prepare.make_folds`: grouped by ``sample_id``, stratified by cell type, seeded) over the samples'
images, so classifier fold ``k`` holds the images of the detectors' fold ``k`` for the same seed.
"""

from __future__ import annotations

import copy
import os
import os.path as osp
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from celldata.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text

from .folds import grouped_stratified_folds
from .metrics import classification_metrics, confusion_from_metrics, normalize_confusion

__all__ = ["summarize_folds", "format_summary", "write_report", "cross_validate"]


def _expand(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Confusion counts -> (y_true, y_pred) sample lists."""
    t, p = np.nonzero(cm >= 0)
    counts = cm[t, p].astype(np.int64)
    return np.repeat(t, counts), np.repeat(p, counts)


def summarize_folds(confusions: Sequence[np.ndarray], classes: Sequence[str]) -> dict[str, Any]:
    """Per-fold metrics and their mean +- std.

    Args:
        confusions: One ``(C, C)`` count matrix per fold (rows true, columns predicted).
        classes: Class names.

    Returns:
        ``classes``, ``folds`` (per-fold :func:`classification_metrics` dicts), ``mean`` / ``std`` (over folds) of
        ``accuracy``, ``macro_f1`` and per class ``precision``, ``recall``, ``f1``, ``tpr`` (lists; a class's
        statistics are taken over the folds whose test set holds it), the k-fold
        ``confusion_normalized_mean`` / ``_std`` (average of the per-fold row-normalised matrices; a fold without
        samples of a class contributes no row for it), ``confusion_mean`` (average counts) and ``n_samples``.
    """
    C = len(classes)
    folds = [classification_metrics(*_expand(np.asarray(cm)), C) for cm in confusions]
    mean: dict[str, Any] = {}
    std: dict[str, Any] = {}
    for key in ("accuracy", "macro_f1"):
        vals = np.array([f[key] for f in folds])
        mean[key], std[key] = float(vals.mean()), float(vals.std())
    for key in ("precision", "recall", "f1", "tpr"):
        vals = np.array([f[key] for f in folds], dtype=float)  # (folds, C)
        present = np.array([f["support"] for f in folds]) > 0  # per-class means over folds holding the class
        m = np.where(present, vals, np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean[key] = np.nan_to_num(np.nanmean(m, axis=0)).tolist()
            std[key] = np.nan_to_num(np.nanstd(m, axis=0)).tolist()
    norms = np.array([normalize_confusion(np.asarray(cm)) for cm in confusions])
    rows_present = np.array([np.asarray(cm).sum(1) > 0 for cm in confusions])  # (folds, C)
    stacked = np.where(rows_present[:, :, None], norms, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        cm_mean = np.nan_to_num(np.nanmean(stacked, axis=0))
        cm_std = np.nan_to_num(np.nanstd(stacked, axis=0))
    return {
        "classes": list(classes),
        "folds": folds,
        "mean": mean,
        "std": std,
        "confusion_normalized_mean": cm_mean.tolist(),
        "confusion_normalized_std": cm_std.tolist(),
        "confusion_mean": np.mean([np.asarray(cm, float) for cm in confusions], axis=0).tolist(),
        "n_samples": int(sum(np.asarray(cm).sum() for cm in confusions)),
    }


def format_summary(summary: Mapping[str, Any], title: str = "cross-validation") -> str:
    """Markdown tables: per-class precision/recall/F1/TPR and accuracy (mean +- std), average normalised CM."""
    classes = summary["classes"]
    m, s = summary["mean"], summary["std"]
    k = len(summary["folds"])
    lines = [f"### {title}", "", f"{k} folds, {summary['n_samples']} test samples in all.", ""]
    lines += ["| class | precision | recall (TPR) | F1 |", "| --- | --- | --- | --- |"]
    for i, c in enumerate(classes):
        lines.append(
            f"| {c} | {m['precision'][i]:.3f} ± {s['precision'][i]:.3f} | {m['tpr'][i]:.3f} ± {s['tpr'][i]:.3f} "
            f"| {m['f1'][i]:.3f} ± {s['f1'][i]:.3f} |"
        )
    lines.append(f"| **accuracy** | | | {m['accuracy']:.3f} ± {s['accuracy']:.3f} |")
    lines.append(f"| **macro F1** | | | {m['macro_f1']:.3f} ± {s['macro_f1']:.3f} |")
    if "image_accuracy" in summary:
        ia = summary["image_accuracy"]
        lines.append(
            f"| **image accuracy** (mean score of an image's samples) | | | {ia['mean']:.3f} ± {ia['std']:.3f} |"
        )
    lines += ["", f"{k}-fold average normalised confusion matrix (rows true, columns predicted):", ""]
    lines += ["| true \\ pred | " + " | ".join(classes) + " |", "| --- |" + " --- |" * len(classes)]
    cm, cs = summary["confusion_normalized_mean"], summary["confusion_normalized_std"]
    for i, c in enumerate(classes):
        lines.append(
            f"| {c} | " + " | ".join(f"{cm[i][j]:.2f} ± {cs[i][j]:.2f}" for j in range(len(classes))) + " |"
        )
    return "\n".join(lines) + "\n"


def plot_confusion(summary: Mapping[str, Any], title: str = "") -> bytes:
    """PNG bytes of the k-fold average normalised confusion matrix."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = summary["classes"]
    cm = np.asarray(summary["confusion_normalized_mean"])
    fig, ax = plt.subplots(figsize=(3.6, 3.2), dpi=120)
    ax.imshow(cm, vmin=0, vmax=1, cmap="Blues")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(
                j,
                i,
                f"{cm[i, j]:.2f}",
                ha="center",
                va="center",
                color="white" if cm[i, j] > 0.5 else "black",
            )
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or f"{len(summary['folds'])}-fold average", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def write_report(
    summary: Mapping[str, Any], out_dir: str | os.PathLike, title: str = "cross-validation"
) -> Path:
    """Write ``cv_summary.json``, ``cv_summary.md`` and ``confusion_normalized.png`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "cv_summary.json", dict(summary))
    atomic_write_text(out / "cv_summary.md", format_summary(summary, title))
    atomic_write_bytes(out / "confusion_normalized.png", plot_confusion(summary, title))
    return out


def _dataset_cfgs(cfg) -> list:
    return [cfg[k].dataset for k in ("train_dataloader", "test_dataloader") if cfg.get(k) is not None]


def cross_validate(
    config: str | os.PathLike,
    folds: int = 5,
    seed: int = 0,
    work_dir: str | os.PathLike | None = None,
    cfg_options: Mapping[str, Any] | None = None,
    keep_checkpoints: bool = False,
) -> dict[str, Any]:
    """k-fold cross-validation of a classifier config (CNN via mmengine Runners, or the hand-crafted-feature SVM).

    The config names the file to split in ``cv_ann_file`` (default ``annotations/train_all.json``, relative to the
    dataset's ``data_root``); training and test datasets are the config's, restricted to the fold's indices.
    A config with an ``svm`` dict runs :func:`custom_modules.cls.svm.svm_fold_confusions` instead.

    Args:
        config: Config path.
        folds: Number of folds.
        seed: Fold shuffle seed (also the Runner seed).
        work_dir: Output directory (default ``work_dirs/cv/<config name>``); fold ``k`` trains in ``fold{k}/``.
        cfg_options: ``--cfg-options`` overrides (``data_root`` handled as by ``tools/train.py``).
        keep_checkpoints: Keep the config's checkpoint hook in every fold (default: no checkpoints).

    Returns:
        The :func:`summarize_folds` summary plus ``config``, ``seed`` and ``fold_sizes``; the report files are
        written to ``work_dir``.

    Raises:
        ValueError: bad config (no ``ClsMetric`` test evaluator, too few groups), FileNotFoundError: missing files.
    """
    from mmengine.registry import DATASETS

    from custom_modules.config import load_config
    from custom_modules.runner_utils import build_runner, register_library

    cfg = load_config(config, cfg_options)
    register_library(cfg)
    name = Path(str(config)).stem
    work_dir = Path(work_dir) if work_dir is not None else Path("work_dirs/cv") / name
    cv_ann = cfg.get("cv_ann_file", "annotations/train_all.json")
    for ds in _dataset_cfgs(cfg):
        ds.ann_file = cv_ann
    classes = tuple(cfg.get("classes", ("shsy5y", "astro", "cort")))
    if cfg.get("svm") is not None:
        from .svm import svm_fold_confusions

        ds = cfg.train_dataloader.dataset
        ann = ds.ann_file if osp.isabs(ds.ann_file) else osp.join(ds.get("data_root", ""), ds.ann_file)
        confusions, sizes = svm_fold_confusions(
            ann, ds.get("data_root", ""), dict(cfg.svm), classes, folds, seed, min_area=ds.get("min_area", 1)
        )
    else:
        if cfg.get("test_evaluator", {}).get("type") != "ClsMetric":
            raise ValueError(f"{config}: cross-validation needs test_evaluator = dict(type='ClsMetric', ...)")
        full_cfg = copy.deepcopy(cfg.test_dataloader.dataset)
        full_cfg.pop("indices", None)
        full_cfg.pipeline = []
        full = DATASETS.build(full_cfg)
        labels, groups = full.get_labels(), full.get_groups()
        splits = grouped_stratified_folds(
            labels, groups, folds, seed, image_ids=full.get_image_ids(), classes=classes
        )
        confusions, sizes, image_acc = [], [], []
        for k, (tr, te) in enumerate(splits):
            fcfg = copy.deepcopy(cfg)
            # folds hold whole sample_ids: select them by id (a short list) rather than by thousands of indices
            fcfg.train_dataloader.dataset.sample_ids = sorted(set(groups[tr].tolist()))
            fcfg.test_dataloader.dataset.sample_ids = sorted(set(groups[te].tolist()))
            if not keep_checkpoints:
                fcfg.default_hooks.checkpoint = None
            fcfg.val_dataloader = None
            fcfg.val_cfg = None
            fcfg.val_evaluator = None
            fcfg.randomness = dict(seed=seed + k)
            runner = build_runner(fcfg, work_dir=work_dir / f"fold{k}")
            runner.train()
            metrics = runner.test()
            confusions.append(confusion_from_metrics(metrics, classes, prefix="cls"))
            if "cls/image_accuracy" in metrics:
                image_acc.append((float(metrics["cls/image_accuracy"]), int(metrics["cls/n_images"])))
            sizes.append({"train": int(tr.size), "test": int(te.size)})
    summary = summarize_folds(confusions, classes)
    summary.update(config=str(config), seed=int(seed), fold_sizes=sizes)
    if cfg.get("svm") is None and image_acc and len(image_acc) == len(confusions):
        accs = np.array([a for a, _ in image_acc])
        summary["image_accuracy"] = {
            "mean": float(accs.mean()),
            "std": float(accs.std()),
            "folds": accs.tolist(),
            "n_images": [n for _, n in image_acc],
        }
    write_report(summary, work_dir, title=f"{name} ({folds}-fold CV, seed {seed})")
    return summary
