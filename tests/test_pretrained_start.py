"""COCO / ADE20K starts (configs/recipes/sartorius_gpu_coco.yaml) without network: checkpoints of the same
architectures with COCO-sized (80 classes) or ADE20K-sized (150) heads, built and saved here, load into our configs
with exactly the class-dependent keys re-initialized and every other key loaded (PretrainedStartHook, the hook the
recipe adds to every training with a load_from)."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("mmdet")

import torch  # noqa: E402

from custom_modules.checkpoints import REPORT_FILE, CheckpointMismatch, PretrainedStartHook, build_model  # noqa: E402
from custom_modules.config import load_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _keys(*names: str) -> set[str]:
    return {f"{n}.{p}" for n in names for p in ("weight", "bias")}


CASES = {
    "yolox": (
        "configs/yolox/yolox_s_8xb8-300e_sartorius.py",
        80,
        _keys(*(f"bbox_head.multi_level_conv_cls.{i}" for i in range(3))),
    ),
    "mask_rcnn": (
        "configs/mask_rcnn/mask-rcnn_r50_fpn_pretrained_1xb2-20e_sartorius.py",
        80,
        _keys("roi_head.bbox_head.fc_cls", "roi_head.bbox_head.fc_reg", "roi_head.mask_head.conv_logits"),
    ),
    "upernet": (
        "configs/upernet/upernet_r50_pretrained_4xb4-40k_sartorius-704x520.py",
        150,
        _keys("decode_head.conv_seg", "auxiliary_head.conv_seg"),
    ),
}


def _with_classes(cfg, n: int):
    cfg = copy.deepcopy(cfg)

    def visit(node) -> None:
        if isinstance(node, dict):
            for k in node:
                if k == "num_classes":
                    node[k] = n
                else:
                    visit(node[k])
        elif isinstance(node, list):
            for v in node:
                visit(v)

    visit(cfg.model)
    return cfg


def _coco_checkpoint(cfg, n_classes: int, path: Path) -> dict[str, torch.Tensor]:
    """The architecture with an n-class head, random weights, saved in mmengine's checkpoint format."""
    torch.manual_seed(1)
    model = build_model(_with_classes(cfg, n_classes))
    for p in model.parameters():  # distinguishable from any fresh initialisation
        torch.nn.init.normal_(p, 3.0, 0.01)
    sd = model.state_dict()
    torch.save(
        {"meta": {"dataset_meta": {"classes": [f"c{i}" for i in range(n_classes)]}}, "state_dict": sd}, path
    )
    return sd


def _start(cfg, ckpt_path: Path, work_dir: Path, strict: bool = True):
    """What the Runner does with load_from: init_weights, after_load_checkpoint hooks, non-strict load."""
    from mmengine.runner.checkpoint import _load_checkpoint, _load_checkpoint_to_model

    model = build_model(cfg)
    model.init_weights()
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    cfg.load_from = str(ckpt_path)
    runner = SimpleNamespace(
        model=model, cfg=cfg, work_dir=str(work_dir), logger=logging.getLogger("test"), _resume=False
    )
    ckpt = _load_checkpoint(str(ckpt_path), map_location="cpu")
    PretrainedStartHook(strict=strict).after_load_checkpoint(runner, ckpt)
    _load_checkpoint_to_model(model, ckpt, strict=False)
    return model, fresh


@pytest.mark.parametrize("name", list(CASES))
def test_coco_start_reinitializes_exactly_the_class_layers(name: str, tmp_path: Path) -> None:
    config, n_classes, expected = CASES[name]
    cfg = load_config(REPO / config, {"pretrained": None})
    src = _coco_checkpoint(cfg, n_classes, tmp_path / "coco.pth")
    model, fresh = _start(cfg, tmp_path / "coco.pth", tmp_path)
    report = json.loads((tmp_path / REPORT_FILE).read_text())
    assert set(report["reinitialized"]) == expected
    assert report["missing"] == [] and report["unexpected"] == [] and report["mismatched"] == []
    sd = model.state_dict()
    assert set(report["loaded"]) == set(sd) - expected
    for k, v in sd.items():
        if k in expected:
            assert torch.equal(v, fresh[k]), k  # its own initialisation, nothing of the checkpoint
            assert v.shape != src[k].shape
        else:
            assert torch.equal(v, src[k]), k


def test_norm_layers_must_match_the_checkpoint(tmp_path: Path) -> None:
    """The COCO Mask R-CNN (BatchNorm) into the from-scratch GroupNorm config: refused, naming the leaf to use."""
    bn = load_config(REPO / CASES["mask_rcnn"][0], {"pretrained": None})
    _coco_checkpoint(bn, 80, tmp_path / "coco.pth")
    gn = load_config(REPO / "configs/mask_rcnn/mask-rcnn_r50_fpn_1xb2-20e_sartorius.py")
    with pytest.raises(CheckpointMismatch, match=r"missing key\(s\).*_pretrained leaf"):
        _start(gn, tmp_path / "coco.pth", tmp_path)


def test_coco_recipe_plan_adds_the_hook_and_no_backbone_file() -> None:
    from workflow.recipe.config import load_recipe
    from workflow.recipe.plan import PRETRAINED_START_HOOK, build_plan

    recipe = load_recipe(REPO / "configs/recipes/sartorius_gpu_coco.yaml")
    urls = {m.name: m.load_from for m in recipe.models}
    assert urls["yolox"].startswith(
        "https://download.openmmlab.com/mmdetection/v2.0/yolox/yolox_s_8x8_300e_coco/"
    )
    assert (
        "mask_rcnn_r50_fpn_1x_coco" in urls["mask_rcnn"]
        and "upernet_r50_512x512_160k_ade20k" in urls["upernet"]
    )
    plan = build_plan(recipe, data_root=REPO / "tests")
    for name in ("yolox", "mask_rcnn", "upernet"):
        cmd = [str(a) for a in plan.step(f"train/{name}/fold0").cmd]
        assert f"default_hooks.pretrained_start.type={PRETRAINED_START_HOOK}" in cmd
        assert f"load_from={urls[name]}" in cmd
    assert "pretrained=None" in [str(a) for a in plan.step("train/mask_rcnn/fold0").cmd]
