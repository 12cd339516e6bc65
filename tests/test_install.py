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


def test_ensemble_never_imports_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, importlib, pkgutil, ensemble\n"
        "for m in pkgutil.iter_modules(ensemble.__path__):\n"
        "    importlib.import_module('ensemble.' + m.name)\n"
        "bad = [k for k in ('torch', 'mmcv', 'mmdet', 'mmengine', 'mmseg') if k in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"ensemble imports {out.stdout.strip()}"
