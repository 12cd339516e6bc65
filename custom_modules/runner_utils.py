"""Runner construction shared by training, testing and inference.

One entry point for mmdet, mmseg and plain-mmengine configs (the classifiers of ``custom_modules.cls``): the library
is picked from the config's ``default_scope`` and its modules are registered before the Runner is built. Configs
are read by :func:`custom_modules.config.load_config` (``data_root`` / ``fold`` / ``pretrained`` overrides).

* ``launcher='pytorch'`` on a machine without CUDA initialises a ``gloo`` process group and wraps the model in
  DDP without device ids (mmengine assumes CUDA there).
* torch >= 2.6 checkpoints: onedl-mmengine loads its own checkpoints with ``weights_only`` and an allow-list, so
  resume and ``load_from`` work without ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``.
"""

from __future__ import annotations

import argparse
import os
import os.path as osp
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from mmengine.config import Config, ConfigDict, DictAction

from custom_modules.config import library_of, load_config

__all__ = [
    "register_library",
    "prepare_train_config",
    "build_runner",
    "build_test_runner",
    "add_runner_args",
    "apply_local_rank",
]


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
