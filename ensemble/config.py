"""Ensemble configuration: which model prediction files to fuse, with which weights and fusion parameters.

YAML layout (see ``configs/ensemble/sartorius_ensemble.yaml`` for a documented example)::

    name: sartorius_ensemble          # output names: submissions/<name>.csv, <name>_score.json
    models:                           # one entry per model; a single model works too
      - name: mask_rcnn               # optional label (default: file stem)
        predictions: work_dirs/mask_rcnn/predictions_val.npz   # ensemble.predictions file
        weight: 2.0                   # positive: say in WBF and in the mask vote (box models)
      - name: upernet
        predictions: work_dirs/upernet/predictions_val.npz     # semantic-only: no detections, a map per image
        semantic_weight: 0.5          # optional: this map's say in the pixel vote (default fusion.semantic_weight)
    fusion:                           # scalar fields of ensemble.masks.FusionParams (all optional)
      iou_thr: 0.55
      skip_box_thr: 0.05
      conf_type: avg                  # avg | max | box_and_model_avg | absent_model_aware_avg
      allows_overflow: false
      vote_thr: 0.5
      semantic_weight: 0.0            # say of each semantic map in the pixel vote (never in fused box scores)
      rerank: false
      image_class: majority           # majority (one cell type per image) | per_instance
      max_lost_frac: 0.5
    class_thresholds:                 # per class name, both keys optional
      shsy5y: {score: 0.3, min_area: 40}
    truth: data/sartorius/annotations/fold0_val.json   # optional: train.csv-format .csv or COCO .json
    images_dir: data/sartorius        # optional: where <id>.png (or train/<id>.png) live, for overlays
    out_dir: submissions              # optional (default: submissions)
    tuning: {...}                     # written by ensemble.tune: images tuned on, in-sample / held-out scores

Relative paths are relative to the current working directory (the repository root when the tools are run as
documented). Unknown keys are errors, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from celldata import CLASSES
from celldata.fileio import atomic_write_text
from ensemble.masks import FusionParams

__all__ = ["ModelEntry", "EnsembleConfig", "load_config", "save_config", "FUSION_SCALARS"]

FUSION_SCALARS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(FusionParams) if f.name not in ("score_thr", "min_area")
)
"""Names of the scalar FusionParams fields accepted under ``fusion:``."""

_TOP_KEYS = {"name", "models", "fusion", "class_thresholds", "truth", "images_dir", "out_dir", "tuning"}
_MODEL_KEYS = {"name", "predictions", "weight", "semantic_weight"}
_CLASS_KEYS = {"score", "min_area"}


@dataclass
class ModelEntry:
    """One model of the ensemble.

    Attributes:
        name: Label used in reports.
        predictions: Path of its prediction file (:mod:`ensemble.predictions` format).
        weight: Positive fusion weight of its boxes (WBF) and instance masks (pixel vote); unused for a
            semantic-only model.
        semantic_weight: Say of its semantic map in the pixel vote (None: ``fusion.semantic_weight``).
    """

    name: str
    predictions: str
    weight: float = 1.0
    semantic_weight: float | None = None


@dataclass
class EnsembleConfig:
    """A parsed ensemble configuration (see the module docstring for the YAML layout).

    Attributes:
        name: Ensemble name (output file stem).
        models: The models to fuse.
        fusion: Fusion parameters including per-class score thresholds and minimum areas.
        truth: Optional ground-truth path (train.csv-format or COCO json).
        images_dir: Optional directory of the images (for overlays).
        out_dir: Directory of the outputs.
        tuning: What ``ensemble.tune`` recorded (``images``: the ids tuned on, ``truth``, ``score_in_sample``,
            ``score_held_out``, ...); scores of these images are labelled in-sample.
    """

    name: str
    models: list[ModelEntry]
    fusion: FusionParams = field(default_factory=FusionParams)
    truth: str | None = None
    images_dir: str | None = None
    out_dir: str = "submissions"
    tuning: dict[str, Any] | None = None

    @property
    def weights(self) -> list[float]:
        """Model weights in model order."""
        return [m.weight for m in self.models]

    def to_dict(self) -> dict[str, Any]:
        """Plain dict in the YAML layout (class thresholds only for classes that have one)."""
        f = self.fusion
        class_thr: dict[str, dict[str, float | int]] = {}
        for c in CLASSES:
            entry: dict[str, float | int] = {}
            if c in f.score_thr:
                entry["score"] = float(f.score_thr[c])
            if c in f.min_area:
                entry["min_area"] = int(f.min_area[c])
            if entry:
                class_thr[c] = entry
        out: dict[str, Any] = {
            "name": self.name,
            "models": [_model_dict(m) for m in self.models],
            "fusion": {k: _plain(getattr(f, k)) for k in FUSION_SCALARS},
            "class_thresholds": class_thr,
        }
        for key in ("truth", "images_dir"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out["out_dir"] = self.out_dir
        if self.tuning is not None:
            out["tuning"] = self.tuning
        return out

    def evaluation_of(self, image_ids: Sequence[str]) -> str:
        """How a score of this config on ``image_ids`` must be read: ``'in-sample'`` (tuned on all of them),
        ``'held-out'`` (tuned on none of them), ``'partly in-sample'``, or ``'untuned'`` (no ``tuning`` record)."""
        if not self.tuning or "images" not in self.tuning:
            return "untuned"
        tuned = set(self.tuning["images"])
        n_in = sum(k in tuned for k in image_ids)
        if n_in == 0:
            return "held-out"
        return "in-sample" if n_in == len(image_ids) else "partly in-sample"

    def with_predictions_dir(
        self, predictions_dir: str | os.PathLike, pattern: str = "{file}"
    ) -> EnsembleConfig:
        """The same ensemble applied to another prediction set (e.g. the test images of a tuned config).

        Args:
            predictions_dir: Directory of the other prediction files.
            pattern: File name of each model inside it, with fields ``{name}`` (model name), ``{file}`` (file name
                of its current predictions) and ``{stem}`` (that name without extension), e.g.
                ``"{name}_test.npz"``.

        Returns:
            A copy whose models read ``<predictions_dir>/<pattern>``.

        Raises:
            ValueError: An unknown field in ``pattern``.
        """
        models = []
        for m in self.models:
            cur = Path(m.predictions)
            try:
                fname = pattern.format(name=m.name, file=cur.name, stem=cur.stem)
            except (KeyError, IndexError, ValueError) as e:
                raise ValueError(
                    f"predictions pattern {pattern!r}: {e!r}; fields are {{name}}, {{file}}, {{stem}}"
                ) from None
            models.append(dataclasses.replace(m, predictions=str(Path(predictions_dir) / fname)))
        return dataclasses.replace(self, models=models)

    @classmethod
    def from_dict(cls, data: Any, source: str = "<config>") -> EnsembleConfig:
        """Validate and parse a config dict.

        Args:
            data: The parsed YAML.
            source: File name used in error messages.

        Raises:
            ValueError: Naming ``source`` and the offending key.
        """
        if not isinstance(data, dict):
            raise ValueError(f"{source}: the config must be a mapping, got {type(data).__name__}")
        _reject_unknown_keys(data, sorted(_TOP_KEYS), source)
        name = data.get("name")
        if not isinstance(name, str) or not name.strip() or any(c in name for c in "/\\"):
            raise ValueError(f"{source}: 'name' must be a non-empty string without slashes, got {name!r}")
        models_raw = data.get("models")
        if not isinstance(models_raw, list) or not models_raw:
            raise ValueError(
                f"{source}: 'models' must be a non-empty list of {{predictions, weight}} entries"
            )
        models = []
        for i, m in enumerate(models_raw):
            where = f"{source}: models[{i}]"
            if not isinstance(m, dict):
                raise ValueError(f"{where}: must be a mapping with 'predictions' and 'weight'")
            _reject_unknown_keys(m, sorted(_MODEL_KEYS), where)
            pred = m.get("predictions")
            if not isinstance(pred, str) or not pred:
                raise ValueError(f"{where}.predictions: must be a path string, got {pred!r}")
            weight = _number(m.get("weight", 1.0), f"{where}.weight")
            if not weight > 0:
                raise ValueError(f"{where}.weight: must be > 0, got {weight}")
            sw = m.get("semantic_weight")
            if sw is not None:
                sw = _number(sw, f"{where}.semantic_weight")
                if not sw >= 0:
                    raise ValueError(f"{where}.semantic_weight: must be >= 0, got {sw}")
            models.append(ModelEntry(str(m.get("name") or Path(pred).stem), pred, weight, sw))
        fusion_raw = data.get("fusion") or {}
        if not isinstance(fusion_raw, dict):
            raise ValueError(f"{source}: 'fusion' must be a mapping")
        _reject_unknown_keys(fusion_raw, list(FUSION_SCALARS), f"{source}: fusion")
        cls_raw = data.get("class_thresholds") or {}
        if not isinstance(cls_raw, dict):
            raise ValueError(f"{source}: 'class_thresholds' must be a mapping keyed by class name")
        score_thr: dict[str, float] = {}
        min_area: dict[str, int] = {}
        for c, entry in cls_raw.items():
            if c not in CLASSES:
                raise ValueError(
                    f"{source}: class_thresholds: unknown class {c!r}; classes are {list(CLASSES)}"
                )
            if not isinstance(entry, dict) or set(entry) - _CLASS_KEYS:
                raise ValueError(
                    f"{source}: class_thresholds.{c}: must be a mapping with 'score' and/or 'min_area'"
                )
            if "score" in entry:
                score_thr[c] = _number(entry["score"], f"{source}: class_thresholds.{c}.score")
            if "min_area" in entry:
                v = _number(entry["min_area"], f"{source}: class_thresholds.{c}.min_area")
                if v != int(v) or v < 0:
                    raise ValueError(
                        f"{source}: class_thresholds.{c}.min_area: must be an integer >= 0, got {v}"
                    )
                min_area[c] = int(v)
        try:
            fusion = FusionParams(**fusion_raw, score_thr=score_thr, min_area=min_area)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source}: fusion: {e}") from None
        out = {}
        for key in ("truth", "images_dir", "out_dir"):
            v = data.get(key)
            if v is not None and (not isinstance(v, str) or not v):
                raise ValueError(f"{source}: '{key}' must be a path string, got {v!r}")
            out[key] = v
        tuning = data.get("tuning")
        if tuning is not None and not isinstance(tuning, dict):
            raise ValueError(f"{source}: 'tuning' must be a mapping (written by ensemble.tune)")
        if tuning is not None and not (
            isinstance(tuning.get("images", []), list)
            and all(isinstance(i, str) for i in tuning.get("images", []))
        ):
            raise ValueError(f"{source}: tuning.images must be a list of image id strings")
        return cls(
            name=name.strip(),
            models=models,
            fusion=fusion,
            truth=out["truth"],
            images_dir=out["images_dir"],
            out_dir=out["out_dir"] or "submissions",
            tuning=tuning,
        )


def _model_dict(m: ModelEntry) -> dict[str, Any]:
    d: dict[str, Any] = {"name": m.name, "predictions": m.predictions, "weight": float(m.weight)}
    if m.semantic_weight is not None:
        d["semantic_weight"] = float(m.semantic_weight)
    return d


def _reject_unknown_keys(data: dict, allowed: list[str], where: str) -> None:
    """Raises ``ValueError("<where>: unknown key(s) [...]; allowed: <allowed>")`` if ``data`` has other keys."""
    bad = set(data) - set(allowed)
    if bad:
        raise ValueError(f"{where}: unknown key(s) {sorted(bad)}; allowed: {allowed}")


def _number(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError(f"{where}: must be a number, got {v!r}")
    return float(v)


def _plain(v: Any) -> Any:
    """numpy scalars -> Python scalars for YAML."""
    return v.item() if hasattr(v, "item") else v


def load_config(path: str | os.PathLike) -> EnsembleConfig:
    """Read and validate an ensemble YAML config.

    Raises:
        ValueError: Missing file, invalid YAML or invalid content (naming the file and key).
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ValueError(f"{path}: config file not found") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ValueError(f"{path}: invalid YAML{where}: {problem}") from None
    return EnsembleConfig.from_dict(data, source=str(path))


def save_config(config: EnsembleConfig, path: str | os.PathLike, header: str | None = None) -> None:
    """Write ``config`` as YAML atomically.

    Args:
        config: The configuration.
        path: Output file.
        header: Optional comment lines put on top (without ``#``).
    """
    text = yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=False)
    if header:
        text = "".join(f"# {line}\n" for line in header.splitlines()) + text
    atomic_write_text(path, text)
