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
predicted on another model's boxes), ``semantic`` (an mmseg foreground map).

Importing this module does not import torch; :func:`make_bundle` does.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "BUNDLE_FILE",
    "BUNDLE_FORMAT",
    "ENSEMBLE_FILE",
    "ROLES",
    "BundleError",
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
ROLES: tuple[str, ...] = ("boxes", "instance", "mask_head", "semantic")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class BundleError(ValueError):
    """A bundle cannot be made or used (the message names the model and file)."""


@dataclass
class ModelSource:
    """Where one bundle model comes from and how the notebook runs it.

    Attributes:
        name: Model name (ensemble entry name; file-system safe).
        config: Source config file.
        checkpoint: Source checkpoint file.
        library: ``'mmdet'`` or ``'mmseg'``.
        role: One of :data:`ROLES`.
        in_ensemble: Whether the ensemble fuses this model (False: it only provides boxes to another).
        tta: Flip TTA at inference.
        score_thr: ``tools/infer.py --score-thr``.
        max_per_img: ``tools/infer.py --max-per-img``.
        masks_from: Name of the bundle model whose boxes this model's mask head runs on, or None.
        predictions: The prediction file the model came from (None for an explicit override without one).
    """

    name: str
    config: str
    checkpoint: str
    library: str
    role: str
    in_ensemble: bool = True
    tta: bool = False
    score_thr: float = 0.05
    max_per_img: int = 1000
    masks_from: str | None = None
    predictions: str | None = None


@dataclass
class Step:
    """One command of the notebook's inference plan.

    Attributes:
        name: Short label (model name or ``ensemble``).
        kind: ``'infer'`` or ``'ensemble'``.
        argv: The command line.
        cwd: Working directory (None: the caller's).
        outputs: Files the step writes.
    """

    name: str
    kind: str
    argv: list[str]
    cwd: str | None = None
    outputs: list[str] = field(default_factory=list)


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
) -> list[ModelSource]:
    """The models a bundle of ``ensemble_yaml`` needs, in the order the notebook must run them.

    Args:
        ensemble_yaml: A (tuned) ensemble config (:mod:`ensemble.config`).
        models: Optional ``name -> (config, checkpoint)`` overriding what the prediction files record.

    Returns:
        Every model, box providers before the models that predict masks on their boxes.

    Raises:
        BundleError: A model without a config or checkpoint (recorded or given), a missing file, an unknown
            name in ``models``, or a ``--mask-head-on`` chain that loops.
    """
    from ensemble.config import load_config

    ens = load_config(ensemble_yaml)
    overrides = dict(models or {})
    unknown = sorted(set(overrides) - {m.name for m in ens.models})
    if unknown:
        raise BundleError(
            f"--model names {unknown} are not models of {ensemble_yaml} ({[m.name for m in ens.models]})"
        )
    out: list[ModelSource] = []
    by_pred: dict[Path, ModelSource] = {}
    taken: set[str] = set()

    def add(name: str, pred: Path | None, in_ensemble: bool, depth: int) -> ModelSource:
        if depth > 8:
            raise BundleError(f"model '{name}': --mask-head-on chain longer than 8 files (a loop?)")
        meta = _read_meta(pred, name) if pred is not None else {}
        config, checkpoint = overrides.get(name, (meta.get("config"), meta.get("checkpoint")))
        where = f"model '{name}'" + (f" (prediction file {pred})" if pred is not None else "")
        if not config:
            raise BundleError(f"{where}: no config recorded; give one with --model {name} CONFIG CHECKPOINT")
        if not checkpoint:
            raise BundleError(
                f"{where}: no checkpoint recorded (predicted with random weights?); give one with "
                f"--model {name} CONFIG CHECKPOINT"
            )
        if not Path(config).is_file():
            raise BundleError(f"{where}: config {config} not found")
        if not Path(checkpoint).is_file():
            raise BundleError(f"{where}: checkpoint {checkpoint} not found")
        library = meta.get("library") or _library_of_config(config)
        if library not in ("mmdet", "mmseg"):
            raise BundleError(f"{where}: library {library!r} cannot be bundled (mmdet or mmseg)")
        src = ModelSource(
            name=_safe_name(name, taken),
            config=str(config),
            checkpoint=str(checkpoint),
            library=library,
            role=_role(library, bool(meta.get("has_masks")), meta.get("mask_head_on")),
            in_ensemble=in_ensemble,
            tta=bool(meta.get("tta", False)),
            score_thr=float(meta.get("score_thr", 0.05)),
            max_per_img=int(meta.get("max_per_img", 1000)),
            predictions=None if pred is None else str(pred),
        )
        taken.add(src.name)
        if pred is not None:
            by_pred[pred.resolve()] = src
        head_on = meta.get("mask_head_on")
        if head_on:
            box_file = Path(head_on)
            provider = by_pred.get(box_file.resolve())
            if provider is None:
                stem = str(_read_meta(box_file, name).get("name") or box_file.stem)
                provider = add(stem, box_file, False, depth + 1)
            src.masks_from = provider.name
        out.append(src)
        return src

    ens_preds = {Path(m.predictions).resolve(): m for m in ens.models}
    for m in ens.models:
        pred = Path(m.predictions)
        if pred.resolve() in by_pred:  # already added as another model's box provider
            by_pred[pred.resolve()].in_ensemble = True
            continue
        add(m.name, pred, True, 0)
    # ensemble names must match the bundle names (the YAML is rewritten with them)
    for p, m in ens_preds.items():
        if by_pred[p].name != m.name:
            raise BundleError(
                f"ensemble model name {m.name!r} is not file-system safe or repeats another; rename it in "
                f"{ensemble_yaml} (letters, digits, '_', '.', '-')"
            )
    return out


def _library_of_config(config: str) -> str:
    from custom_modules.runner_utils import library_of, load_config

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

    from custom_modules.runner_utils import load_config

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
            where = f"model '{src.name}' (config {src.config}, checkpoint {src.checkpoint})"
            cfg = inference_config(src.config)
            ckpt, info = strip_checkpoint(src.checkpoint)
            n_params = check_checkpoint_loads(cfg, ckpt["state_dict"], where)
            mdir = tmp / "models" / src.name
            mdir.mkdir(parents=True)
            cfg.dump(str(mdir / "config.py"))
            torch.save(ckpt, mdir / "weights.pth")
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
                    "config": f"models/{src.name}/config.py",
                    "checkpoint": f"models/{src.name}/weights.pth",
                    "predictions": f"{src.name}.npz",
                    "params": n_params,
                    "ema_weights": info["ema"],
                    "trained_iter": info.get("iter"),
                    "source": {
                        "config": src.config,
                        "checkpoint": src.checkpoint,
                        "checkpoint_bytes": os.path.getsize(src.checkpoint),
                        "predictions": src.predictions,
                    },
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
                f"Tuned ensemble of the bundle (from {ensemble_yaml}). 'predictions' are file names in the folder\n"
                "where the notebook writes each model's tools/infer.py output (python -m ensemble.run runs there)."
            ),
        )
        files = {}
        for p in sorted(tmp.rglob("*")):
            if p.is_file():
                rel = p.relative_to(tmp).as_posix()
                files[rel] = {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for e in entries:
            e["checkpoint_bytes"] = files[e["checkpoint"]]["bytes"]
        bundle = {
            "format": BUNDLE_FORMAT,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "ensemble": ENSEMBLE_FILE,
            "ensemble_source": str(ensemble_yaml),
            "mode": "vote",
            "models": entries,
            "files": files,
            "total_bytes": sum(f["bytes"] for f in files.values()),
        }
        _check_inside(tmp, entries)
        (tmp / BUNDLE_FILE).write_text(json.dumps(bundle, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return bundle


def _check_inside(root: Path, entries: Sequence[dict]) -> None:
    """Refuse a bundle whose ensemble YAML, configs or model entries name a path outside it."""
    import yaml
    from mmengine.config import Config

    used: dict[str, Any] = {ENSEMBLE_FILE: yaml.safe_load((root / ENSEMBLE_FILE).read_text())}
    for e in entries:
        used[e["config"]] = Config.fromfile(str(root / e["config"])).to_dict()
        used[f"bundle.json models[{e['name']}]"] = {k: v for k, v in e.items() if k != "source"}
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
    for i, m in enumerate(models):
        for key in ("name", "role", "config", "checkpoint", "predictions"):
            if not isinstance(m, dict) or not isinstance(m.get(key), str):
                raise BundleError(f"{path}: models[{i}].{key} missing")
        if m["role"] not in ROLES:
            raise BundleError(f"{path}: models[{i}].role {m['role']!r} not one of {ROLES}")
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
def inference_plan(
    bundle_dir: str | os.PathLike,
    images_dir: str | os.PathLike,
    work_dir: str | os.PathLike,
    out: str | os.PathLike,
    infer_script: str | os.PathLike,
    device: str | None = None,
    python: str | None = None,
) -> list[Step]:
    """The commands that turn a folder of test images into a submission with a bundle.

    One ``tools/infer.py`` run per bundle model (box providers first; ``--tta``, ``--score-thr``,
    ``--max-per-img`` and ``--mask-head-on`` as when the ensemble was tuned), writing ``<work_dir>/<model>.npz``,
    then ``python -m ensemble.run`` with the bundle's ensemble YAML in ``work_dir``, writing ``out``.

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
    steps = []
    for m in bundle["models"]:
        pred = work / m["predictions"]
        argv = [py, str(infer_script), str(root / m["config"]), str(root / m["checkpoint"])]
        argv += ["--images", str(images), "--out", str(pred), "--name", m["name"], "--no-progress"]
        argv += [
            "--score-thr",
            repr(float(m.get("score_thr", 0.05))),
            "--max-per-img",
            str(int(m.get("max_per_img", 1000))),
        ]
        if m.get("tta"):
            argv.append("--tta")
        if m.get("masks_from"):
            src = next((x for x in bundle["models"] if x["name"] == m["masks_from"]), None)
            if src is None:
                raise BundleError(
                    f"{root / BUNDLE_FILE}: model {m['name']!r} takes masks_from unknown {m['masks_from']!r}"
                )
            argv += ["--mask-head-on", str(work / src["predictions"])]
        if device:
            argv += ["--device", device]
        steps.append(Step(m["name"], "infer", argv, None, [str(pred)]))
    argv = [
        py,
        "-m",
        "ensemble.run",
        "--config",
        str(root / bundle["ensemble"]),
        "--out",
        str(Path(out).resolve()),
    ]
    steps.append(Step("ensemble", "ensemble", argv, str(work), [str(Path(out).resolve())]))
    return steps


def run_step(step: Step) -> float:
    """Run one plan step, its output going to this process's stdout/stderr; returns its wall time in seconds.

    Raises:
        RuntimeError: If the command exits non-zero (naming the step and its exit code).
    """
    t0 = time.perf_counter()
    print(f"[{step.kind}] {step.name}: {' '.join(step.argv[1:])}", flush=True)
    r = subprocess.run(step.argv, cwd=step.cwd)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(
            f"step {step.kind} '{step.name}' failed with exit code {r.returncode} after {dt:.1f} s"
        )
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
