"""Every instance (mmdet) config builds its model and datasets on tiny data; dense-image settings hold."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("mmdet")

from custom_modules.config import load_config, set_data_root, set_fold  # noqa: E402
from custom_modules.det.hooks import ProgressiveResizeHook, interpolate_range  # noqa: E402
from custom_modules.runner_utils import register_library  # noqa: E402

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

    opts = {"data_root": str(tiny_sartorius)}
    if "livecell" in config:  # LIVECell pretraining: its own annotation files; built here on the tiny folds
        default = load_config(REPO / config)
        train = default.train_dataloader.dataset
        assert train.get("dataset", train).ann_file == "annotations/livecell_coco_train.json"
        assert default.val_dataloader.dataset.ann_file == "annotations/livecell_coco_val.json"
        nested = "dataset." if "dataset" in train else ""
        opts[f"train_dataloader.dataset.{nested}ann_file"] = "annotations/fold0_train.json"
        opts["val_dataloader.dataset.ann_file"] = "annotations/fold0_val.json"
    cfg = load_config(REPO / config, opts)
    assert register_library(cfg) == "mmdet"
    if "pretrained" in config:  # ImageNet start through the `pretrained` variable (a local file by default)
        assert cfg.model.backbone.init_cfg == {"type": "Pretrained", "checkpoint": cfg.pretrained}
        assert "://" not in cfg.pretrained, "the default must never download"
    else:
        assert _backbone_init_cfgs(cfg) == [None], "from scratch by default: init_cfg must be None"
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
        assert "EMAHook" in hooks
        if "-cpu_" not in config:
            assert {"ProgressiveResizeHook", "YOLOXModeSwitchHook"} <= hooks
        else:  # CPU leaves (demo, real): a few hundred iterations: no image mixing, one input size, fixed seed
            assert {t.type for t in cfg.train_pipeline}.isdisjoint({"Mosaic", "MixUp", "RandomAffine"})
            assert cfg.model.data_preprocessor.batch_augments is None and cfg.randomness.seed == 0
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


def test_from_scratch_mask_rcnn_uses_group_norm_and_small_anchors() -> None:
    cfg = load_config(REPO / "configs/mask_rcnn/mask-rcnn_r50_fpn_1xb2-20e_sartorius.py")
    gn = {"type": "GN", "num_groups": 32, "requires_grad": True}
    assert cfg.model.backbone.norm_cfg == gn and cfg.model.neck.norm_cfg == gn
    assert cfg.model.roi_head.bbox_head.norm_cfg == gn and cfg.model.roi_head.mask_head.norm_cfg == gn
    assert cfg.model.rpn_head.anchor_generator.scales == [4]
    pre = load_config(REPO / "configs/mask_rcnn/mask-rcnn_r50_fpn_pretrained_1xb2-20e_sartorius.py")
    assert pre.model.backbone.norm_cfg.type == "BN" and pre.model.backbone.norm_eval is True
    with pytest.raises(ValueError, match="GroupNorm"):
        load_config(
            REPO / "configs/mask_rcnn/mask-rcnn_r50_fpn_1xb2-20e_sartorius.py", {"pretrained": "x.pth"}
        )


def _check_pretrained_loads(config: str, tmp_path: Path, extra: dict | None = None) -> None:
    """Save a backbone's weights, build the config with pretrained=<that file>: every backbone tensor loads."""
    import torch
    from mmdet.registry import MODELS

    cfg = load_config(REPO / config, {**(extra or {}), "pretrained": None})
    register_library(cfg)
    src = MODELS.build(cfg.model).backbone
    torch.manual_seed(1)
    with torch.no_grad():
        for t in src.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.randn_like(t))
    ckpt = tmp_path / "backbone.pth"
    torch.save(src.state_dict(), ckpt)
    cfg = load_config(REPO / config, {**(extra or {}), "pretrained": str(ckpt)})
    assert cfg.model.backbone.init_cfg == {"type": "Pretrained", "checkpoint": str(ckpt)}
    model = MODELS.build(cfg.model)
    model.init_weights()
    loaded, saved = model.backbone.state_dict(), src.state_dict()
    assert set(loaded) == set(saved)
    mismatched = [k for k in saved if not torch.equal(loaded[k], saved[k])]
    assert not mismatched, f"not loaded from the checkpoint: {mismatched[:5]}"
    # only the backbone comes from the checkpoint
    assert not any(torch.equal(p, saved.get(k.removeprefix("backbone."), p * 0 + 1e9)) for k, p in
                   model.state_dict().items() if not k.startswith("backbone.") and p.is_floating_point())  # fmt: skip


def test_pretrained_switch_mask_rcnn(tmp_path: Path) -> None:
    _check_pretrained_loads(
        "configs/mask_rcnn/mask-rcnn_r50_fpn_pretrained_1xb2-20e_sartorius.py",
        tmp_path,
        {"model.backbone.depth": 18, "model.neck.in_channels": [64, 128, 256, 512]},
    )


def test_pretrained_switch_yolox(tmp_path: Path) -> None:
    _check_pretrained_loads("configs/yolox/yolox_tiny_demo-cpu_sartorius.py", tmp_path)


def _hand_coco(tmp_path: Path) -> Path:
    """Three boxes of known sizes per class on one 520x704 image."""
    import json

    boxes = {1: [(100, 100, 10, 10), (200, 50, 16, 16), (300, 300, 40, 20)],
             2: [(50, 400, 64, 64), (400, 100, 100, 50), (600, 400, 30, 90)],
             3: [(10, 10, 12, 14), (500, 200, 15, 15), (650, 20, 20, 12)]}  # fmt: skip
    anns = [
        {"id": i, "image_id": 1, "category_id": c, "bbox": list(b), "area": b[2] * b[3], "iscrowd": 0}
        for i, (c, b) in enumerate(((c, b) for c, bs in boxes.items() for b in bs), 1)
    ]
    coco = {
        "images": [{"id": 1, "file_name": "train/a.png", "height": 520, "width": 704}],
        "annotations": anns,
        "categories": [{"id": 1, "name": "shsy5y"}, {"id": 2, "name": "astro"}, {"id": 3, "name": "cort"}],
    }
    p = tmp_path / "hand.json"
    p.write_text(json.dumps(coco))
    return p


def test_box_report_on_hand_made_dataset(tmp_path: Path) -> None:
    import numpy as np
    import torch
    from mmdet.models.task_modules.prior_generators import AnchorGenerator
    from mmdet.structures.bbox import bbox_overlaps

    from custom_modules.det.box_stats import anchor_shapes, best_anchor_iou, box_report, load_boxes

    ann = _hand_coco(tmp_path)
    demo = "configs/mask_rcnn/mask-rcnn_r18_fpn_demo-cpu_sartorius.py"
    rep = box_report(ann, [demo, "configs/yolox/yolox_tiny_demo-cpu_sartorius.py"])
    s = rep["sizes"]
    assert s["shsy5y"]["count"] == 3 and s["all"]["count"] == 9
    assert s["shsy5y"]["sqrt_area"]["p50"] == pytest.approx(16.0)
    assert s["cort"]["sqrt_area"]["p50"] == pytest.approx(15.0)  # sqrt(168), 15, sqrt(240)
    assert s["astro"]["width"]["p50"] == pytest.approx(64.0)
    # parity with mmdet: every anchor of the image (AnchorGenerator.grid_priors) vs the exact grid shortcut
    cfg = load_config(REPO / demo)
    gen_cfg = dict(cfg.model.rpn_head.anchor_generator)
    gen = AnchorGenerator(**{k: v for k, v in gen_cfg.items() if k != "type"})
    strides = gen_cfg["strides"]
    anchors = torch.cat(gen.grid_priors([(520 // s + 2, 704 // s + 2) for s in strides], device="cpu"))
    boxes, _, labels = load_boxes(ann)
    xyxy = torch.as_tensor(np.c_[boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], dtype=torch.float32)
    brute = bbox_overlaps(xyxy, anchors).max(dim=1).values.numpy()
    fast = best_anchor_iou(boxes, anchor_shapes(gen_cfg))
    np.testing.assert_allclose(fast, brute, atol=1e-5)
    res = rep["configs"][0]
    assert res["input_scale"] == pytest.approx(1.0)
    assert res["unmatched_at_0.5"]["all"] == pytest.approx(float(np.mean(brute < 0.5)))
    assert res["unmatched_at_0.5"]["cort"] == pytest.approx(float(np.mean(brute[labels == 2] < 0.5)))
    assert "best_scale" in res["suggestion"]
    yolox = rep["configs"][1]
    assert yolox["kind"] == "anchor_free" and yolox["finest_stride"] == 8
    assert yolox["below_one_stride"]["all"] == pytest.approx(0.0)  # shortest side 10 px >= stride 8


def test_box_report_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import runpy

    main = runpy.run_path(str(REPO / "tools/analyze_boxes.py"), run_name="x")["main"]
    ann = _hand_coco(tmp_path)
    assert main(["--ann-file", str(ann), "--out", str(tmp_path / "o"),
                 "--config", "configs/mask_rcnn/mask-rcnn_r50_fpn_1xb2-20e_sartorius.py"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "| shsy5y | 3 |" in out and "no anchor at IoU >= 0.5" in out
    assert (tmp_path / "o" / "box_report.json").is_file() and (tmp_path / "o" / "box_sizes.png").is_file()
    assert main(["--ann-file", str(tmp_path / "missing.json")]) == 2


def test_sartorius_metric_coco_only_every_n_and_at_the_end() -> None:
    import numpy as np
    from mmengine.logging import MessageHub

    from celldata.rle import coco_rle_encode
    from custom_modules.det.metrics import SartoriusMetric

    mask = np.zeros((20, 30), bool)
    mask[2:8, 3:9] = True
    sample = {
        "ori_shape": (20, 30), "kaggle_id": "a", "cell_type": "shsy5y",
        "instances": [{"mask": coco_rle_encode(mask), "bbox_label": 0, "ignore_flag": 0}],
        "pred_instances": {"bboxes": np.array([[3, 2, 9, 8]], np.float32), "scores": np.array([0.9], np.float32),
                           "labels": np.array([0]), "masks": mask[None]},
    }  # fmt: skip
    hub = MessageHub.get_instance("test_coco_interval")
    hub.update_info("loop_stage", "val")
    hub.update_info("max_iters", 100)
    metric = SartoriusMetric(coco_interval=2)
    seen = []
    for it in (9, 19, 29, 99):
        hub.update_info("iter", it)
        metric.process({}, [sample])
        out = metric.evaluate(1)
        assert out["sartorius/score"] == pytest.approx(1.0)
        seen.append("sartorius/segm_mAP" in out)
    assert seen == [False, True, False, True]  # every 2nd evaluation, and the last one of training
    hub.update_info("loop_stage", "test")
    metric.process({}, [sample])
    assert "sartorius/bbox_mAP" in metric.evaluate(1)
