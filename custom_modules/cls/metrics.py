"""Classification metrics of the two classifier papers, plus :class:`ClsMetric` (``mmengine.registry.METRICS``).

Per class: precision (PPV), recall = normalised true positive rate (the diagonal of the row-normalised confusion
matrix, the liposome report's figure 17), F1; overall: accuracy, macro averages. Confusion matrices have true classes
in rows and predicted classes in columns; row normalisation leaves a row of zeros for a class without samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from mmengine.evaluator import BaseMetric
from mmengine.registry import METRICS
from sklearn.metrics import confusion_matrix as _sk_confusion
from sklearn.metrics import precision_recall_fscore_support

__all__ = [
    "confusion_matrix",
    "normalize_confusion",
    "classification_metrics",
    "ClsMetric",
    "confusion_from_metrics",
]


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """``(num_classes, num_classes)`` int64 counts, rows = true class, columns = predicted class."""
    return _sk_confusion(y_true, y_pred, labels=list(range(num_classes))).astype(np.int64)


def normalize_confusion(cm: np.ndarray) -> np.ndarray:
    """Row-normalised confusion matrix (each non-empty row sums to 1; empty rows stay 0)."""
    cm = np.asarray(cm, dtype=np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> dict[str, Any]:
    """Precision, recall, F1, normalised TPR per class, accuracy and the confusion matrices.

    Returns:
        ``precision``, ``recall``, ``f1``, ``tpr``, ``support`` (lists over classes), ``accuracy``,
        ``macro_precision``, ``macro_recall``, ``macro_f1`` (over classes with samples), ``confusion`` (counts) and
        ``confusion_normalized`` (row-normalised), as plain lists/floats.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    labels = list(range(num_classes))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    cm = confusion_matrix(y_true, y_pred, num_classes)
    present = s > 0
    return {
        "precision": p.tolist(),
        "recall": r.tolist(),
        "f1": f.tolist(),
        "tpr": np.diag(normalize_confusion(cm)).tolist(),
        "support": s.astype(int).tolist(),
        "accuracy": float((y_true == y_pred).mean()) if y_true.size else 0.0,
        "macro_precision": float(p[present].mean()) if present.any() else 0.0,
        "macro_recall": float(r[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f[present].mean()) if present.any() else 0.0,
        "confusion": cm.tolist(),
        "confusion_normalized": normalize_confusion(cm).tolist(),
    }


def confusion_from_metrics(
    metrics: dict[str, float], classes: Sequence[str], prefix: str = "cls"
) -> np.ndarray:
    """Rebuild the count confusion matrix from :class:`ClsMetric` output (``{prefix}/cm_{true}_{pred}`` keys)."""
    n = len(classes)
    cm = np.zeros((n, n), np.int64)
    for i, t in enumerate(classes):
        for j, q in enumerate(classes):
            cm[i, j] = int(round(float(metrics[f"{prefix}/cm_{t}_{q}"])))
    return cm


@METRICS.register_module()
class ClsMetric(BaseMetric):
    """Accuracy, per-class precision/recall/F1/normalised TPR, macro averages and confusion counts.

    Output keys (``prefix`` default ``'cls'``): ``accuracy``, ``macro_f1``, ``macro_precision``, ``macro_recall``,
    ``precision_<class>``, ``recall_<class>``, ``f1_<class>``, ``tpr_<class>``, ``cm_<true>_<pred>`` (counts), and
    ``image_accuracy`` / ``n_images`` when the samples carry ``image_id`` (image-level vote of tiles or cells).

    Args:
        classes: Class names, in label order.
        collect_device: mmengine collect device.
        prefix: Key prefix.
    """

    default_prefix = "cls"

    def __init__(
        self,
        classes: Sequence[str] = ("shsy5y", "astro", "cort"),
        collect_device: str = "cpu",
        prefix: str | None = None,
    ) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.classes = tuple(classes)

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        """Keep ``(gt_label, pred_label, image_id, pred_score)`` of every predicted sample."""
        for s in data_samples:
            if "gt_label" not in s:
                raise ValueError("ClsMetric needs gt_label in every predicted sample")
            score = s.get("pred_score")
            score = None if score is None else np.asarray(score, dtype=np.float64)
            self.results.append((int(s["gt_label"]), int(s["pred_label"]), s.get("image_id"), score))

    def compute_metrics(self, results: list) -> dict[str, float]:
        """Metrics over all collected samples.

        With ``image_id`` and ``pred_score`` in the samples, ``image_accuracy`` is added: each image's class is the
        argmax of its samples' (tiles' or cells') mean score, compared with its label.
        """
        y = np.array([(r[0], r[1]) for r in results], dtype=np.int64).reshape(-1, 2)
        m = classification_metrics(y[:, 0], y[:, 1], len(self.classes))
        out: dict[str, float] = {k: m[k] for k in ("accuracy", "macro_f1", "macro_precision", "macro_recall")}
        if results and all(r[2] is not None and r[3] is not None for r in results):
            per_image: dict[str, list] = {}
            for gt, _, iid, score in results:
                per_image.setdefault(str(iid), [gt, []])[1].append(score)
            hits = [int(np.mean(sc, axis=0).argmax()) == gt for gt, sc in per_image.values()]
            out["image_accuracy"] = float(np.mean(hits))
            out["n_images"] = float(len(hits))
        for i, c in enumerate(self.classes):
            for key in ("precision", "recall", "f1", "tpr"):
                out[f"{key}_{c}"] = m[key][i]
            for j, q in enumerate(self.classes):
                out[f"cm_{c}_{q}"] = float(m["confusion"][i][j])
        return out
