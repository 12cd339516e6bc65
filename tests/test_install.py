"""The install gives a working OpenMMLab stack: compiled mmcv ops, mmdet and mmseg models, on current torch."""

from __future__ import annotations

import importlib.metadata as md


def test_mmcv_ops_are_compiled_and_run() -> None:
    import torch
    from mmcv.ops import RoIAlign, batched_nms, nms

    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [50.0, 50.0, 60.0, 60.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    _, keep = nms(boxes, scores, iou_threshold=0.5)
    assert keep.tolist() == [0, 2]
    _, keep = batched_nms(boxes, scores, torch.tensor([0, 1, 0]), dict(type="nms", iou_threshold=0.5))
    assert sorted(keep.tolist()) == [0, 1, 2]
    feat = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4)
    rois = torch.tensor([[0.0, 0.0, 0.0, 3.0, 3.0]])
    out = RoIAlign((2, 2), spatial_scale=1.0, sampling_ratio=1, aligned=False)(feat, rois)
    assert out.shape == (1, 1, 2, 2)
    assert torch.isfinite(out).all()


def test_mmdet_and_mmseg_models_import() -> None:
    import mmdet.models  # noqa: F401
    import mmseg.models  # noqa: F401
    from mmdet.registry import MODELS as DET_MODELS
    from mmseg.registry import MODELS as SEG_MODELS

    assert DET_MODELS.get("MaskRCNN") is not None and DET_MODELS.get("YOLOX") is not None
    assert SEG_MODELS.get("EncoderDecoder") is not None and SEG_MODELS.get("UPerHead") is not None


def test_forks_not_originals_are_installed() -> None:
    dists = {d.metadata["Name"].lower() for d in md.distributions()}
    for fork in ("onedl-mmengine", "onedl-mmcv", "onedl-mmdetection", "onedl-mmsegmentation"):
        assert fork in dists, f"{fork} is not installed"
    for original in ("mmcv", "mmcv-full", "mmdet", "mmengine", "mmsegmentation"):
        assert original not in dists, f"the original {original} is installed beside the forks"


def _imported_after(code: str) -> set[str]:
    import subprocess
    import sys

    code += "\nimport sys; print(','.join(sorted({m.split('.')[0] for m in sys.modules})))\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    return set(out.stdout.strip().splitlines()[-1].split(","))


FRAMEWORKS = {"torch", "mmcv", "mmdet", "mmengine", "mmseg"}


def test_data_and_ensemble_packages_never_import_torch_or_openmmlab() -> None:
    """Every module of celldata/ and ensemble/ imports without torch or OpenMMLab (they run on cached data)."""
    code = (
        "import importlib, pkgutil, celldata, ensemble\n"
        "for pkg in (celldata, ensemble):\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        importlib.import_module(m.name)\n"
    )
    bad = _imported_after(code) & FRAMEWORKS
    assert not bad, f"celldata/ensemble import {sorted(bad)}"


def test_layers_import_only_downward() -> None:
    """tools/ -> workflow/ -> custom_modules/ -> ensemble/ -> celldata/: no module imports a layer above its own."""
    import ast
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    above = {
        "celldata": {"ensemble", "custom_modules", "workflow", "tools"},
        "ensemble": {"custom_modules", "workflow", "tools"},
        "custom_modules": {"workflow", "tools"},
        "workflow": {"tools"},
    }
    bad = []
    for pkg, forbidden in above.items():
        for path in sorted((repo / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                bad += [f"{path.relative_to(repo)}: {n}" for n in names if n.split(".")[0] in forbidden]
    assert not bad, "imports of a higher layer:\n" + "\n".join(bad)


def test_mmdet_config_run_does_not_import_mmseg() -> None:
    """A detector config registers custom_modules.det only: building its model and dataset never imports mmseg."""
    code = (
        "from custom_modules.config import load_config\nfrom custom_modules.runner_utils import register_library\n"
        "cfg = load_config('configs/mask_rcnn/mask-rcnn_r18_fpn_demo-cpu_sartorius.py')\n"
        "assert register_library(cfg) == 'mmdet'\n"
        "from mmdet.registry import MODELS, DATASETS, METRICS\n"
        "MODELS.build(cfg.model)\n"
        "assert DATASETS.get('SartoriusCocoDataset') is not None and METRICS.get('SartoriusMetric') is not None\n"
    )
    mods = _imported_after(code)
    assert "mmdet" in mods and "mmseg" not in mods
    # (the other direction cannot hold: mmseg's own Mask2Former head imports mmdet when it is installed)


def test_no_import_path_manipulation() -> None:
    """No tracked .py file edits the import path by hand (insert/append/extend on sys.path, assigning to it or an
    item of it, site.addsitedir): the project is installed, and tests reach their helpers through pytest's
    ``pythonpath`` setting in pyproject.toml."""
    import re
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    edit = re.compile(
        r"\bsys\s*\.\s*path\s*(?:\.\s*(?:insert|append|extend)\s*\(|\[[^\]]*\]\s*=(?!=)|\+=|=(?!=))"
        r"|\bsite\s*\.\s*addsitedir\s*\("
    )
    # the pattern catches what it is meant to (written split, so this file does not match itself)
    caught = [
        "sys.path" + s for s in (".insert(0, p)", ".append(p)", ".extend([p])", "[:0] = [p]", " += [p]")
    ]
    assert all(edit.search(s) for s in caught + ["site" + ".addsitedir(p)"])
    assert not any(edit.search(s) for s in ("print(sys.path)", "sys.path[0] == p", "p in sys.path"))
    files = subprocess.run(
        ["git", "ls-files", "-z", "--", "*.py"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.split("\0")
    bad = [
        f"{f}:{n}: {line.strip()}"
        for f in files
        if f and (repo / f).is_file()
        for n, line in enumerate((repo / f).read_text(errors="replace").splitlines(), 1)
        if edit.search(line)
    ]
    assert not bad, (
        "sys.path manipulation (the project is installed; tests use pytest's pythonpath):\n" + "\n".join(bad)
    )
