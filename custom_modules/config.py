"""The one config loader of the stack: an OpenMMLab config file with ``--cfg-options``-style overrides.

Used wherever a config is read (training, testing, inference, the recipe, the search, compression, the bundle,
the studies). Torch-free: it imports only ``mmengine.config``, so the recipe can read configs without loading a
framework. Extras over plain ``Config.fromfile`` + ``merge_from_dict``:

* ``data_root=DIR`` replaces the data root in every dataset of the config (mmengine only changes the top-level
  variable, which the dataset dicts copied when the file was parsed);
* ``fold=K`` switches ``fold0_`` annotation/split files to ``fold{K}_``;
* ``pretrained=CKPT`` (a local file or e.g. ``torchvision://resnet50``) makes the backbone start from those
  ImageNet weights (``init_cfg=dict(type='Pretrained', checkpoint=CKPT)``; ``pretrained=None`` turns it off);
* ``load_from=CKPT`` (a whole COCO / LIVECell checkpoint) is an ordinary top-level key.

``mmseg::`` base configs resolve with the onedl fork (mmengine maps the scope ``mmseg`` to the package name
``mmsegmentation``; :func:`patch_scope_packages` is the one place that fixes it).
"""

from __future__ import annotations

import copy
import os
import os.path as osp
import re
from collections.abc import Mapping
from typing import Any

import mmengine.config.utils as _cfg_utils
from mmengine.config import Config, ConfigDict

__all__ = [
    "LIBRARIES",
    "load_config",
    "library_of",
    "patch_scope_packages",
    "set_data_root",
    "set_fold",
    "set_pretrained",
]

LIBRARIES = ("mmdet", "mmseg", "mmengine")


def patch_scope_packages() -> None:
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


def load_config(
    cfg_path: str | os.PathLike | Config,
    cfg_options: Mapping[str, Any] | None = None,
    *,
    import_custom_modules: bool = True,
) -> Config:
    """Load a config file and apply ``--cfg-options``-style overrides.

    Args:
        cfg_path: Config file path (or an already loaded :class:`Config`, copied).
        cfg_options: Dotted-key overrides; ``data_root``, ``fold`` and ``pretrained`` get the special handling
            described in the module docstring.
        import_custom_modules: Import the config's ``custom_imports`` while parsing (False: read the file only,
            nothing registered and no framework imported, as the recipe and the box report do).

    Returns:
        The config.

    Raises:
        FileNotFoundError: If the config file does not exist.
    """
    patch_scope_packages()
    if isinstance(cfg_path, Config):
        cfg = copy.deepcopy(cfg_path)
    else:
        if not osp.isfile(cfg_path):
            raise FileNotFoundError(f"config file not found: {cfg_path}")
        cfg = Config.fromfile(str(cfg_path), import_custom_modules=import_custom_modules)
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
    if scope not in LIBRARIES:
        raise ValueError(f"config default_scope {scope!r} is not supported; expected one of {LIBRARIES}")
    return scope
