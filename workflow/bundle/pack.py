"""Packing a bundle: each model's resolved inference config and stripped weights (checked to load), box-first
step 1's YAML, the tuned ensemble YAML rewritten to bundle-relative files, and ``bundle.json``.

Importing this module does not import torch; :func:`make_bundle` and the checkpoint functions do.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from workflow.bundle.collect import collect_models
from workflow.bundle.format import (
    BUNDLE_FILE,
    BUNDLE_FORMAT,
    ENSEMBLE_FILE,
    BundleError,
    FusedBoxesSource,
    ModelSource,
    check_inside,
    sha256_file,
)

__all__ = ["inference_config", "strip_checkpoint", "check_checkpoint_loads", "make_bundle"]


# ----------------------------------------------------------------------------------------------------------------
# config and checkpoint
# ----------------------------------------------------------------------------------------------------------------
def _strip_pretrained(node: Any) -> Any:
    """Drop ``init_cfg`` of type Pretrained and string ``pretrained`` entries (no file outside the bundle)."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "pretrained" and isinstance(v, str):
                continue
            if k == "init_cfg" and _has_pretrained(v):
                continue
            out[k] = _strip_pretrained(v)
        return out
    if isinstance(node, list | tuple):
        return type(node)(_strip_pretrained(v) for v in node)
    return node


def _has_pretrained(v: Any) -> bool:
    if isinstance(v, dict):
        return str(v.get("type", "")) == "Pretrained" or "checkpoint" in v
    if isinstance(v, list | tuple):
        return any(_has_pretrained(x) for x in v)
    return False


def inference_config(config: str | os.PathLike) -> Any:
    """The resolved inference part of a model config, referencing nothing outside itself.

    Keeps ``default_scope``, ``custom_imports``, ``model`` (pretrained ``init_cfg`` removed) and the test pipeline
    (``test_dataloader.dataset.pipeline``, which :func:`custom_modules.inference.load_model` reads); drops data
    roots, annotation files, training/validation settings, ``load_from`` and ``work_dir``.

    Args:
        config: Model config file.

    Returns:
        An ``mmengine.config.Config`` ready to :meth:`dump`.

    Raises:
        BundleError: If the config has no test pipeline.
    """
    from mmengine.config import Config

    from custom_modules.config import load_config

    cfg = load_config(config)
    try:
        pipeline = copy.deepcopy(cfg.test_dataloader.dataset.pipeline)
        dataset_type = cfg.test_dataloader.dataset.type
    except AttributeError:
        raise BundleError(f"{config}: no test_dataloader.dataset.pipeline to run inference with") from None
    out: dict[str, Any] = {"default_scope": cfg.get("default_scope", "mmdet")}
    if cfg.get("custom_imports"):
        out["custom_imports"] = cfg.custom_imports.to_dict()
    out["model"] = _strip_pretrained(cfg.model.to_dict())
    out["test_dataloader"] = {
        "batch_size": 1,
        "num_workers": 0,
        "dataset": {
            "type": dataset_type,
            "pipeline": [p.to_dict() if hasattr(p, "to_dict") else p for p in pipeline],
        },
    }
    return Config(out)


def _load_raw_checkpoint(path: str | os.PathLike) -> dict:
    """``torch.load`` with ``weights_only=True`` and mmengine's allow-list."""
    import pickle

    import torch
    from mmengine.runner.checkpoint import get_torch_safe_globals

    try:
        with torch.serialization.safe_globals(get_torch_safe_globals()):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as e:
        raise BundleError(
            f"checkpoint {path} cannot be loaded (weights_only): {str(e).splitlines()[0]}"
        ) from None
    if not isinstance(ckpt, dict):
        raise BundleError(f"checkpoint {path}: expected a dict, got {type(ckpt).__name__}")
    return ckpt


def strip_checkpoint(path: str | os.PathLike) -> tuple[dict, dict]:
    """The weights of a training checkpoint without optimizer state, message hub or EMA copy.

    mmengine's ``EMAHook`` saves the averaged weights under ``state_dict`` (and the raw ones under
    ``ema_state_dict``), so ``state_dict`` is what inference uses in both cases.

    Args:
        path: Checkpoint written by an mmengine Runner (or a plain ``{'state_dict': ...}`` / state dict).

    Returns:
        ``(checkpoint, info)``: ``{'state_dict': ..., 'meta': {...}}`` and ``{'ema': bool, 'iter': ..., ...}``.

    Raises:
        BundleError: If the file does not load or holds no tensors.
    """
    import torch

    raw = _load_raw_checkpoint(path)
    sd = raw.get("state_dict", raw)
    sd = {re.sub(r"^module\.", "", k): v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise BundleError(f"checkpoint {path}: no weights (empty state_dict)")
    meta_in = raw.get("meta") if isinstance(raw.get("meta"), dict) else {}
    meta: dict[str, Any] = {k: meta_in[k] for k in ("epoch", "iter") if isinstance(meta_in.get(k), int)}
    if isinstance(meta_in.get("dataset_meta"), dict):
        try:
            meta["dataset_meta"] = json.loads(json.dumps(meta_in["dataset_meta"]))
        except (TypeError, ValueError):
            pass
    info = {"ema": "ema_state_dict" in raw, **{k: meta[k] for k in ("epoch", "iter") if k in meta}}
    meta["ema_weights"] = info["ema"]
    return {"state_dict": sd, "meta": meta}, info


def check_checkpoint_loads(cfg: Any, state_dict: Mapping[str, Any], where: str) -> int:
    """Build the model of ``cfg`` and load ``state_dict`` strictly (names and shapes), through
    :func:`custom_modules.checkpoints.load_fitting_checkpoint` (the fit check of inference and evaluation).

    Returns:
        The number of parameters.

    Raises:
        BundleError: On missing or unexpected keys or a shape mismatch (``where`` names the model and files).
    """
    from custom_modules.checkpoints import CheckpointMismatch, build_model, load_fitting_checkpoint

    model = build_model(cfg)
    try:
        load_fitting_checkpoint(
            model, state_dict, where=f"{where}: the checkpoint does not load into the config"
        )
    except CheckpointMismatch as e:
        raise BundleError(str(e)) from None
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------------------------------
# the bundle's files
# ----------------------------------------------------------------------------------------------------------------
def _pack_model(src: ModelSource, root: Path) -> dict:
    """Every network of ``src`` under ``models/<name>[/fold<k>]/`` and the model's ``bundle.json`` entry."""
    import torch

    folds = []
    n_params = 0
    for k, fold in enumerate(src.folds):
        where = f"model '{src.name}' (config {fold.config}, checkpoint {fold.checkpoint})"
        cfg = inference_config(fold.config)
        ckpt, info = strip_checkpoint(fold.checkpoint)
        n_params = check_checkpoint_loads(cfg, ckpt["state_dict"], where)
        rel = f"models/{src.name}" + (f"/fold{k}" if len(src.folds) > 1 else "")
        (root / rel).mkdir(parents=True)
        cfg.dump(str(root / rel / "config.py"))
        torch.save(ckpt, root / rel / "weights.pth")
        folds.append(
            {
                "config": f"{rel}/config.py",
                "checkpoint": f"{rel}/weights.pth",
                "checkpoint_bytes": (root / rel / "weights.pth").stat().st_size,
                "ema_weights": info["ema"],
                "trained_iter": info.get("iter"),
                "masks_from_fold": fold.masks_from_fold,
                "source": {
                    "config": fold.config,
                    "checkpoint": fold.checkpoint,
                    "checkpoint_bytes": os.path.getsize(fold.checkpoint),
                    "predictions": fold.predictions,
                },
            }
        )
    return {
        "name": src.name,
        "role": src.role,
        "library": src.library,
        "in_ensemble": src.in_ensemble,
        "tta": src.tta,
        "score_thr": src.score_thr,
        "max_per_img": src.max_per_img,
        "masks_from": src.masks_from,
        "predictions": f"{src.name}.npz",
        "params": n_params,
        "folds": folds,
    }


def _write_fused_boxes(src: FusedBoxesSource, root: Path) -> dict:
    """``fuse_boxes/<name>.yaml`` (the box models by bundle name, the recorded WBF parameters) and its entry."""
    from ensemble.config import EnsembleConfig, save_config

    data = {
        "name": src.name,
        "models": [{"name": n, "predictions": f"{n}.npz", "weight": w} for n, w in src.boxes],
        "fusion": src.fusion,
    }
    try:
        cfg = EnsembleConfig.from_dict(data, source=f"fused boxes '{src.name}'")
    except ValueError as e:
        raise BundleError(f"fused boxes '{src.name}': the recorded fusion cannot be replayed: {e}") from None
    rel = f"fuse_boxes/{src.name}.yaml"
    (root / "fuse_boxes").mkdir(exist_ok=True)
    save_config(
        cfg, root / rel, header="Box-first step 1 of the bundle: python -m ensemble.fuse_boxes --config"
    )
    return {
        "name": src.name,
        "role": "fused_boxes",
        "in_ensemble": src.in_ensemble,
        "predictions": f"{src.name}.npz",
        "boxes_config": rel,
        "box_models": [n for n, _ in src.boxes],
        "n_folds": src.n_folds,
        "masks_from": None,
    }


def _without_paths(node: Any) -> Any:
    """``node`` with every path string (one holding ``/`` or ``\\``) replaced by its file name; numbers, ids and
    other values unchanged."""
    if isinstance(node, dict):
        return {k: _without_paths(v) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [_without_paths(v) for v in node]
    if isinstance(node, str) and ("/" in node or "\\" in node):
        return re.split(r"[\\/]", node.rstrip("/\\"))[-1]
    return node


def _write_ensemble(ensemble_yaml: str | os.PathLike, root: Path) -> str:
    """The tuned ensemble as ``ensemble.yaml``: bundle-relative prediction files, no truth / images / output
    paths, and its ``tuning`` record (scores, image ids) with file names instead of paths. Returns its mode."""
    from ensemble.config import load_config, save_config

    ens = load_config(ensemble_yaml)
    for m in ens.models:
        m.predictions = f"{m.name}.npz"
    ens.truth = None
    ens.images_dir = None
    ens.out_dir = "."
    if ens.tuning is not None:
        ens.tuning = _without_paths(ens.tuning)
    save_config(
        ens,
        root / ENSEMBLE_FILE,
        header=(
            f"Tuned ensemble of the bundle (from {Path(ensemble_yaml).name}). 'predictions' are file names in "
            "the folder\nwhere the notebook writes each model's python -m workflow.cli.infer output "
            "(python -m ensemble.run --predictions-dir)."
        ),
    )
    return str(getattr(ens.fusion, "mode", "vote"))


def _bundle_json(root: Path, entries: list[dict], ensemble_yaml: str | os.PathLike, mode: str) -> dict:
    """``bundle.json``'s content: the model entries and every file of ``root`` with its size and sha256."""
    files = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            files[p.relative_to(root).as_posix()] = {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
    return {
        "format": BUNDLE_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "ensemble": ENSEMBLE_FILE,
        "ensemble_source": str(ensemble_yaml),
        "mode": mode,
        "models": entries,
        "files": files,
        "total_bytes": sum(f["bytes"] for f in files.values()),
    }


def make_bundle(
    ensemble_yaml: str | os.PathLike,
    out_dir: str | os.PathLike,
    models: Mapping[str, tuple[str, str]] | None = None,
    overwrite: bool = False,
) -> dict:
    """Write a bundle of a tuned ensemble (layout in :mod:`workflow.bundle`).

    The bundle is assembled in a temporary folder beside ``out_dir`` and moved into place only when every model
    passed, so a refused bundle leaves nothing behind (and an overwritten one is never half old, half new).

    Args:
        ensemble_yaml: The tuned ensemble config.
        out_dir: The bundle folder to create.
        models: Optional ``name -> (config, checkpoint)`` overrides (see :func:`collect_models`).
        overwrite: Replace an existing ``out_dir``.

    Returns:
        The ``bundle.json`` content.

    Raises:
        BundleError: A missing checkpoint or config, a checkpoint that does not load into its config, a path
            outside the bundle, an existing ``out_dir`` without ``overwrite``.
    """
    from celldata.fileio import replace_dir

    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise BundleError(f"{out} exists; pass --overwrite to replace it")
    sources = collect_models(ensemble_yaml, models)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        entries = [
            _write_fused_boxes(src, tmp) if isinstance(src, FusedBoxesSource) else _pack_model(src, tmp)
            for src in sources
        ]
        mode = _write_ensemble(ensemble_yaml, tmp)
        check_inside(tmp, entries)
        bundle = _bundle_json(tmp, entries, ensemble_yaml, mode)
        (tmp / BUNDLE_FILE).write_text(json.dumps(bundle, indent=2) + "\n")
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return bundle
