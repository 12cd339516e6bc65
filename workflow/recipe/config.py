"""Recipe YAML: parsing and validation (the layout is documented in ``configs/recipes/README.md``).

A recipe names the data, the models (config, role, folds, starting weights, TTA, GPUs), the ensemble (mode,
starting parameters, tuning) and the outputs. Every mapping rejects unknown keys, every model config must exist
and be able to serve its role (``boxes``: any mmdet detector; ``instance``: an mmdet detector with a mask head;
``semantic``: an mmseg segmentor), so a typo fails before anything runs, with one ``ValueError`` naming the
recipe file and the key.

Relative paths in a recipe are relative to the repository root (where the recipe runner runs the tools).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "ROLES",
    "ENSEMBLE_MODES",
    "REPO",
    "DataSpec",
    "ModelSpec",
    "PretrainSpec",
    "TuneSpec",
    "EnsembleSpec",
    "OutputSpec",
    "Recipe",
    "load_recipe",
    "parse_recipe",
    "config_capabilities",
]

REPO = Path(__file__).resolve().parents[2]
ROLES = ("boxes", "instance", "semantic")
ENSEMBLE_MODES = ("vote", "box_first")

_TOP = {"name", "work_dir", "data", "pretrain", "models", "ensemble", "outputs", "expected_gpu_minutes"}
_DATA = {"root", "synthetic", "folds", "train_folds", "fold_seed", "test_dir"}
_SYNTH = {"n_images", "n_test", "density", "seed", "from_coco"}
_MODEL = {
    "name",
    "config",
    "role",
    "weight",
    "folds",
    "load_from",
    "pretrained",
    "tta",
    "gpus",
    "cfg_options",
    "min_score",
    "masks_from",
    "pretrain",
    "expected_gpu_minutes",
}
_PRETRAIN = {"livecell", "models"}
_LIVECELL = {"ann", "images_dir", "out", "categories", "class_map"}
_PRE_MODEL = {"config", "gpus", "cfg_options", "expected_gpu_minutes"}
_ENSEMBLE = {"mode", "start", "fusion", "class_thresholds", "tune"}
_TUNE = {"method", "rounds", "trials", "cv", "workers", "seed", "singles"}
_OUTPUT = {"submission", "bundle", "overlays"}


def _err(src: str, where: str, msg: str) -> ValueError:
    return ValueError(f"{src}: {where}: {msg}")


def _check_keys(d: Any, allowed: set[str], src: str, where: str) -> dict:
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise _err(src, where, f"expected a mapping, got {type(d).__name__}")
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise _err(src, where, f"unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    return d


def _int_list(v: Any, src: str, where: str) -> list[int]:
    if isinstance(v, int) and not isinstance(v, bool):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        raise _err(src, where, f"expected a list of integers, got {v!r}")
    return [int(x) for x in v]


def _path_or_none(v: Any, src: str, where: str) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str) or not v:
        raise _err(src, where, f"expected a path string, got {v!r}")
    return v


@dataclass
class DataSpec:
    """Where the data comes from and how it is split.

    Attributes:
        root: Kaggle-layout root (``train.csv``, ``train/``, optional ``test/``); ``None`` with ``synthetic``.
        synthetic: Options of :func:`celldata.synthetic.generate_synthetic_dataset` (``n_images``, ``n_test``,
            ``density``, ``seed``, ``from_coco``) when the data is generated into ``<work_dir>/data``.
        folds: Number of folds written by ``prepare_sartorius`` (grouped by sample id).
        train_folds: Folds whose model is trained (its validation part gives the out-of-fold predictions).
        fold_seed: Seed of the fold assignment.
        test_dir: Folder of test images relative to the root (``test``); missing folder = no test step.
    """

    root: str | None = None
    synthetic: dict[str, Any] | None = None
    folds: int = 5
    train_folds: list[int] = field(default_factory=lambda: [0])
    fold_seed: int = 0
    test_dir: str = "test"


@dataclass
class ModelSpec:
    """One model of the recipe.

    Attributes:
        name: Name in outputs (prediction files ``<name>_val.npz`` / ``<name>_test.npz``, ensemble members).
        config: OpenMMLab config file.
        role: ``boxes`` (boxes only, e.g. YOLOX), ``instance`` (boxes + masks, Mask R-CNN) or ``semantic``
            (foreground map, UPerNet / U-Net).
        weight: Starting ensemble weight.
        folds: Folds to train (default: the data's ``train_folds``).
        load_from: Checkpoint to start from (COCO / LIVECell weights; ``pretrain`` sets it from the pretrain
            step).
        pretrained: ImageNet backbone weights (``torchvision://resnet50`` or a local file) through the configs'
            ``pretrained`` variable.
        tta: Flip TTA at inference.
        gpus: GPUs for training (``> 1``: DDP, ``python -m torch.distributed.run -m workflow.cli.train``).
        cfg_options: Extra ``--cfg-options`` of training (and inference).
        min_score: Stated minimum of the model on the validation folds (competition score; fgIoU for a
            semantic model); the summary marks the model as failing when below.
        masks_from: For a ``boxes`` model in ``vote`` mode: the ``instance`` model whose mask head predicts
            masks on its boxes (member ``<name>_masks``).
        pretrain: Name of a ``pretrain.models`` entry whose final checkpoint becomes ``load_from``.
        expected_gpu_minutes: Documentation only (expected GPU time of training one fold).
    """

    name: str
    config: str
    role: str
    weight: float = 1.0
    folds: list[int] | None = None
    load_from: str | None = None
    pretrained: str | None = None
    tta: bool = False
    gpus: int = 1
    cfg_options: dict[str, Any] = field(default_factory=dict)
    min_score: float | None = None
    masks_from: str | None = None
    pretrain: str | None = None
    expected_gpu_minutes: float | None = None


@dataclass
class PretrainSpec:
    """LIVECell pretraining: conversion options and one pretrain config per named entry."""

    livecell: dict[str, Any]
    models: dict[str, dict[str, Any]]


@dataclass
class TuneSpec:
    """Tuning of the ensemble on the out-of-fold predictions (``python -m ensemble.tune``)."""

    method: str = "coord"
    rounds: int = 2
    trials: int = 50
    cv: int = 0
    workers: int | None = None
    seed: int = 0
    singles: bool = True


@dataclass
class EnsembleSpec:
    """Ensemble mode and starting parameters."""

    mode: str = "vote"
    start: str | None = None
    fusion: dict[str, Any] = field(default_factory=dict)
    class_thresholds: dict[str, Any] = field(default_factory=dict)
    tune: TuneSpec = field(default_factory=TuneSpec)


@dataclass
class OutputSpec:
    """Outputs: submission CSV, optional Kaggle bundle folder, overlays per score report."""

    submission: str | None = None
    bundle: str | None = None
    overlays: int = 3


@dataclass
class Recipe:
    """A parsed recipe (see module docstring)."""

    name: str
    source: str
    work_dir: str
    data: DataSpec
    models: list[ModelSpec]
    ensemble: EnsembleSpec
    outputs: OutputSpec
    pretrain: PretrainSpec | None = None
    expected_gpu_minutes: dict[str, Any] | None = None

    def model(self, name: str) -> ModelSpec:
        """The model called ``name``."""
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)

    def folds_of(self, m: ModelSpec) -> list[int]:
        """Folds trained for model ``m``."""
        return list(m.folds if m.folds is not None else self.data.train_folds)

    def trained_folds(self) -> list[int]:
        """Union of the trained folds of all models, sorted."""
        return sorted({k for m in self.models for k in self.folds_of(m)})

    def members(self) -> list[tuple[str, str, float]]:
        """Ensemble members ``(name, kind, weight)`` in order; ``kind`` is the role of the member's file.

        In ``vote`` mode a ``boxes`` model with ``masks_from`` contributes ``<name>_masks`` (its boxes with
        the mask model's masks), a ``boxes`` model without it its bare boxes. In ``box_first`` mode the box
        models (``boxes`` and ``instance``) are fused into ``fused_boxes`` first; every ``instance`` model
        then contributes ``<name>_on_boxes`` (its mask head on the fused boxes), every semantic model its map.
        """
        out: list[tuple[str, str, float]] = []
        if self.ensemble.mode == "vote":
            for m in self.models:
                if m.role == "boxes" and m.masks_from:
                    out.append((f"{m.name}_masks", "instance", m.weight))
                else:
                    out.append((m.name, m.role, m.weight))
        else:
            for m in self.models:
                if m.role == "instance":
                    out.append((f"{m.name}_on_boxes", "instance", m.weight))
                elif m.role == "semantic":
                    out.append((m.name, "semantic", m.weight))
        return out


def config_capabilities(config_path: str | os.PathLike) -> set[str]:
    """Roles an OpenMMLab config can serve, read from the config (no model is built, no torch import).

    Args:
        config_path: Config file.

    Returns:
        Subset of :data:`ROLES`: an mmseg segmentor serves ``semantic``, a flow model (``FlowEncoderDecoder`` or
        a flow decode head, :func:`celldata.flows.is_flow_model_config`) ``instance`` (its instances are decoded
        from the flows at inference); an mmdet detector serves ``boxes`` and, with a mask head
        (``roi_head.mask_head`` or a ``mask_head``), ``instance``.

    Raises:
        ValueError: If the config cannot be parsed.
    """
    from custom_modules.config import load_config

    try:
        cfg = load_config(config_path, import_custom_modules=False)
    except Exception as e:  # mmengine raises many types for a bad config file
        raise ValueError(f"{config_path}: cannot parse the config ({type(e).__name__}: {e})") from e
    from celldata.flows import is_flow_model_config

    model = cfg.get("model") or {}
    scope = cfg.get("default_scope", "mmdet")
    if scope == "mmseg":
        return {"instance"} if is_flow_model_config(model) else {"semantic"}
    if scope != "mmdet":
        return set()
    roles = {"boxes"}
    roi = model.get("roi_head") or {}
    if (isinstance(roi, dict) and roi.get("mask_head")) or model.get("mask_head"):
        roles.add("instance")
    return roles


def _parse_model(d: Any, src: str, i: int, check_configs: bool) -> ModelSpec:
    where = f"models[{i}]" + (
        f" ({d['name']})" if isinstance(d, dict) and isinstance(d.get("name"), str) else ""
    )
    d = _check_keys(d, _MODEL, src, where)
    for key in ("name", "config", "role"):
        if key not in d:
            raise _err(src, where, f"missing required key '{key}'")
    name = d["name"]
    if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
        raise _err(src, f"{where}.name", f"expected a name of letters, digits, '_' or '-', got {name!r}")
    where = f"models[{i}] ({name})"
    role = d["role"]
    if role not in ROLES:
        raise _err(src, f"{where}.role", f"unknown role {role!r}; expected one of {list(ROLES)}")
    cfg = d["config"]
    if not isinstance(cfg, str):
        raise _err(src, f"{where}.config", f"expected a path, got {cfg!r}")
    cfg_path = Path(cfg) if Path(cfg).is_absolute() else REPO / cfg
    if check_configs:
        if not cfg_path.is_file():
            raise _err(src, f"{where}.config", f"config file not found: {cfg}")
        can = config_capabilities(cfg_path)
        if role not in can:
            raise _err(
                src,
                f"{where}.role",
                f"config {cfg} cannot serve role {role!r} (it serves {sorted(can) or 'nothing'}: "
                "'instance' needs a detector with a mask head, 'semantic' an mmseg segmentor)",
            )
    weight = d.get("weight", 1.0)
    if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not weight > 0:
        raise _err(src, f"{where}.weight", f"expected a positive number, got {weight!r}")
    gpus = d.get("gpus", 1)
    if not isinstance(gpus, int) or isinstance(gpus, bool) or gpus < 1:
        raise _err(src, f"{where}.gpus", f"expected an integer >= 1, got {gpus!r}")
    opts = d.get("cfg_options") or {}
    if not isinstance(opts, dict):
        raise _err(src, f"{where}.cfg_options", "expected a mapping of dotted keys to values")
    for key in ("data_root", "fold", "load_from", "pretrained"):
        if key in opts:
            raise _err(
                src, f"{where}.cfg_options", f"'{key}' is set by the recipe (use the model's own key instead)"
            )
    min_score = d.get("min_score")
    if min_score is not None and (not isinstance(min_score, (int, float)) or isinstance(min_score, bool)):
        raise _err(src, f"{where}.min_score", f"expected a number, got {min_score!r}")
    tta = d.get("tta", False)
    if not isinstance(tta, bool):
        raise _err(src, f"{where}.tta", f"expected true/false, got {tta!r}")
    return ModelSpec(
        name=name,
        config=cfg,
        role=role,
        weight=float(weight),
        folds=_int_list(d["folds"], src, f"{where}.folds") if d.get("folds") is not None else None,
        load_from=_path_or_none(d.get("load_from"), src, f"{where}.load_from"),
        pretrained=_path_or_none(d.get("pretrained"), src, f"{where}.pretrained"),
        tta=tta,
        gpus=gpus,
        cfg_options=dict(opts),
        min_score=float(min_score) if min_score is not None else None,
        masks_from=d.get("masks_from"),
        pretrain=d.get("pretrain"),
        expected_gpu_minutes=d.get("expected_gpu_minutes"),
    )


def parse_recipe(data: Any, source: str = "<recipe>", check_configs: bool = True) -> Recipe:
    """Validate a loaded recipe mapping and build the :class:`Recipe`.

    Args:
        data: The YAML content.
        source: Name of the recipe file (for messages).
        check_configs: Check that model configs exist and serve their roles (parses them with mmengine).

    Returns:
        The recipe.

    Raises:
        ValueError: Naming the recipe file and the key, for any unknown key, missing or invalid value.
    """
    src = source
    d = _check_keys(data, _TOP, src, "top level")
    if not d:
        raise _err(src, "top level", "empty recipe")
    name = d.get("name") or Path(source).stem
    data_spec = _parse_data(d.get("data"), src)
    models = _parse_models(d.get("models"), src, data_spec, check_configs)
    pretrain = _parse_pretrain(d.get("pretrain"), src, check_configs)
    for m in models:
        if m.pretrain is not None:
            if pretrain is None or m.pretrain not in pretrain.models:
                raise _err(src, f"models ({m.name}).pretrain", f"no pretrain.models entry {m.pretrain!r}")
            if m.load_from is not None:
                raise _err(src, f"models ({m.name})", "give either 'pretrain' or 'load_from', not both")
    ens = _parse_ensemble(d.get("ensemble"), src, models, data_spec.train_folds, check_configs)
    od = _check_keys(d.get("outputs"), _OUTPUT, src, "outputs")
    outputs = OutputSpec(
        submission=_path_or_none(od.get("submission"), src, "outputs.submission"),
        bundle=_path_or_none(od.get("bundle"), src, "outputs.bundle"),
        overlays=int(od.get("overlays", 3)),
    )
    return Recipe(
        name=str(name),
        source=source,
        work_dir=str(d.get("work_dir") or f"work_dirs/recipes/{name}"),
        data=data_spec,
        models=models,
        ensemble=ens,
        outputs=outputs,
        pretrain=pretrain,
        expected_gpu_minutes=d.get("expected_gpu_minutes"),
    )


def _parse_data(raw: Any, src: str) -> DataSpec:
    """The ``data`` mapping."""
    dd = _check_keys(raw, _DATA, src, "data")
    root = _path_or_none(dd.get("root"), src, "data.root")
    synthetic = dd.get("synthetic")
    if synthetic is not None:
        synthetic = dict(_check_keys(synthetic, _SYNTH, src, "data.synthetic"))
    if root is None and synthetic is None:
        raise _err(src, "data", "give 'root' (Kaggle layout) or 'synthetic' (generator options)")
    folds = dd.get("folds", 5)
    if not isinstance(folds, int) or isinstance(folds, bool) or folds < 2:
        raise _err(src, "data.folds", f"expected an integer >= 2, got {folds!r}")
    return DataSpec(
        root=root,
        synthetic=synthetic,
        folds=folds,
        train_folds=_int_list(dd.get("train_folds", [0]), src, "data.train_folds"),
        fold_seed=int(dd.get("fold_seed", 0)),
        test_dir=str(dd.get("test_dir", "test")),
    )


def _parse_models(raw: Any, src: str, data: DataSpec, check_configs: bool) -> list[ModelSpec]:
    """The ``models`` list: every model valid, names unique, every fold (and ``data.train_folds``) in
    range."""
    if not isinstance(raw, list) or not raw:
        raise _err(src, "models", "expected a non-empty list of models")
    models = [_parse_model(m, src, i, check_configs) for i, m in enumerate(raw)]
    names = [m.name for m in models]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise _err(src, "models", f"duplicate model name(s) {dup}")
    for m in models:
        for k in m.folds or []:
            if not 0 <= k < data.folds:
                raise _err(src, f"models ({m.name}).folds", f"fold {k} outside 0..{data.folds - 1}")
    for k in data.train_folds:
        if not 0 <= k < data.folds:
            raise _err(src, "data.train_folds", f"fold {k} outside 0..{data.folds - 1}")
    return models


def _parse_pretrain(raw: Any, src: str, check_configs: bool) -> PretrainSpec | None:
    """The optional ``pretrain`` mapping (LIVECell conversion options and the pretrain configs)."""
    if raw is None:
        return None
    pd = _check_keys(raw, _PRETRAIN, src, "pretrain")
    lc = dict(_check_keys(pd.get("livecell"), _LIVECELL, src, "pretrain.livecell"))
    for key in ("ann", "images_dir"):
        if key not in lc:
            raise _err(src, "pretrain.livecell", f"missing required key '{key}'")
    pm = pd.get("models") or {}
    if not isinstance(pm, dict) or not pm:
        raise _err(src, "pretrain.models", "expected a mapping name -> {config: ...}")
    for pname, spec in pm.items():
        spec = _check_keys(spec, _PRE_MODEL, src, f"pretrain.models.{pname}")
        if "config" not in spec:
            raise _err(src, f"pretrain.models.{pname}", "missing required key 'config'")
        if check_configs and not (REPO / spec["config"]).is_file():
            raise _err(src, f"pretrain.models.{pname}.config", f"config file not found: {spec['config']}")
    return PretrainSpec(livecell=lc, models={k: dict(v) for k, v in pm.items()})


def _parse_ensemble(
    raw: Any, src: str, models: list[ModelSpec], train_folds: list[int], check_configs: bool
) -> EnsembleSpec:
    """The ``ensemble`` mapping: a known mode the models can serve, the tuning options, the start file."""
    ed = _check_keys(raw, _ENSEMBLE, src, "ensemble")
    mode = ed.get("mode", "vote")
    if mode not in ENSEMBLE_MODES:
        raise _err(src, "ensemble.mode", f"unknown mode {mode!r}; expected one of {list(ENSEMBLE_MODES)}")
    _check_ensemble_models(models, mode, train_folds, src)
    tune = _parse_tune(ed.get("tune"), src)
    start = _path_or_none(ed.get("start"), src, "ensemble.start")
    if start is not None and check_configs and not (REPO / start).is_file() and not Path(start).is_file():
        raise _err(src, "ensemble.start", f"ensemble config not found: {start}")
    return EnsembleSpec(
        mode=mode,
        start=start,
        fusion=dict(ed.get("fusion") or {}),
        class_thresholds=dict(ed.get("class_thresholds") or {}),
        tune=tune,
    )


def _check_ensemble_models(models: list[ModelSpec], mode: str, train_folds: list[int], src: str) -> None:
    """``masks_from`` names an instance model trained on the same folds; the mode has the models it needs."""
    by_name = {m.name: m for m in models}
    for m in models:
        if m.masks_from is None:
            continue
        where = f"models ({m.name}).masks_from"
        if m.role != "boxes":
            raise _err(src, where, "only a 'boxes' model takes masks_from")
        src_model = by_name.get(m.masks_from)
        if src_model is None or src_model.role != "instance":
            raise _err(src, where, f"{m.masks_from!r} is not an 'instance' model of the recipe")
        if not set(m.folds or train_folds) <= set(src_model.folds or train_folds):
            raise _err(src, where, f"{m.masks_from!r} is not trained on the same folds")
    if mode == "box_first":
        if not any(m.role in ("boxes", "instance") for m in models):
            raise _err(src, "ensemble.mode", "box_first needs at least one 'boxes' or 'instance' model")
        if not any(m.role == "instance" for m in models):
            raise _err(
                src, "ensemble.mode", "box_first needs an 'instance' model (its mask head gives the masks)"
            )
    elif not any(m.role == "instance" or m.masks_from for m in models):
        raise _err(
            src, "models", "the vote ensemble needs an 'instance' model or a 'boxes' model with masks_from"
        )


def _parse_tune(raw: Any, src: str) -> TuneSpec:
    """The ``ensemble.tune`` mapping."""
    td = _check_keys(raw, _TUNE, src, "ensemble.tune")
    tune = TuneSpec(
        method=str(td.get("method", "coord")),
        rounds=int(td.get("rounds", 2)),
        trials=int(td.get("trials", 50)),
        cv=int(td.get("cv", 0)),
        workers=td.get("workers"),
        seed=int(td.get("seed", 0)),
        singles=bool(td.get("singles", True)),
    )
    if tune.method not in ("coord", "tpe"):
        raise _err(src, "ensemble.tune.method", f"unknown method {tune.method!r}; expected coord or tpe")
    if tune.cv == 1 or tune.cv < 0:
        raise _err(src, "ensemble.tune.cv", "expected 0 (no held-out report) or K >= 2")
    return tune


def load_recipe(path: str | os.PathLike, check_configs: bool = True) -> Recipe:
    """Read and validate a recipe YAML file.

    Raises:
        ValueError: Unreadable YAML or an invalid recipe (message names the file and key).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: recipe file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from e
    return parse_recipe(data, str(path), check_configs)
