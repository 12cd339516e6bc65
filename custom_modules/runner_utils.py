"""Config loading and Runner construction shared by ``tools/train.py``, ``tools/test.py`` and ``tools/infer.py``.

One entry point for mmdet, mmseg and plain-mmengine configs (the classifiers of ``custom_modules.cls``): the library
is picked from the config's ``default_scope`` and its modules are registered before the Runner is built. Extras over plain ``Config.fromfile`` + ``merge_from_dict``:

* ``--cfg-options data_root=DIR`` replaces the data root in every dataset of the config (mmengine only changes
  the top-level variable, which the dataset dicts copied when the file was parsed), ``fold=K`` switches
  ``fold0_`` annotation/split files to ``fold{K}_``, and ``pretrained=CKPT`` (a local file or e.g.
  ``torchvision://resnet50``) makes the backbone start from those ImageNet weights
  (``init_cfg=dict(type='Pretrained', checkpoint=CKPT)``; ``pretrained=None`` turns it off).
* ``launcher='pytorch'`` on a machine without CUDA initialises a ``gloo`` process group and wraps the model in
  DDP without device ids (mmengine assumes CUDA there).
* torch >= 2.6 checkpoints: onedl-mmengine loads its own checkpoints with ``weights_only`` and an allow-list, so
  resume and ``load_from`` work without ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``.
"""

from __future__ import annotations

import argparse
import copy
import os
import os.path as osp
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mmengine.config.utils as _cfg_utils
import torch
from mmengine.config import Config, ConfigDict, DictAction

__all__ = [
    "load_config",
    "library_of",
    "register_library",
    "set_data_root",
    "set_fold",
    "set_pretrained",
    "prepare_train_config",
    "build_runner",
    "build_test_runner",
    "add_runner_args",
    "apply_local_rank",
]

_LIBRARIES = ("mmdet", "mmseg", "mmengine")


def add_runner_args(
    parser: argparse.ArgumentParser,
    work_dir_help: str = "directory for logs and checkpoints (default work_dirs/<config name>)",
    cfg_options_help: str = "override config entries",
) -> None:
    """Add the options shared by ``tools/train.py`` and ``tools/test.py`` to ``parser``.

    Adds ``--work-dir``, ``--cfg-options`` (mmengine ``DictAction``), ``--launcher`` and
    ``--local_rank``/``--local-rank``. Positional arguments (the config, a checkpoint) stay with each tool.

    Args:
        parser: Parser to extend (modified in place).
        work_dir_help: Help text of ``--work-dir``.
        cfg_options_help: Help text of ``--cfg-options``.
    """
    parser.add_argument("--work-dir", help=work_dir_help)
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, help=cfg_options_help)
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0)


def apply_local_rank(args: argparse.Namespace) -> None:
    """Export ``args.local_rank`` as ``LOCAL_RANK`` unless the launcher (torchrun) already set it."""
    if "LOCAL_RANK" not in os.environ:
        os.environ["LOCAL_RANK"] = str(args.local_rank)


def _patch_module2package() -> None:
    """Let ``mmseg::`` base configs resolve with the onedl fork (mmengine maps mmseg -> mmsegmentation)."""
    _cfg_utils.MODULE2PACKAGE["mmseg"] = "mmseg"


def set_data_root(cfg: Config, data_root: str) -> int:
    """Point every dataset of ``cfg`` (and the top-level ``data_root`` variable) at ``data_root``.

    Every ``data_root`` key found anywhere in the config tree is replaced; a trailing slash is added so string
    concatenations of the form ``data_root + 'annotations/...'`` stay valid.

    Args:
        cfg: Loaded config (modified in place).
        data_root: New data root directory.

    Returns:
        Number of ``data_root`` entries replaced (the top-level variable included).
    """
    root = data_root if data_root.endswith(("/", os.sep)) else data_root + "/"
    count = 0

    def visit(node: Any) -> None:
        nonlocal count
        if isinstance(node, Mapping):
            for key in list(node.keys()):
                if key == "data_root" and (isinstance(node[key], str) or node[key] is None):
                    node[key] = root
                    count += 1
                else:
                    visit(node[key])
        elif isinstance(node, (list, tuple)):
            for item in node:
                visit(item)

    visit(cfg._cfg_dict)
    return count


def set_fold(cfg: Config, fold: int) -> int:
    """Replace ``fold<k>_`` in every ``ann_file`` / ``ann_file``-like string of ``cfg`` by ``fold{fold}_``.

    Args:
        cfg: Loaded config (modified in place).
        fold: Fold index written by ``tools/prepare_sartorius.py``.

    Returns:
        Number of strings changed.
    """
    fold = int(fold)
    pat = re.compile(r"fold\d+_")
    count = 0

    def visit(node: Any) -> None:
        nonlocal count
        if isinstance(node, Mapping):
            for key in list(node.keys()):
                val = node[key]
                if key in ("ann_file", "split") and isinstance(val, str) and pat.search(val):
                    node[key] = pat.sub(f"fold{fold}_", val)
                    count += 1
                else:
                    visit(val)
        elif isinstance(node, (list, tuple)):
            for item in node:
                visit(item)

    visit(cfg._cfg_dict)
    return count


def set_pretrained(cfg: Config, checkpoint: str | None) -> None:
    """Start the backbone of ``cfg`` from ``checkpoint`` (ImageNet weights), or from random weights for ``None``.

    Sets the top-level ``pretrained`` variable and ``model.backbone.init_cfg`` (mmseg's ``model.pretrained`` is
    cleared: the backbone's ``init_cfg`` carries the checkpoint).

    Args:
        cfg: Loaded config (modified in place).
        checkpoint: Checkpoint path or URL-like name (``torchvision://resnet50``), or ``None``.

    Raises:
        ValueError: If the config has no backbone, or its backbone normalises with GroupNorm while ImageNet
            checkpoints hold BatchNorm statistics (use the family's ``*_pretrained`` leaf).
    """
    model = cfg.get("model")
    if not isinstance(model, Mapping) or not isinstance(model.get("backbone"), Mapping):
        raise ValueError("pretrained=...: the config has no model.backbone to initialise")
    cfg.pretrained = checkpoint
    if "pretrained" in model:
        model["pretrained"] = None
    if checkpoint in (None, "", "None"):
        model["backbone"]["init_cfg"] = None
        cfg.pretrained = None
        return
    norm = (model["backbone"].get("norm_cfg") or {}).get("type")
    if norm == "GN":
        raise ValueError(
            f"pretrained={checkpoint}: this config's backbone uses GroupNorm (from-scratch set-up) but ImageNet "
            "checkpoints hold BatchNorm layers; use the family's *_pretrained leaf config"
        )
    model["backbone"]["init_cfg"] = ConfigDict(type="Pretrained", checkpoint=str(checkpoint))


def load_config(cfg_path: str | os.PathLike | Config, cfg_options: Mapping[str, Any] | None = None) -> Config:
    """Load a config file and apply ``--cfg-options``-style overrides.

    Args:
        cfg_path: Config file path (or an already loaded :class:`Config`, copied).
        cfg_options: Dotted-key overrides; ``data_root``, ``fold`` and ``pretrained`` get the special handling
            described in the module docstring.

    Returns:
        The config.

    Raises:
        FileNotFoundError: If the config file does not exist.
    """
    _patch_module2package()
    if isinstance(cfg_path, Config):
        cfg = copy.deepcopy(cfg_path)
    else:
        if not osp.isfile(cfg_path):
            raise FileNotFoundError(f"config file not found: {cfg_path}")
        cfg = Config.fromfile(str(cfg_path))
    opts = dict(cfg_options or {})
    data_root = opts.pop("data_root", None)
    fold = opts.pop("fold", None)
    has_pretrained = "pretrained" in opts
    pretrained = opts.pop("pretrained", None)
    if opts:
        cfg.merge_from_dict(opts)
    if data_root is not None:
        set_data_root(cfg, str(data_root))
    if fold is not None:
        set_fold(cfg, int(fold))
    if has_pretrained:
        set_pretrained(cfg, None if pretrained is None else str(pretrained))
    return cfg


def library_of(cfg: Config) -> str:
    """``'mmdet'``, ``'mmseg'`` or ``'mmengine'`` from the config's ``default_scope``.

    Raises:
        ValueError: For any other scope.
    """
    scope = cfg.get("default_scope", "mmdet")
    if scope not in _LIBRARIES:
        raise ValueError(f"config default_scope {scope!r} is not supported; expected one of {_LIBRARIES}")
    return scope


def register_library(cfg: Config) -> str:
    """Register all modules of the config's library and import its ``custom_imports``.

    ``'mmengine'`` (the classifiers) has no library modules to register: only ``custom_imports`` are imported.

    Returns:
        The library name.
    """
    lib = library_of(cfg)
    if lib == "mmdet":
        from mmdet.utils import register_all_modules
    elif lib == "mmseg":
        from mmseg.utils import register_all_modules
    else:
        register_all_modules = None
    if register_all_modules is not None:
        register_all_modules(init_default_scope=True)
    ci = cfg.get("custom_imports")
    if ci:
        from mmengine.utils import import_modules_from_strings

        import_modules_from_strings(**ci)
    return lib


def _setup_cpu_distributed(cfg: Config, launcher: str) -> None:
    """For ``launcher != 'none'`` without CUDA: gloo process group and DDP without device ids."""
    if launcher == "none" or torch.cuda.is_available():
        return
    import torch.distributed as dist

    cfg.setdefault("env_cfg", ConfigDict())
    cfg.env_cfg.setdefault("dist_cfg", ConfigDict())
    cfg.env_cfg.dist_cfg["backend"] = "gloo"
    if not dist.is_initialized():
        if launcher != "pytorch":
            raise ValueError(
                f"launcher {launcher!r} needs CUDA here; use --launcher pytorch (torchrun) on CPU"
            )
        dist.init_process_group(backend="gloo")
    if cfg.get("model_wrapper_cfg") is None:
        cfg.model_wrapper_cfg = dict(
            type="MMDistributedDataParallel", device_ids=None, broadcast_buffers=False
        )


def prepare_train_config(
    cfg_path: str | os.PathLike | Config,
    work_dir: str | os.PathLike | None = None,
    cfg_options: Mapping[str, Any] | None = None,
    resume: str | None = None,
    amp: bool = False,
    launcher: str = "none",
    auto_scale_lr: bool = False,
) -> Config:
    """The config a training Runner is built from (see :func:`build_runner` for the arguments)."""
    cfg = load_config(cfg_path, cfg_options)
    cfg.launcher = launcher
    if work_dir is not None:
        cfg.work_dir = str(work_dir)
    elif cfg.get("work_dir") is None:
        name = Path(cfg.filename).stem if cfg.filename else "run"
        cfg.work_dir = osp.join("work_dirs", name)
    vis = cfg.get("visualizer")
    if isinstance(vis, dict) and vis.get("name") == "visualizer":
        # a fixed name makes every Runner of one process share the first one's visualizer (and its log dir)
        vis.pop("name")
    if amp:
        if not torch.cuda.is_available():
            raise ValueError(
                "--amp needs a CUDA device (mmengine's AmpOptimWrapper); run without --amp on CPU"
            )
        if cfg.optim_wrapper.get("type", "OptimWrapper") != "AmpOptimWrapper":
            cfg.optim_wrapper.type = "AmpOptimWrapper"
            cfg.optim_wrapper.loss_scale = "dynamic"
    if auto_scale_lr:
        if "auto_scale_lr" not in cfg or "base_batch_size" not in cfg.auto_scale_lr:
            raise ValueError("--auto-scale-lr: the config has no auto_scale_lr.base_batch_size")
        cfg.auto_scale_lr.enable = True
    if resume == "auto":
        cfg.resume = True
        cfg.load_from = None
    elif resume:
        if not osp.isfile(resume):
            raise FileNotFoundError(f"--resume checkpoint not found: {resume}")
        cfg.resume = True
        cfg.load_from = str(resume)
    _setup_cpu_distributed(cfg, launcher)
    return cfg


def build_runner(
    cfg_path: str | os.PathLike | Config,
    work_dir: str | os.PathLike | None = None,
    cfg_options: Mapping[str, Any] | None = None,
    resume: str | None = None,
    amp: bool = False,
    launcher: str = "none",
    auto_scale_lr: bool = False,
):
    """Build the mmengine Runner for training an mmdet or mmseg config.

    Args:
        cfg_path: Config file (or loaded config).
        work_dir: Output directory (default: the config's ``work_dir`` or ``work_dirs/<config name>``).
        cfg_options: ``--cfg-options`` overrides (``data_root`` and ``fold`` handled specially).
        resume: ``None`` (fresh run), ``'auto'`` (latest checkpoint of ``work_dir``) or a checkpoint path.
        amp: Mixed precision (``AmpOptimWrapper``; CUDA only).
        launcher: ``'none'``, ``'pytorch'`` (torchrun), ``'slurm'`` or ``'mpi'``.
        auto_scale_lr: Scale the LR by total batch / ``auto_scale_lr.base_batch_size``.

    Returns:
        The Runner (call ``.train()``).
    """
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    cfg = prepare_train_config(cfg_path, work_dir, cfg_options, resume, amp, launcher, auto_scale_lr)
    register_library(cfg)
    if "runner_type" in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)


def build_test_runner(
    cfg_path: str | os.PathLike | Config,
    checkpoint: str | os.PathLike,
    work_dir: str | os.PathLike | None = None,
    cfg_options: Mapping[str, Any] | None = None,
    launcher: str = "none",
):
    """Build the Runner that evaluates ``checkpoint`` on the config's test set (call ``.test()``).

    Raises:
        FileNotFoundError: If the checkpoint does not exist.
    """
    if not osp.isfile(checkpoint):
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    cfg = prepare_train_config(cfg_path, work_dir, cfg_options, None, False, launcher)
    cfg.load_from = str(checkpoint)
    cfg.resume = False
    register_library(cfg)
    from mmengine.runner import Runner

    return Runner.from_cfg(cfg)
