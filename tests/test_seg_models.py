"""mmseg configs of the stack (UPerNet, SE-U-Net variants): every config builds its model and datasets; each
family runs one training iteration, validation and whole-image inference on the tiny synthetic dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("mmseg")

from mmengine.registry import init_default_scope  # noqa: E402
from mmengine.runner import Runner  # noqa: E402
from mmseg.registry import DATASETS, METRICS, MODELS  # noqa: E402

import custom_modules.seg  # noqa: E402, F401
from custom_modules.config import load_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SEG_CONFIGS = sorted(
    str(p.relative_to(REPO)) for d in ("configs/upernet", "configs/unet") for p in (REPO / d).glob("*.py")
)
DEMO_CONFIGS = [c for c in SEG_CONFIGS if "demo" in c]


@pytest.fixture(autouse=True)
def _single_thread():
    """The test machine is shared: one intra-op thread keeps these tests fast and predictable."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _split_ids(root: Path, name: str) -> list[str]:
    return [s.strip() for s in (root / "splits" / name).read_text().splitlines() if s.strip()]


def test_config_list_is_complete() -> None:
    names = {Path(c).name for c in SEG_CONFIGS}
    assert "upernet_r50_4xb4-40k_sartorius-704x520.py" in names
    for variant in (
        "se-unet_c64-s4",
        "se-unet-fre_c64-s4",
        "se-unet_c64-s3",
        "se-unet-ds_c64-s4",
        "se-unet-dropout",
    ):
        assert any(n.startswith(variant) for n in names), variant
    assert len(DEMO_CONFIGS) == 2


@pytest.mark.parametrize("config", SEG_CONFIGS)
def test_config_builds_model_and_datasets(config: str, tiny_sartorius: Path) -> None:
    cfg = load_config(REPO / config, {"data_root": str(tiny_sartorius)})
    assert cfg.default_scope == "mmseg"
    assert cfg.model.test_cfg.mode == "whole"
    init_default_scope("mmseg")
    model = MODELS.build(cfg.model)
    boundary = "boundary" in config
    # the FRE study's leaves (``-cell-``) segment cell vs background; the others the three cell types
    types = ("cell",) if "_sartorius-cell-" in config else ("shsy5y", "astro", "cort")
    classes = ("background", *types) + (("boundary",) if boundary else ())
    assert model.decode_head.num_classes == len(classes)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params > 10_000
    for split, loader in (("fold0_train.txt", cfg.train_dataloader), ("fold0_val.txt", cfg.val_dataloader)):
        ds = DATASETS.build(loader.dataset)
        assert len(ds) == len(_split_ids(tiny_sartorius, split))
        assert ds.metainfo["classes"] == classes
        assert model.decode_head.num_classes == len(classes)
        assert Path(ds[0]["data_samples"].img_path).is_file()
    for metric in cfg.val_evaluator:
        METRICS.build(metric)


def test_paper_variants_configs(tiny_sartorius: Path) -> None:
    """The comparison variants of the FRE paper differ from the baseline exactly where they should."""
    init_default_scope("mmseg")

    def build(name: str):
        return MODELS.build(load_config(REPO / "configs/unet" / name).model)

    base = build("se-unet_c64-s4_4xb4-40k_sartorius-704x520.py")
    assert base.backbone.channels == [64, 128, 256, 512] and base.backbone.fre is None
    fre_cfg = load_config(REPO / "configs/unet/se-unet-fre_c64-s4_4xb4-40k_sartorius-704x520.py")
    fre = MODELS.build(fre_cfg.model).backbone.fre
    assert (fre.num_channels, fre.num_enhanced, fre.factor) == (512, 162, 632.0)
    assert [h["type"] for h in fre_cfg.custom_hooks] == ["FRERedrawHook"]
    shallow = build("se-unet_c64-s3_4xb4-40k_sartorius-704x520.py")
    assert shallow.backbone.channels == [64, 128, 256]
    ds = build("se-unet-ds_c64-s4_4xb4-40k_sartorius-704x520.py")
    assert ds.with_auxiliary_head and ds.auxiliary_head.in_index == 0
    assert ds.auxiliary_head.in_channels == 512
    w_main = ds.decode_head.loss_decode.loss_weight
    w_aux = ds.auxiliary_head.loss_decode.loss_weight
    assert w_main + w_aux == pytest.approx(1.0) and 0 < w_aux < 0.5
    drop = build("se-unet-dropout_c64-s4_4xb4-40k_sartorius-704x520.py")
    assert isinstance(drop.backbone.dropout, torch.nn.Dropout2d)
    assert drop.backbone.dropout.p == pytest.approx(162 / 512)
    # FRE adds no parameters: its state dict equals the baseline's.
    assert set(MODELS.build(fre_cfg.model).state_dict()) == set(base.state_dict())


def test_boundary_dataset(tiny_sartorius: Path) -> None:
    init_default_scope("mmseg")
    ds = DATASETS.build(
        dict(
            type="SartoriusBoundarySemanticDataset",
            data_root=str(tiny_sartorius),
            ann_file="splits/fold0_train.txt",
            data_prefix=dict(img_path="train", seg_map_path="semantic/train_boundary"),
            pipeline=[
                dict(type="LoadImageFromFile"),
                dict(type="LoadAnnotations"),
                dict(type="PackSegInputs"),
            ],
        )
    )
    assert ds.metainfo["classes"][-1] == "boundary"
    sample = ds[0]
    img = sample["inputs"]
    labels = sample["data_samples"].gt_sem_seg.data
    assert img.shape == (3, 520, 704)
    assert torch.equal(img[0], img[1]) and torch.equal(img[1], img[2])  # grayscale as 3 identical channels
    assert labels.shape == (1, 520, 704) and int(labels.max()) <= 4


def test_dataset_errors_name_the_problem(tiny_sartorius: Path, tmp_path: Path) -> None:
    init_default_scope("mmseg")
    base = dict(
        type="SartoriusSemanticDataset",
        data_root=str(tiny_sartorius),
        data_prefix=dict(img_path="train", seg_map_path="semantic/train"),
        pipeline=[],
    )
    with pytest.raises(FileNotFoundError, match="split file not found"):
        DATASETS.build(dict(base, ann_file="splits/fold9_train.txt"))
    bad = tmp_path / "bad.txt"
    bad.write_text("no_such_image\n")
    with pytest.raises(FileNotFoundError, match="no_such_image"):
        DATASETS.build(dict(base, ann_file=str(bad)))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="lists no image id"):
        DATASETS.build(dict(base, ann_file=str(empty)))


def test_foreground_metric_values() -> None:
    metric = METRICS.build(dict(type="ForegroundIoUMetric"))
    pred = torch.tensor([[0, 1, 2], [0, 0, 3]])
    gt = torch.tensor([[0, 2, 0], [255, 3, 3]])
    metric.process({}, [dict(pred_sem_seg=dict(data=pred[None]), gt_sem_seg=dict(data=gt[None]))])
    res = metric.compute_metrics(metric.results)
    # valid pixels: all but (1,0). pred fg {(0,1),(0,2),(1,2)}, gt fg {(0,1),(1,1),(1,2)}: inter 2, union 4.
    assert res["fgIoU"] == pytest.approx(50.0)
    assert res["fgDice"] == pytest.approx(100 * 2 * 2 / 6, abs=0.01)


@pytest.mark.parametrize("config", DEMO_CONFIGS)
def test_demo_train_val_and_inference(config: str, tiny_sartorius: Path, tmp_path: Path) -> None:
    """One training iteration through the Runner, validation metrics, full-resolution logits."""
    cfg = load_config(REPO / config, {"data_root": str(tiny_sartorius)})
    cfg.work_dir = str(tmp_path)
    cfg.train_cfg.max_iters = 1
    cfg.train_cfg.val_interval = 10  # validate explicitly below
    cfg.default_hooks.checkpoint.interval = 1
    cfg.visualizer.vis_backends = []
    cfg.log_level = "WARNING"
    runner = Runner.from_cfg(cfg)
    before = {k: v.detach().clone() for k, v in runner.model.state_dict().items()}
    runner.train()
    after = runner.model.state_dict()
    changed = [k for k, v in after.items() if v.dtype.is_floating_point and not torch.equal(v, before[k])]
    assert any("decode_head.conv_seg" in k for k in changed)
    assert (tmp_path / "iter_1.pth").is_file()
    metrics = runner.val()
    for key in ("mIoU", "mDice", "fgIoU", "fgDice"):
        assert 0.0 <= metrics[key] <= 100.0
    runner.model.eval()
    batch = next(iter(runner.val_dataloader))
    with torch.no_grad():
        out = runner.model.test_step(batch)[0]
    assert out.seg_logits.data.shape == (4, 520, 704)
    prob = out.seg_logits.data.softmax(0)
    fg = (1 - prob[0]).numpy()
    assert np.isfinite(fg).all() and fg.min() >= 0 and fg.max() <= 1
    assert out.pred_sem_seg.data.shape == (1, 520, 704)


def test_pretrained_switch_upernet(tmp_path: Path) -> None:
    """`pretrained=<local backbone checkpoint>` loads every backbone tensor (keys matched, none missing)."""
    leaf = REPO / "configs/upernet/upernet_r50_pretrained_4xb4-40k_sartorius-704x520.py"
    small = {
        "model.backbone.depth": 18,
        "model.decode_head.in_channels": [64, 128, 256, 512],
        "model.decode_head.channels": 32,
        "model.auxiliary_head.in_channels": 256,
        "model.auxiliary_head.channels": 16,
    }
    cfg = load_config(leaf, small)
    assert cfg.model.backbone.init_cfg == {"type": "Pretrained", "checkpoint": cfg.pretrained}
    assert "://" not in cfg.pretrained and cfg.model.get("pretrained") is None
    init_default_scope("mmseg")
    src = MODELS.build(load_config(leaf, {**small, "pretrained": None}).model).backbone
    torch.manual_seed(1)
    with torch.no_grad():
        for t in src.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.randn_like(t))
    ckpt = tmp_path / "resnet18_v1c.pth"
    torch.save(src.state_dict(), ckpt)
    model = MODELS.build(load_config(leaf, {**small, "pretrained": str(ckpt)}).model)
    model.init_weights()
    loaded, saved = model.backbone.state_dict(), src.state_dict()
    assert set(loaded) == set(saved)
    assert [k for k in saved if not torch.equal(loaded[k], saved[k])] == []
    # the from-scratch config takes the same switch (SyncBN/BN there too)
    cfg = load_config(
        REPO / "configs/upernet/upernet_r50_4xb4-40k_sartorius-704x520.py", {"pretrained": str(ckpt)}
    )
    assert cfg.model.backbone.init_cfg.checkpoint == str(ckpt)
