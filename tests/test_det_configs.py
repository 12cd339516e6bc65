"""Every instance (mmdet) config builds its model and datasets on tiny data; dense-image settings hold."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("mmdet")

from custom_modules.det.hooks import ProgressiveResizeHook, interpolate_range  # noqa: E402
from custom_modules.runner_utils import load_config, register_library, set_data_root, set_fold  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DET_CONFIGS = sorted(
    str(p.relative_to(REPO)) for d in ("yolox", "mask_rcnn") for p in (REPO / "configs" / d).glob("*.py")
)
DATASET_CONFIGS = sorted(
    str(p.relative_to(REPO)) for p in (REPO / "configs/_base_/datasets").glob("sartorius_instance*.py")
)


def _backbone_init_cfgs(cfg) -> list:
    return [cfg.model.backbone.get("init_cfg", "missing")]


@pytest.mark.parametrize("config", DET_CONFIGS)
def test_config_builds_model_and_datasets(config: str, tiny_sartorius: Path) -> None:
    from mmdet.registry import DATASETS, MODELS

    cfg = load_config(REPO / config, {"data_root": str(tiny_sartorius)})
    assert register_library(cfg) == "mmdet"
    assert _backbone_init_cfgs(cfg) == [None], "no pretrained weights exist here: init_cfg must be None"
    model = MODELS.build(cfg.model)
    assert sum(p.numel() for p in model.parameters()) > 1e5
    tc = cfg.model.test_cfg
    if "rcnn" in tc:  # two-stage: enough proposals and detections for ~800 cells per image
        assert tc.rcnn.max_per_img >= 1000 and tc.rpn.max_per_img >= 2000 and tc.rpn.nms_pre >= 2000
        assert tc.rcnn.mask_thr_binary == 0.5
        assert cfg.model.train_cfg.rpn_proposal.max_per_img >= 500
        assert cfg.model.roi_head.bbox_roi_extractor.roi_layer.type == "RoIAlign"
    else:
        assert tc.max_per_img >= 1000
        assert cfg.model.bbox_head.type == "YOLOXHead" and cfg.model.backbone.act_cfg.type == "Swish"
        hooks = {h.type for h in cfg.custom_hooks}
        assert {"ProgressiveResizeHook", "EMAHook"} <= hooks
        if "demo" not in config:
            assert "YOLOXModeSwitchHook" in hooks
    train = DATASETS.build(cfg.train_dataloader.dataset)
    val = DATASETS.build(cfg.val_dataloader.dataset)
    assert len(train) > 0 and len(val) > 0
    item = val[0]
    meta = item["data_samples"].metainfo
    assert {"instances", "kaggle_id", "cell_type"} <= set(meta)
    assert item["inputs"].shape[0] == 3  # grayscale PNG read as 3 channels
    assert str(tiny_sartorius) in meta["img_path"]
    sample = train[0]
    assert sample["inputs"].ndim == 3 and len(sample["data_samples"].gt_instances) > 0


@pytest.mark.parametrize("config", DATASET_CONFIGS)
def test_dataset_base_config(config: str, tiny_sartorius: Path) -> None:
    from mmdet.registry import DATASETS

    cfg = load_config(REPO / config, {"data_root": str(tiny_sartorius)})
    cfg.default_scope = "mmdet"
    cfg.custom_imports = dict(imports=["custom_modules.det"], allow_failed_imports=False)
    register_library(cfg)
    ds = DATASETS.build(cfg.train_dataloader.dataset)
    assert ds.metainfo["classes"] == ("shsy5y", "astro", "cort")
    s = ds[0]
    inst = s["data_samples"].gt_instances
    assert len(inst) == len(inst.masks) > 0 and int(inst.labels.max()) <= 2
    info = ds.get_data_info(0)
    assert info["kaggle_id"] and info["cell_type"] in ("shsy5y", "astro", "cort")
    assert Path(info["img_path"]).is_file()


def test_data_root_and_fold_overrides_reach_nested_datasets() -> None:
    cfg = load_config(REPO / "configs/yolox/yolox_s_8xb8-300e_sartorius.py")
    assert set_data_root(cfg, "/x/y") >= 3
    assert cfg.train_dataloader.dataset.dataset.data_root == "/x/y/"
    assert cfg.val_dataloader.dataset.data_root == "/x/y/"
    assert set_fold(cfg, 3) >= 2
    assert cfg.train_dataloader.dataset.dataset.ann_file == "annotations/fold3_train.json"
    assert cfg.test_dataloader.dataset.ann_file == "annotations/fold3_val.json"
    cfg2 = load_config(
        REPO / "configs/mask_rcnn/mask-rcnn_r50_fpn_1xb2-20e_sartorius.py", {"fold": 1, "data_root": "d"}
    )
    assert cfg2.train_dataloader.dataset.ann_file == "annotations/fold1_train.json"
    assert cfg2.train_dataloader.dataset.data_root == "d/"


def test_progressive_resize_grows_range() -> None:
    assert interpolate_range((320, 480), (480, 800), 0.0) == (320, 480)
    assert interpolate_range((320, 480), (480, 800), 0.5) == (400, 640)
    assert interpolate_range((320, 480), (480, 800), 7.0) == (480, 800)

    from mmdet.models.data_preprocessors import BatchSyncRandomResize

    class _Pre:
        batch_augments = [BatchSyncRandomResize((480, 800), interval=10, size_divisor=32)]

    class _Model:
        data_preprocessor = _Pre()

    class _Runner:
        model = _Model()
        train_dataloader = list(range(10))  # 10 iterations per epoch
        iter = 0
        logger = None

    hook = ProgressiveResizeHook(start_size_range=(320, 480), warmup_epochs=2)
    runner = _Runner()
    hook.before_train(runner)
    assert hook.current_ranges() == [(320, 480)]
    runner.iter = 10
    hook.before_train_iter(runner, 0)
    assert hook.current_ranges() == [(384, 640)]  # halfway: (400, 640) in multiples of 32 (12.5 -> 12)
    runner.iter = 25
    hook.before_train_iter(runner, 0)
    assert hook.current_ranges() == [(480, 800)]
    with pytest.raises(ValueError):
        ProgressiveResizeHook(start_size_range=(500, 300))
