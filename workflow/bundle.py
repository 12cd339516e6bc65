"""Kaggle model bundle: pack a tuned ensemble's models into one upload-ready folder, and run it offline.

A bundle is what a Kaggle notebook with the internet off needs besides the wheelhouse (see
``tools/kaggle/build_wheelhouse.sh``): for every model of the ensemble its resolved inference config and a stripped
checkpoint, the ensemble YAML rewritten to name bundle-relative prediction files, and ``bundle.json``::

    BUNDLE/
      bundle.json               format, models (role, TTA, thresholds, files with size and sha256), ensemble
      ensemble.yaml             the tuned ensemble; ``predictions: <model>.npz`` names files that the notebook
                                writes into its prediction folder (no path outside the bundle)
      models/<name>/config.py   resolved inference config: no ``_base_``, no data paths, no pretrained weights
      models/<name>/weights.pth ``state_dict`` (the EMA weights when the run kept them) + small ``meta``; no
                                optimizer state, no message hub

Where each model comes from: the prediction file an ensemble model names records the config, checkpoint, TTA,
thresholds and ``--mask-head-on`` source that ``tools/infer.py`` used (its ``meta``). A model whose masks were
predicted on another file's boxes brings that box model into the bundle too (``in_ensemble: false`` when the
ensemble itself does not fuse it), and the notebook runs it first. Explicit ``models={name: (config, checkpoint)}``
override what the files record.

Roles: ``boxes`` (an mmdet model without masks), ``instance`` (mmdet with masks), ``mask_head`` (mmdet masks
predicted on another model's boxes or on fused boxes), ``semantic`` (an mmseg foreground map), ``fused_boxes``
(box-first step 1: ``python -m ensemble.fuse_boxes`` of box models, with ``fuse_boxes/<name>.yaml`` in the bundle).

Importing this module does not import torch; :func:`make_bundle` does.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ensemble.tta import merge_fold_files

__all__ = [
    "BUNDLE_FILE",
    "BUNDLE_FORMAT",
    "ENSEMBLE_FILE",
    "ROLES",
    "BundleError",
    "FoldSource",
    "FusedBoxesSource",
    "ModelSource",
    "Step",
    "collect_models",
    "inference_config",
    "strip_checkpoint",
    "check_checkpoint_loads",
    "make_bundle",
    "load_bundle",
    "paths_outside",
    "inference_plan",
    "run_step",
    "validate_submission",
    "sha256_file",
]

BUNDLE_FILE = "bundle.json"
ENSEMBLE_FILE = "ensemble.yaml"
BUNDLE_FORMAT = "sartorius-bundle/1"
ROLES: tuple[str, ...] = ("boxes", "instance", "mask_head", "semantic", "fused_boxes")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


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
        score_thr: ``tools/infer.py --score-thr``.
        max_per_img: ``tools/infer.py --max-per-img``.
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
    """

    name: str
    boxes: list[tuple[str, float]]
    fusion: dict[str, Any]
    n_folds: int = 1
    in_ensemble: bool = False
    predictions: str | None = None
    role: str = "fused_boxes"


@dataclass
class Step:
    """One step of the notebook's inference plan: a command line, or an in-process function.

    Attributes:
        name: Short label (model name, ``<model> fold k`` or ``ensemble``).
        kind: ``'infer'``, ``'fuse_boxes'`` (box-first step 1), ``'merge'`` (fold models' predictions merged) or
            ``'ensemble'``.
        argv: The command line (empty for a function step).
        cwd: Working directory (None: the caller's).
        outputs: Files the step writes.
        func: Called without arguments instead of running ``argv``.
    """

    name: str
    kind: str
    argv: list[str]
    cwd: str | None = None
    outputs: list[str] = field(default_factory=list)
    func: Callable[[], Any] | None = None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------------------
# which models
# ----------------------------------------------------------------------------------------------------------------
def _role(library: str, has_masks: bool, mask_head_on: Any) -> str:
    if library == "mmseg":
        return "semantic"
    if mask_head_on:
        return "mask_head"
    return "instance" if has_masks else "boxes"


def _safe_name(name: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]", "_", name).strip("._-") or "model"
    out, k = base, 2
    while out in taken:
        out, k = f"{base}_{k}", k + 1
    return out


def _read_meta(pred_file: Path, who: str) -> dict:
    from ensemble.predictions import load_predictions

    if not pred_file.is_file():
        raise BundleError(f"model '{who}': prediction file {pred_file} not found")
    _, meta = load_predictions(pred_file)
    return meta


def collect_models(
    ensemble_yaml: str | os.PathLike,
    models: Mapping[str, tuple[str, str]] | None = None,
) -> list[ModelSource | FusedBoxesSource]:
    """The models a bundle of ``ensemble_yaml`` needs, in the order the notebook must run them.

    A prediction file that merges fold models (``folds_merged`` in its meta, as the recipe's test predictions)
    gives a model with one network per fold; a file predicted with ``--mask-head-on`` brings its box provider
    (per fold when the folds were chained fold by fold): another model, or the fused boxes of a box-first
    ensemble (``python -m ensemble.fuse_boxes`` output) with the box models they were fused from.

    Args:
        ensemble_yaml: A (tuned) ensemble config (:mod:`ensemble.config`).
        models: Optional ``name -> (config, checkpoint)`` overriding what the prediction file of a single-network
            ensemble model records.

    Returns:
        Every model, box providers before the models that predict masks on their boxes.

    Raises:
        BundleError: A model without a config or checkpoint (recorded or given), a missing file, an unknown
            name in ``models``, an override of a fold-merged model, a ``--mask-head-on`` source that is not one
            model's prediction file nor fused boxes, or a chain that loops.
    """
    from ensemble.config import load_config

    ens = load_config(ensemble_yaml)
    overrides = dict(models or {})
    unknown = sorted(set(overrides) - {m.name for m in ens.models})
    if unknown:
        raise BundleError(
            f"--model names {unknown} are not models of {ensemble_yaml} ({[m.name for m in ens.models]})"
        )
    out: list[ModelSource | FusedBoxesSource] = []
    by_file: dict[Path, tuple[ModelSource | FusedBoxesSource, int | None]] = {}
    taken: set[str] = set()

    def provider_of(
        paths: list[Path], who: str, depth: int
    ) -> tuple[ModelSource | FusedBoxesSource, list[int | None]]:
        hits = [by_file.get(p.resolve()) for p in paths]
        if all(hits) and len({id(h[0]) for h in hits}) == 1:
            return hits[0][0], [h[1] for h in hits]
        if any(hits):
            raise BundleError(f"model '{who}': its folds predicted masks on boxes of different models")
        meta = _read_meta(paths[0], who)
        if meta.get("fused_boxes"):
            src = add_fused(paths, None, who, depth + 1)
        elif not meta.get("config") or not meta.get("library"):
            raise BundleError(
                f"model '{who}': masks were predicted on {paths[0]}, which is neither one model's prediction "
                "file nor fused boxes of python -m ensemble.fuse_boxes"
            )
        else:
            src = add(str(meta.get("name") or paths[0].stem), paths, None, False, depth + 1)
        return src, [by_file[p.resolve()][1] for p in paths]

    def add_fused(paths: list[Path], ens_file: Path | None, who: str, depth: int) -> FusedBoxesSource:
        """Fused boxes (one file per fold) and the box models they were fused from (fold k from file k)."""
        metas = [_read_meta(p, who) for p in paths]
        lists = [m.get("models") for m in metas]
        if not all(isinstance(x, list) and x for x in lists):
            raise BundleError(
                f"{paths[0]}: fused boxes without the list of their box models ('models' in meta)"
            )
        names = [str(b.get("name")) for b in lists[0]]
        if any([str(b.get("name")) for b in x] != names for x in lists):
            raise BundleError(
                f"fused box files {[str(p) for p in paths]} were fused from different box models"
            )
        boxes = []
        for j, bname in enumerate(names):
            files = [Path(x[j]["predictions"]) for x in lists]
            hits = [by_file.get(f.resolve()) for f in files]
            if (
                all(hits)
                and len({id(h[0]) for h in hits}) == 1
                and [h[1] for h in hits] == list(range(len(files)))
            ):
                box_src = hits[0][0]
            else:
                box_src = add(bname, files, None, False, depth + 1)
            if len(files) > 1 and len(getattr(box_src, "folds", [])) != len(files):
                raise BundleError(f"box model '{bname}' of {paths[0]}: one file per fold expected")
            boxes.append((box_src.name, float(lists[0][j].get("weight", 1.0))))
        fused = FusedBoxesSource(
            name=_safe_name(str(metas[0].get("name") or "fused_boxes"), taken),
            boxes=boxes,
            fusion=dict(metas[0].get("fusion") or {}),
            n_folds=len(paths),
            in_ensemble=ens_file is not None,
            predictions=None if ens_file is None else str(ens_file),
        )
        taken.add(fused.name)
        for k, p in enumerate(paths):
            by_file[p.resolve()] = (fused, k)
        if ens_file is not None:
            by_file[ens_file.resolve()] = (fused, None if len(paths) > 1 else 0)
        out.append(fused)
        return fused

    def add(
        name: str, files: list[Path], ens_file: Path | None, in_ensemble: bool, depth: int
    ) -> ModelSource:
        if depth > 8:
            raise BundleError(f"model '{name}': --mask-head-on chain longer than 8 files (a loop?)")
        metas = [_read_meta(f, name) for f in files]
        if len(files) == 1 and metas[0].get("folds_merged"):
            files = [Path(p) for p in metas[0]["folds_merged"]]
            metas = [_read_meta(f, name) for f in files]
        if name in overrides and len(files) > 1:
            raise BundleError(
                f"--model {name}: the ensemble's file merges {len(files)} fold models ({[str(f) for f in files]}); "
                "their configs and checkpoints are taken from those files"
            )
        folds = []
        for f, meta in zip(files, metas):
            config, checkpoint = overrides.get(name, (meta.get("config"), meta.get("checkpoint")))
            where = f"model '{name}' (prediction file {f})"
            if not config:
                raise BundleError(
                    f"{where}: no config recorded; give one with --model {name} CONFIG CHECKPOINT"
                )
            if not checkpoint:
                raise BundleError(
                    f"{where}: no checkpoint recorded (predicted with random weights?); give one with "
                    f"--model {name} CONFIG CHECKPOINT"
                )
            if not Path(config).is_file():
                raise BundleError(f"{where}: config {config} not found")
            if not Path(checkpoint).is_file():
                raise BundleError(f"{where}: checkpoint {checkpoint} not found")
            folds.append(FoldSource(str(config), str(checkpoint), str(f)))
        m0 = metas[0]
        library = m0.get("library") or _library_of_config(folds[0].config)
        if library not in ("mmdet", "mmseg"):
            raise BundleError(f"model '{name}': library {library!r} cannot be bundled (mmdet or mmseg)")
        heads = [meta.get("mask_head_on") for meta in metas]
        if any(heads) and not all(heads):
            raise BundleError(f"model '{name}': some folds predicted masks on given boxes, others not")
        src = ModelSource(
            name=_safe_name(name, taken),
            library=library,
            role=_role(library, bool(m0.get("has_masks")), heads[0]),
            folds=folds,
            in_ensemble=in_ensemble,
            tta=bool(m0.get("tta", False)),
            score_thr=float(m0.get("score_thr", 0.05)),
            max_per_img=int(m0.get("max_per_img", 1000)),
            predictions=None if ens_file is None else str(ens_file),
        )
        taken.add(src.name)
        for k, f in enumerate(files):
            by_file[f.resolve()] = (src, k)
        if ens_file is not None:
            by_file[ens_file.resolve()] = (src, None if len(files) > 1 else 0)
        if heads[0]:
            provider, idx = provider_of([Path(h) for h in heads], src.name, depth)
            src.masks_from = provider.name
            for fold, i in zip(folds, idx):
                fold.masks_from_fold = i
        out.append(src)
        return src

    for m in ens.models:
        pred = Path(m.predictions)
        hit = by_file.get(pred.resolve())
        if hit is not None:  # already added as another model's box provider
            hit[0].in_ensemble, hit[0].predictions = True, str(pred)
            continue
        meta = _read_meta(pred, m.name)
        if meta.get("fused_boxes"):
            fused = add_fused([pred], pred, m.name, 0)
            if fused.name != m.name:  # the ensemble's own name for the fused file
                taken.discard(fused.name)
                fused.name = _safe_name(m.name, taken)
                taken.add(fused.name)
        else:
            add(m.name, [pred], pred, True, 0)
    for m in ens.models:  # the YAML is rewritten with the bundle names
        if by_file[Path(m.predictions).resolve()][0].name != m.name:
            raise BundleError(
                f"ensemble model name {m.name!r} is not file-system safe or repeats another; rename it in "
                f"{ensemble_yaml} (letters, digits, '_', '.', '-')"
            )
    return out


def _library_of_config(config: str) -> str:
    from custom_modules.config import library_of, load_config

    return library_of(load_config(config))


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
    """Build the model of ``cfg`` and load ``state_dict`` strictly (names and shapes).

    Returns:
        The number of parameters.

    Raises:
        BundleError: On missing or unexpected keys or a shape mismatch (``where`` names the model and files).
    """
    from custom_modules.runner_utils import register_library

    library = register_library(cfg)
    if library == "mmdet":
        from mmdet.registry import MODELS
    else:
        from mmseg.registry import MODELS
    model = MODELS.build(copy.deepcopy(cfg.model))
    try:
        model.load_state_dict(dict(state_dict), strict=True)
    except RuntimeError as e:
        lines = [s.strip() for s in str(e).splitlines()[1:] if s.strip()]
        detail = "; ".join(lines[:3]) or str(e).splitlines()[0]
        raise BundleError(f"{where}: the checkpoint does not load into the config: {detail[:600]}") from None
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------------------------------
# make / load
# ----------------------------------------------------------------------------------------------------------------
def make_bundle(
    ensemble_yaml: str | os.PathLike,
    out_dir: str | os.PathLike,
    models: Mapping[str, tuple[str, str]] | None = None,
    overwrite: bool = False,
) -> dict:
    """Write a bundle of a tuned ensemble (layout in the module docstring).

    The bundle is assembled in a temporary folder beside ``out_dir`` and renamed into place only when every model
    passed, so a refused bundle leaves nothing behind.

    Args:
        ensemble_yaml: The tuned ensemble config.
        out_dir: The bundle folder to create.
        models: Optional ``name -> (config, checkpoint)`` overrides (see :func:`collect_models`).
        overwrite: Replace an existing ``out_dir``.

    Returns:
        The ``bundle.json`` content.

    Raises:
        BundleError: A missing checkpoint or config, a checkpoint that does not load into its config, an
            existing ``out_dir`` without ``overwrite``.
    """
    import torch

    from ensemble.config import load_config, save_config

    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise BundleError(f"{out} exists; pass --overwrite to replace it")
    sources = collect_models(ensemble_yaml, models)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        entries = []
        for src in sources:
            if isinstance(src, FusedBoxesSource):
                entries.append(_write_fused_boxes(src, tmp))
                continue
            folds = []
            n_params = 0
            for k, fold in enumerate(src.folds):
                where = f"model '{src.name}' (config {fold.config}, checkpoint {fold.checkpoint})"
                cfg = inference_config(fold.config)
                ckpt, info = strip_checkpoint(fold.checkpoint)
                n_params = check_checkpoint_loads(cfg, ckpt["state_dict"], where)
                rel = f"models/{src.name}" + (f"/fold{k}" if len(src.folds) > 1 else "")
                (tmp / rel).mkdir(parents=True)
                cfg.dump(str(tmp / rel / "config.py"))
                torch.save(ckpt, tmp / rel / "weights.pth")
                folds.append(
                    {
                        "config": f"{rel}/config.py",
                        "checkpoint": f"{rel}/weights.pth",
                        "checkpoint_bytes": (tmp / rel / "weights.pth").stat().st_size,
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
            entries.append(
                {
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
            )
        ens = load_config(ensemble_yaml)
        for m in ens.models:
            m.predictions = f"{m.name}.npz"
        ens.truth = None
        ens.images_dir = None
        ens.out_dir = "."
        save_config(
            ens,
            tmp / ENSEMBLE_FILE,
            header=(
                f"Tuned ensemble of the bundle (from {Path(ensemble_yaml).name}). 'predictions' are file names in "
                "the folder\nwhere the notebook writes each model's tools/infer.py output (python -m ensemble.run "
                "--predictions-dir)."
            ),
        )
        _check_inside(tmp, entries)
        files = {}
        for p in sorted(tmp.rglob("*")):
            if p.is_file():
                files[p.relative_to(tmp).as_posix()] = {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        bundle = {
            "format": BUNDLE_FORMAT,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "ensemble": ENSEMBLE_FILE,
            "ensemble_source": str(ensemble_yaml),
            "mode": str(getattr(ens.fusion, "mode", "vote")),
            "models": entries,
            "files": files,
            "total_bytes": sum(f["bytes"] for f in files.values()),
        }
        (tmp / BUNDLE_FILE).write_text(json.dumps(bundle, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return bundle


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


def _check_inside(root: Path, entries: Sequence[dict]) -> None:
    """Refuse a bundle whose ensemble YAML, configs or model entries name a path outside it."""
    import yaml
    from mmengine.config import Config

    used: dict[str, Any] = {ENSEMBLE_FILE: yaml.safe_load((root / ENSEMBLE_FILE).read_text())}
    for e in entries:
        for fold in e.get("folds", []):
            used[fold["config"]] = Config.fromfile(str(root / fold["config"])).to_dict()
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
        raise BundleError(f"{path} not found: {root} is not a bundle (tools/kaggle/make_bundle.py)") from None
    except json.JSONDecodeError as e:
        raise BundleError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(bundle, dict) or bundle.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path}: format is not {BUNDLE_FORMAT!r}")
    models = bundle.get("models")
    if not isinstance(models, list) or not models:
        raise BundleError(f"{path}: 'models' must be a non-empty list")
    names = set()
    for i, m in enumerate(models):
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
            names.add(m["name"])
            continue
        folds = m.get("folds")
        if not isinstance(folds, list) or not folds:
            raise BundleError(f"{path}: models[{i}].folds must be a non-empty list")
        for k, f in enumerate(folds):
            if not isinstance(f, dict) or not all(
                isinstance(f.get(x), str) for x in ("config", "checkpoint")
            ):
                raise BundleError(f"{path}: models[{i}].folds[{k}] needs 'config' and 'checkpoint'")
        if m.get("masks_from") is not None and m["masks_from"] not in names:
            raise BundleError(f"{path}: models[{i}].masks_from {m['masks_from']!r} is not an earlier model")
        names.add(m["name"])
    for rel, info in (bundle.get("files") or {}).items():
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
    return bundle


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


# ----------------------------------------------------------------------------------------------------------------
# run (the notebook)
# ----------------------------------------------------------------------------------------------------------------
def _n_folds(model: Mapping[str, Any]) -> int:
    return int(model["n_folds"]) if model["role"] == "fused_boxes" else len(model["folds"])


def _fold_file(model: Mapping[str, Any], k: int | None) -> str:
    """Prediction file name of fold ``k`` of a bundle model (None or a single network: the model's file)."""
    if k is None or _n_folds(model) == 1:
        return model["predictions"]
    return f"{model['name']}.fold{k}.npz"


def inference_plan(
    bundle_dir: str | os.PathLike,
    images_dir: str | os.PathLike,
    work_dir: str | os.PathLike,
    out: str | os.PathLike,
    infer_script: str | os.PathLike,
    device: str | None = None,
    python: str | None = None,
) -> list[Step]:
    """The steps that turn a folder of test images into a submission with a bundle.

    One ``tools/infer.py`` run per network (box providers first; ``--tta``, ``--score-thr``, ``--max-per-img``
    and ``--mask-head-on`` as when the ensemble was tuned) writing ``<work_dir>/<model>.npz`` (fold networks:
    ``<model>.fold<k>.npz``, then merged into ``<model>.npz``); for a box-first ensemble ``python -m
    ensemble.fuse_boxes`` after its box models (per fold when they ran per fold); then ``python -m ensemble.run``
    with the bundle's ensemble YAML on ``work_dir`` (``--predictions-dir``), writing ``out``.

    Args:
        bundle_dir: The bundle folder.
        images_dir: Test images (``<id>.png``).
        work_dir: Where prediction files go (created).
        out: The submission CSV.
        infer_script: Path of ``tools/infer.py`` (the wheelhouse carries a copy).
        device: ``tools/infer.py --device`` (None: CUDA when available).
        python: Interpreter (default: this one).

    Returns:
        The steps in run order.

    Raises:
        BundleError: An invalid bundle or a missing images folder / infer script.
    """
    root = Path(bundle_dir).resolve()
    bundle = load_bundle(root, verify=False)
    images = Path(images_dir)
    if not images.is_dir():
        raise BundleError(f"test images folder {images} not found")
    if not Path(infer_script).is_file():
        raise BundleError(f"inference script {infer_script} not found")
    work = Path(work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    py = python or sys.executable
    by_name = {m["name"]: m for m in bundle["models"]}
    steps = []
    for m in bundle["models"]:
        parts = []
        if m["role"] == "fused_boxes":
            for k in range(m["n_folds"]):
                pred = work / _fold_file(m, k)
                pattern = "{name}.npz" if m["n_folds"] == 1 else f"{{name}}.fold{k}.npz"
                argv = [py, "-m", "ensemble.fuse_boxes", "--config", str(root / m["boxes_config"])]
                argv += ["--predictions-dir", str(work), "--predictions-pattern", pattern, "--out", str(pred)]
                label = m["name"] + (f" fold {k}" if m["n_folds"] > 1 else "")
                steps.append(Step(label, "fuse_boxes", [*argv, "--no-progress"], None, [str(pred)]))
                parts.append(str(pred))
        for k, fold in enumerate(m.get("folds", [])):
            pred = work / _fold_file(m, k)
            label = m["name"] + (f" fold {k}" if len(m["folds"]) > 1 else "")
            argv = [py, str(infer_script), str(root / fold["config"]), str(root / fold["checkpoint"])]
            argv += ["--images", str(images), "--out", str(pred), "--name", m["name"], "--no-progress"]
            argv += ["--score-thr", repr(float(m["score_thr"])), "--max-per-img", str(int(m["max_per_img"]))]
            if m.get("tta"):
                argv.append("--tta")
            if m.get("masks_from"):
                boxes = work / _fold_file(by_name[m["masks_from"]], fold.get("masks_from_fold"))
                argv += ["--mask-head-on", str(boxes)]
            if device:
                argv += ["--device", device]
            steps.append(Step(label, "infer", argv, None, [str(pred)]))
            parts.append(str(pred))
        if len(parts) > 1 and (m["in_ensemble"] or m["role"] != "fused_boxes"):
            merged = str(work / m["predictions"])
            steps.append(
                Step(
                    f"{m['name']} ({len(parts)} folds)",
                    "merge",
                    [],
                    None,
                    [merged],
                    func=functools.partial(merge_fold_files, parts, merged, m["name"]),
                )
            )
    argv = [
        py,
        "-m",
        "ensemble.run",
        "--config",
        str(root / bundle["ensemble"]),
        "--predictions-dir",
        str(work),
    ]
    argv += ["--out", str(Path(out).resolve()), "--no-progress"]
    steps.append(Step("ensemble", "ensemble", argv, str(work), [str(Path(out).resolve())]))
    return steps


def run_step(step: Step) -> float:
    """Run one plan step (its output goes to this process's stdout/stderr); returns its wall time in seconds.

    Raises:
        RuntimeError: If the command exits non-zero (naming the step and its exit code).
    """
    t0 = time.perf_counter()
    if step.func is not None:
        print(f"[{step.kind}] {step.name} -> {', '.join(step.outputs)}", flush=True)
        step.func()
    else:
        print(f"[{step.kind}] {step.name}: {' '.join(step.argv[1:])}", flush=True)
        r = subprocess.run(step.argv, cwd=step.cwd)
        if r.returncode != 0:
            dt = time.perf_counter() - t0
            raise RuntimeError(
                f"step {step.kind} '{step.name}' failed with exit code {r.returncode} after {dt:.1f} s"
            )
    dt = time.perf_counter() - t0
    print(f"[{step.kind}] {step.name}: done in {dt:.1f} s", flush=True)
    return dt


def validate_submission(csv_path: str | os.PathLike, images_dir: str | os.PathLike) -> dict[str, Any]:
    """Check a submission against the test images with the project's reader (as Kaggle would).

    Every ``<id>.png`` of ``images_dir`` must have at least one row; every RLE must decode for that image's size;
    no two masks of one image may overlap; no unknown id.

    Returns:
        ``{'images': I, 'instances': N, 'empty_images': E, 'per_image': {id: n}}``.

    Raises:
        ValueError: Naming the file, row and id (from :func:`ensemble.submission.read_submission`), or the ids
            without any row.
    """
    import cv2

    from ensemble.submission import read_submission

    images = sorted(Path(images_dir).glob("*.png"))
    if not images:
        raise ValueError(f"{images_dir}: no .png test images")
    sizes = {}
    for p in images:
        img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise ValueError(f"{p}: not a readable image")
        sizes[p.stem] = (int(img.shape[0]), int(img.shape[1]))
    masks = read_submission(csv_path, expected_ids=sizes, heights_widths=sizes)
    missing = sorted(set(sizes) - set(masks))
    if missing:
        raise ValueError(f"{csv_path}: {len(missing)} test image(s) without any row, e.g. {missing[:3]}")
    per_image = {k: len(v) for k, v in masks.items()}
    return {
        "images": len(per_image),
        "instances": int(sum(per_image.values())),
        "empty_images": sum(1 for n in per_image.values() if n == 0),
        "per_image": per_image,
    }
