"""The bundle's format and its reader: file names, roles, the source records, ``load_bundle`` and the checks that
a bundle references nothing outside itself.

Torch-free and framework-free at import (the config check imports ``custom_modules.config`` when it runs).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "BUNDLE_FILE",
    "BUNDLE_FORMAT",
    "ENSEMBLE_FILE",
    "ROLES",
    "BundleError",
    "FoldSource",
    "FusedBoxesSource",
    "ModelSource",
    "check_inside",
    "fold_file",
    "load_bundle",
    "n_folds",
    "paths_outside",
    "safe_name",
    "sha256_file",
]

BUNDLE_FILE = "bundle.json"
ENSEMBLE_FILE = "ensemble.yaml"
BUNDLE_FORMAT = "sartorius-bundle/1"
ROLES: tuple[str, ...] = ("boxes", "instance", "mask_head", "semantic", "fused_boxes")


class BundleError(ValueError):
    """A bundle cannot be made or used (the message names the model and file)."""


@dataclass
class FoldSource:
    """One trained network of a bundle model (a model merging K fold networks has K).

    Attributes:
        config: Source config file.
        checkpoint: Source checkpoint file.
        predictions: The prediction file it wrote (provenance), or None.
        masks_from_fold: Fold index of the box provider whose file this network's mask head ran on (None: the
            provider's merged file).
    """

    config: str
    checkpoint: str
    predictions: str | None = None
    masks_from_fold: int | None = None


@dataclass
class ModelSource:
    """Where one bundle model comes from and how the notebook runs it.

    Attributes:
        name: Model name (ensemble entry name; file-system safe).
        library: ``'mmdet'`` or ``'mmseg'``.
        role: One of :data:`ROLES`.
        folds: Its networks: one, or the K fold models whose predictions are merged (flip-TTA merge rule).
        in_ensemble: Whether the ensemble fuses this model (False: it only provides boxes to another).
        tta: Flip TTA at inference.
        score_thr: ``python -m workflow.cli.infer --score-thr``.
        max_per_img: ``python -m workflow.cli.infer --max-per-img``.
        masks_from: Name of the bundle model whose boxes this model's mask head runs on, or None.
        predictions: The prediction file the ensemble named (None for a box provider outside the ensemble).
    """

    name: str
    library: str
    role: str
    folds: list[FoldSource]
    in_ensemble: bool = True
    tta: bool = False
    score_thr: float = 0.05
    max_per_img: int = 1000
    masks_from: str | None = None
    predictions: str | None = None


@dataclass
class FusedBoxesSource:
    """Box-first step 1 as a bundle member: WBF of box models into one file of fused boxes.

    Attributes:
        name: Its name (the fused file is ``<name>.npz``, per fold ``<name>.fold<k>.npz``).
        boxes: ``(bundle model name, weight)`` of each fused box model.
        fusion: The WBF parameters recorded by ``python -m ensemble.fuse_boxes``.
        n_folds: Fused files per fold (the box models run fold by fold), or 1.
        in_ensemble: Whether the ensemble names the fused file itself.
        predictions: The ensemble's file of it, or None.
        role: Always ``'fused_boxes'``.
    """

    name: str
    boxes: list[tuple[str, float]]
    fusion: dict[str, Any]
    n_folds: int = 1
    in_ensemble: bool = False
    predictions: str | None = None
    role: str = "fused_boxes"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def safe_name(name: str, taken: set[str]) -> str:
    """``name`` made file-system safe (letters, digits, ``_ . -``) and distinct from ``taken``."""
    base = re.sub(r"[^A-Za-z0-9_.-]", "_", name).strip("._-") or "model"
    out, k = base, 2
    while out in taken:
        out, k = f"{base}_{k}", k + 1
    return out


def n_folds(model: Mapping[str, Any]) -> int:
    """Networks (or fused files) of one ``bundle.json`` model entry."""
    return int(model["n_folds"]) if model["role"] == "fused_boxes" else len(model["folds"])


def fold_file(model: Mapping[str, Any], k: int | None) -> str:
    """Prediction file name of fold ``k`` of a bundle model (None or a single network: the model's file)."""
    if k is None or n_folds(model) == 1:
        return model["predictions"]
    return f"{model['name']}.fold{k}.npz"


def paths_outside(obj: Any, root: str | os.PathLike) -> list[str]:
    """Strings in ``obj`` (nested dicts/lists) that name a path outside ``root``: absolute, or with ``..``.

    Used to check that a bundle's YAML, configs and ``bundle.json`` reference only the bundle's own files.
    """
    bad: list[str] = []

    def walk(v: Any) -> None:
        if isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list | tuple):
            for x in v:
                walk(x)
        elif isinstance(v, str) and ("/" in v or "\\" in v):
            p = Path(v)
            if p.is_absolute() or ".." in p.parts:
                bad.append(v)

    walk(obj)
    return bad


def check_inside(root: Path, entries: Sequence[dict]) -> None:
    """Refuse a bundle whose ensemble YAML, configs or model entries name a path outside it.

    Raises:
        BundleError: Naming the file (or ``bundle.json`` entry) and the first such paths.
    """
    import yaml

    from custom_modules.config import load_config

    used: dict[str, Any] = {ENSEMBLE_FILE: yaml.safe_load((root / ENSEMBLE_FILE).read_text())}
    for e in entries:
        for fold in e.get("folds", []):
            cfg = load_config(root / fold["config"], import_custom_modules=False)
            used[fold["config"]] = cfg.to_dict()
        if e.get("boxes_config"):
            used[e["boxes_config"]] = yaml.safe_load((root / e["boxes_config"]).read_text())
        used[f"bundle.json models[{e['name']}]"] = {
            **{k: v for k, v in e.items() if k != "folds"},
            "folds": [{k: v for k, v in f.items() if k != "source"} for f in e.get("folds", [])],
        }
    for where, obj in used.items():
        bad = paths_outside(obj, root)
        if bad:
            raise BundleError(f"{where} would reference paths outside the bundle: {bad[:3]}")


def _check_model_entry(m: Any, i: int, names: set[str], path: Path) -> None:
    """One ``bundle.json`` model entry: keys, role, folds, and box providers named before it."""
    for key in ("name", "role", "predictions"):
        if not isinstance(m, dict) or not isinstance(m.get(key), str):
            raise BundleError(f"{path}: models[{i}].{key} missing")
    if m["role"] not in ROLES:
        raise BundleError(f"{path}: models[{i}].role {m['role']!r} not one of {ROLES}")
    if m["role"] == "fused_boxes":
        boxes = m.get("box_models")
        if not isinstance(m.get("boxes_config"), str) or not isinstance(m.get("n_folds"), int):
            raise BundleError(f"{path}: models[{i}] (fused boxes) needs 'boxes_config' and 'n_folds'")
        if not isinstance(boxes, list) or not boxes or not set(boxes) <= names:
            raise BundleError(f"{path}: models[{i}].box_models must name earlier models, got {boxes!r}")
        return
    folds = m.get("folds")
    if not isinstance(folds, list) or not folds:
        raise BundleError(f"{path}: models[{i}].folds must be a non-empty list")
    for k, f in enumerate(folds):
        if not isinstance(f, dict) or not all(isinstance(f.get(x), str) for x in ("config", "checkpoint")):
            raise BundleError(f"{path}: models[{i}].folds[{k}] needs 'config' and 'checkpoint'")
    if m.get("masks_from") is not None and m["masks_from"] not in names:
        raise BundleError(f"{path}: models[{i}].masks_from {m['masks_from']!r} is not an earlier model")


def _check_files(root: Path, files: Mapping[str, Any], verify: bool) -> None:
    """Every file ``bundle.json`` lists is there with its size (and sha256 when ``verify``)."""
    for rel, info in files.items():
        f = root / rel
        if not f.is_file():
            raise BundleError(f"{root}: file {rel} listed in {BUNDLE_FILE} is missing")
        if f.stat().st_size != info.get("bytes"):
            raise BundleError(
                f"{root}: file {rel} has {f.stat().st_size} bytes, {BUNDLE_FILE} says {info.get('bytes')}"
            )
        if verify and sha256_file(f) != info.get("sha256"):
            raise BundleError(
                f"{root}: file {rel} does not match its sha256 in {BUNDLE_FILE} (corrupted upload?)"
            )


def load_bundle(bundle_dir: str | os.PathLike, verify: bool = True) -> dict:
    """Read ``bundle.json`` and check the files it lists.

    Args:
        bundle_dir: The bundle folder.
        verify: Also compare every file's sha256 (reads all checkpoints).

    Returns:
        The ``bundle.json`` content.

    Raises:
        BundleError: Missing/invalid ``bundle.json``, a wrong format, a missing file or a checksum mismatch.
    """
    root = Path(bundle_dir)
    path = root / BUNDLE_FILE
    try:
        bundle = json.loads(path.read_text())
    except FileNotFoundError:
        raise BundleError(
            f"{path} not found: {root} is not a bundle (python -m workflow.cli.make_bundle)"
        ) from None
    except json.JSONDecodeError as e:
        raise BundleError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(bundle, dict) or bundle.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path}: format is not {BUNDLE_FORMAT!r}")
    models = bundle.get("models")
    if not isinstance(models, list) or not models:
        raise BundleError(f"{path}: 'models' must be a non-empty list")
    names: set[str] = set()
    for i, m in enumerate(models):
        _check_model_entry(m, i, names, path)
        names.add(m["name"])
    _check_files(root, bundle.get("files") or {}, verify)
    return bundle
