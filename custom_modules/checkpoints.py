"""Does a checkpoint fit a config? One comparison of a model's state dict with a checkpoint's, used three ways.

:func:`compare_state_dicts` sorts every key into ``loaded`` (same name and shape), ``reinitialized`` (a
class-dependent key: a layer whose shape follows ``num_classes``, e.g. YOLOX's ``multi_level_conv_cls``, Mask
R-CNN's ``fc_cls`` / ``fc_reg`` / ``conv_logits``, UPerNet's ``conv_seg``, when the checkpoint's differs or is
absent), ``missing`` (in the model, not in the checkpoint), ``unexpected`` (in the checkpoint only) and
``mismatched`` (same name, other shape, not class-dependent). :func:`class_dependent_keys` finds the
class-dependent keys of any config exactly: it builds the model a second time with every ``num_classes`` of
``cfg.model`` changed and keeps the keys whose shape changed.

* **Fit check** (:func:`check_checkpoint_fits`, :func:`load_fitting_checkpoint`): inference and evaluation
  (``tools/infer.py``, ``tools/test.py``, :func:`custom_modules.inference.load_model`) and the Kaggle bundle
  (``workflow.bundle.pack.check_checkpoint_loads``) refuse, before any work, a checkpoint that is not an exact
  fit (any missing, unexpected or shape-mismatched key, class heads included), naming the first few keys.
* **Pretrained start** (:class:`PretrainedStartHook`, :func:`start_from_state_dict`): training from a
  checkpoint of another task (COCO: 80 classes, ADE20K: 150, LIVECell) loads every key that fits and leaves
  exactly the class-dependent layers at their fresh initialisation; every key not loaded is listed in the
  training log and in ``<work_dir>/pretrained_start.json`` (the recipe summary shows it). Any other missing or
  mismatched key (a norm layer the checkpoint does not have, another architecture) stops the run, because the
  rest of the model would silently stay random.

Importing this module imports torch and mmengine, not mmdet or mmseg (the config's library is registered when a
model is built).
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from custom_modules.config import load_config
from custom_modules.runner_utils import register_library

__all__ = [
    "REPORT_FILE",
    "CheckpointMismatch",
    "KeyReport",
    "build_model",
    "class_dependent_keys",
    "read_state_dict",
    "compare_state_dicts",
    "check_checkpoint_fits",
    "load_fitting_checkpoint",
    "start_from_state_dict",
    "PretrainedStartHook",
]

REPORT_FILE = "pretrained_start.json"
_SHOW = 5  # keys named per list in a message


class CheckpointMismatch(ValueError):
    """A checkpoint's weights do not fit the config (the message names the first keys of each kind)."""


@dataclass
class KeyReport:
    """Where every key of a model / checkpoint pair went.

    Attributes:
        loaded: Keys of the model loaded from the checkpoint (same name, same shape).
        reinitialized: Class-dependent keys of the model not loaded (other shape in the checkpoint, or absent):
            they keep their fresh initialisation.
        missing: Other keys of the model that the checkpoint does not have.
        unexpected: Keys of the checkpoint that the model does not have.
        mismatched: ``(key, model shape, checkpoint shape)`` of other keys whose shapes differ.
    """

    loaded: list[str] = field(default_factory=list)
    reinitialized: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, list[int], list[int]]] = field(default_factory=list)

    def exact(self) -> bool:
        """Every model key loads and the checkpoint has nothing else."""
        return not (self.reinitialized or self.missing or self.unexpected or self.mismatched)

    def problems(self, allow_reinitialized: bool = False) -> list[str]:
        """One phrase per kind of misfit (the first keys named); empty when the checkpoint fits.

        Args:
            allow_reinitialized: Class-dependent keys may differ (a start from another task's checkpoint).
        """
        out = []
        if self.reinitialized and not allow_reinitialized:
            out.append(
                f"{len(self.reinitialized)} class-dependent key(s) of another class count or absent "
                f"({_first(self.reinitialized)})"
            )
        if self.missing:
            out.append(f"{len(self.missing)} missing key(s) ({_first(self.missing)})")
        if self.unexpected:
            out.append(f"{len(self.unexpected)} unexpected key(s) ({_first(self.unexpected)})")
        if self.mismatched:
            shown = ", ".join(
                f"{k}: model {tuple(a)} vs checkpoint {tuple(b)}" for k, a, b in self.mismatched[:_SHOW]
            )
            more = f", ... {len(self.mismatched) - _SHOW} more" if len(self.mismatched) > _SHOW else ""
            out.append(f"{len(self.mismatched)} shape mismatch(es) ({shown}{more})")
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form with the counts."""
        d = asdict(self)
        d["counts"] = {k: len(v) for k, v in d.items()}
        return d

    def lines(self) -> list[str]:
        """Human-readable lines: the counts, then every key not loaded."""
        out = [
            f"loaded {len(self.loaded)} key(s); re-initialized (class-dependent) {len(self.reinitialized)}; "
            f"missing {len(self.missing)}; unexpected (skipped) {len(self.unexpected)}; "
            f"shape-mismatched {len(self.mismatched)}"
        ]
        out += [f"  re-initialized: {k}" for k in self.reinitialized]
        out += [f"  missing: {k}" for k in self.missing]
        out += [f"  unexpected (skipped): {k}" for k in self.unexpected]
        out += [
            f"  shape-mismatched: {k} model {tuple(a)} checkpoint {tuple(b)}" for k, a, b in self.mismatched
        ]
        return out


def _first(keys: list[str]) -> str:
    more = f", ... {len(keys) - _SHOW} more" if len(keys) > _SHOW else ""
    return ", ".join(keys[:_SHOW]) + more


def build_model(cfg: Any) -> torch.nn.Module:
    """The model of a loaded config (its library and ``custom_imports`` registered), on the CPU, not initialised."""
    library = register_library(cfg)
    if library == "mmdet":
        from mmdet.registry import MODELS
    elif library == "mmseg":
        from mmseg.registry import MODELS
    else:
        from mmengine.registry import MODELS
    return MODELS.build(copy.deepcopy(cfg.model))


def _bump_num_classes(node: Any) -> int:
    """Add one to every integer ``num_classes`` below ``node`` (in place); returns how many were changed."""
    n = 0
    if isinstance(node, Mapping):
        for k in list(node.keys()):
            v = node[k]
            if k == "num_classes" and isinstance(v, int) and not isinstance(v, bool):
                node[k] = v + 1
                n += 1
            else:
                n += _bump_num_classes(v)
    elif isinstance(node, (list, tuple)):
        for v in node:
            n += _bump_num_classes(v)
    return n


def _shapes(sd: Mapping[str, Any]) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in sd.items() if isinstance(v, torch.Tensor)}


def class_dependent_keys(cfg: Any, model_shapes: Mapping[str, list[int]] | None = None) -> set[str]:
    """Keys of the config's model whose shape depends on ``num_classes``.

    Args:
        cfg: Loaded config.
        model_shapes: Shapes of the model's state dict when it is already built (saves one build).

    Returns:
        The keys whose shape changes when every ``num_classes`` of ``cfg.model`` grows by one (empty when the
        config has no ``num_classes``).
    """
    if model_shapes is None:
        model_shapes = _shapes(build_model(cfg).state_dict())
    variant = copy.deepcopy(cfg)
    if not _bump_num_classes(variant.model):
        return set()
    other = _shapes(build_model(variant).state_dict())
    return {k for k, s in model_shapes.items() if other.get(k, s) != s or k not in other}


def _strip_module(sd: Mapping[str, Any]) -> dict[str, Any]:
    return {re.sub(r"^module\.", "", k): v for k, v in sd.items()}


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The weights of a checkpoint file (``weights_only`` with mmengine's allow-list; ``state_dict`` of an mmengine
    checkpoint, or a bare state dict; ``module.`` prefixes removed).

    Raises:
        FileNotFoundError: If the file does not exist.
        CheckpointMismatch: If it does not load or holds no tensors.
    """
    from mmengine.runner.checkpoint import get_torch_safe_globals

    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(get_torch_safe_globals()):
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a file that is not a checkpoint
        raise CheckpointMismatch(
            f"checkpoint {path} cannot be loaded: {str(e).splitlines()[0][:300]}"
        ) from None
    if not isinstance(raw, Mapping):
        raise CheckpointMismatch(f"checkpoint {path}: expected a dict, got {type(raw).__name__}")
    sd = raw.get("state_dict", raw)
    sd = {k: v for k, v in _strip_module(sd).items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise CheckpointMismatch(f"checkpoint {path}: no weights (empty state_dict)")
    return sd


def compare_state_dicts(
    model_sd: Mapping[str, Any],
    ckpt_sd: Mapping[str, Any],
    class_keys: set[str] | frozenset[str] = frozenset(),
) -> KeyReport:
    """Sort the keys of a model and a checkpoint (see :class:`KeyReport`).

    Args:
        model_sd: The model's state dict (tensors, or shapes as lists).
        ckpt_sd: The checkpoint's state dict (``module.`` prefixes are ignored).
        class_keys: The model's class-dependent keys (:func:`class_dependent_keys`).

    Returns:
        The report (keys in the model's order; unexpected keys in the checkpoint's).
    """

    def shape(v: Any) -> list[int]:
        return list(v.shape) if hasattr(v, "shape") else list(v)

    ckpt = _strip_module(ckpt_sd)
    rep = KeyReport()
    for k, v in model_sd.items():
        if k in ckpt and shape(ckpt[k]) == shape(v):
            rep.loaded.append(k)
        elif k in class_keys:
            rep.reinitialized.append(k)
        elif k not in ckpt:
            rep.missing.append(k)
        else:
            rep.mismatched.append((k, shape(v), shape(ckpt[k])))
    rep.unexpected = [k for k in ckpt if k not in model_sd]
    return rep


def check_checkpoint_fits(
    config: str | os.PathLike | Any,
    checkpoint: str | os.PathLike | Mapping[str, Any],
    cfg_options: Mapping[str, Any] | None = None,
    where: str | None = None,
) -> KeyReport:
    """Refuse a checkpoint that does not fit the config exactly (names and shapes, class heads included).

    Args:
        config: Config file or loaded config.
        checkpoint: Checkpoint file, or its state dict.
        cfg_options: Config overrides (as ``--cfg-options``).
        where: What to name in the message (default: the config and checkpoint files).

    Returns:
        The report (every key loaded).

    Raises:
        FileNotFoundError: If the config or checkpoint file does not exist.
        CheckpointMismatch: Naming the first few missing, unexpected and shape-mismatched keys.
    """
    cfg = load_config(config, cfg_options)
    model = build_model(cfg)
    rep, _ = _fit(model, checkpoint, config, where)
    return rep


def _fit(
    model: torch.nn.Module,
    checkpoint: str | os.PathLike | Mapping[str, Any],
    config: Any,
    where: str | None,
) -> tuple[KeyReport, dict[str, torch.Tensor]]:
    sd = (
        read_state_dict(checkpoint)
        if isinstance(checkpoint, (str, os.PathLike))
        else _strip_module(checkpoint)
    )
    rep = compare_state_dicts(model.state_dict(), sd)
    problems = rep.problems()
    if problems:
        if where is None:
            cfg_name = config if isinstance(config, (str, os.PathLike)) else "the config"
            ckpt_name = checkpoint if isinstance(checkpoint, (str, os.PathLike)) else "the state dict"
            where = f"checkpoint {ckpt_name} does not fit {cfg_name}"
        raise CheckpointMismatch(
            f"{where}: {'; '.join(problems)} (loaded {len(rep.loaded)} of {len(rep.loaded) + len(rep.reinitialized) + len(rep.missing) + len(rep.mismatched)} model keys)"
        )
    return rep, sd


def load_fitting_checkpoint(
    model: torch.nn.Module, checkpoint: str | os.PathLike | Mapping[str, Any], where: str | None = None
) -> KeyReport:
    """Load a checkpoint into ``model`` after checking that it fits exactly (see :func:`check_checkpoint_fits`).

    Raises:
        FileNotFoundError: If the checkpoint file does not exist.
        CheckpointMismatch: If it does not fit (nothing is loaded then).
    """
    rep, sd = _fit(model, checkpoint, "the config", where)
    model.load_state_dict(sd, strict=True)
    return rep


def start_from_state_dict(
    model: torch.nn.Module,
    ckpt_sd: Mapping[str, Any],
    class_keys: set[str],
    strict: bool = True,
) -> KeyReport:
    """Start ``model`` from another task's weights: load every key that fits, keep the class-dependent ones.

    Args:
        model: The (initialised) model.
        ckpt_sd: The checkpoint's state dict.
        class_keys: The model's class-dependent keys.
        strict: Refuse missing or shape-mismatched keys other than the class-dependent ones.

    Returns:
        The report.

    Raises:
        CheckpointMismatch: With ``strict``, for other missing or mismatched keys (nothing is loaded then).
    """
    rep = compare_state_dicts(model.state_dict(), ckpt_sd, class_keys)
    _refuse_partial(rep, strict)
    sd = _strip_module(ckpt_sd)
    model.load_state_dict({k: sd[k] for k in rep.loaded}, strict=False)
    return rep


def _refuse_partial(rep: KeyReport, strict: bool) -> None:
    if strict and (rep.missing or rep.mismatched):
        raise CheckpointMismatch(
            "the starting checkpoint does not fit beyond the class-dependent layers: "
            + "; ".join(rep.problems(allow_reinitialized=True))
            + " (a norm-layer mismatch means the config's norm layers differ from the checkpoint's: use the "
            "family's *_pretrained leaf, see configs/*/README.md)"
        )


@HOOKS.register_module(force=True)
class PretrainedStartHook(Hook):
    """Start training from another task's checkpoint (``load_from``): class-dependent layers re-initialized,
    every key not loaded listed in the log and in ``<work_dir>/pretrained_start.json``.

    Runs in ``after_load_checkpoint`` before the checkpoint reaches the model (and before ``EMAHook`` copies it
    into the averaged model): the keys that will not load are removed from the checkpoint's ``state_dict``, so the
    class-dependent layers keep the initialisation of ``init_weights`` and nothing else is half-loaded. A resumed
    run (``--resume``: the run's own checkpoint) is left alone.

    Add it with ``--cfg-options default_hooks.pretrained_start.type=PretrainedStartHook`` (the recipe does this
    for every model with a ``load_from`` or a ``pretrain`` entry).

    Args:
        strict: Stop the run when keys other than the class-dependent ones are missing or mismatched.
    """

    priority = "VERY_HIGH"

    def __init__(self, strict: bool = True) -> None:
        self.strict = strict

    def after_load_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        """Compare, log, write the report and drop the keys that must not load (see the class docstring)."""
        if getattr(runner, "_resume", False):
            return
        model = runner.model.module if hasattr(runner.model, "module") else runner.model
        model_sd = model.state_dict()
        class_keys = class_dependent_keys(runner.cfg, _shapes(model_sd))
        holder = checkpoint["state_dict"] if isinstance(checkpoint.get("state_dict"), Mapping) else checkpoint
        ckpt_sd = {k: v for k, v in holder.items() if isinstance(v, torch.Tensor)}
        rep = compare_state_dicts(model_sd, ckpt_sd, class_keys)
        source = runner.cfg.get("load_from")
        for line in [f"pretrained start from {source}:", *rep.lines()]:
            runner.logger.info(line)
        out = Path(runner.work_dir) / REPORT_FILE
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"load_from": str(source), **rep.to_dict()}, indent=1))
        _refuse_partial(rep, self.strict)
        keep = set(rep.loaded)
        for k in list(holder.keys()):
            if re.sub(r"^module\.", "", k) not in keep and isinstance(holder[k], torch.Tensor):
                del holder[k]
