"""Flow heads (custom_modules.seg.flow_head) and their target transforms (custom_modules.seg.flow_transforms)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mmengine.registry import init_default_scope  # noqa: E402
from mmengine.runner import Runner  # noqa: E402
from mmengine.structures import PixelData  # noqa: E402
from mmseg.registry import MODELS, TRANSFORMS  # noqa: E402
from mmseg.structures import SegDataSample  # noqa: E402

import custom_modules.seg  # noqa: E402,F401  (registers the modules)
from celldata.flows import FLOW_SCALE, flows_to_labels, instances_to_labels, labels_to_flows  # noqa: E402
from celldata.instances import InstanceMasks  # noqa: E402
from celldata.rle import coco_rle_encode  # noqa: E402
from custom_modules.config import load_config  # noqa: E402
from custom_modules.seg import flow_transforms  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs/flow/se-unet-flow_c8-s4_1xb2-300iter_sartorius-256x256_demo-cpu.py"
FULL = REPO / "configs/flow/se-unet-flow_c64-s4_4xb4-40k_sartorius-704x520.py"


@pytest.fixture(autouse=True)
def _mmseg_scope() -> None:
    """Every test builds mmseg modules: the default scope another test module left behind must not leak in."""
    init_default_scope("mmseg")


def _disk(shape: tuple[int, int], cy: int, cx: int, r: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _labels(h: int = 48, w: int = 64) -> np.ndarray:
    """Disks centred on pixels (unique median pixel under flips/rotations), two of them touching."""
    lab = np.zeros((h, w), dtype=np.int32)
    for k, (cy, cx, r) in enumerate([(12, 12, 7), (12, 26, 7), (34, 40, 9), (36, 12, 5)], start=1):
        lab[_disk((h, w), cy, cx, r) & (lab == 0)] = k
    return lab


def _sample(labels: np.ndarray) -> SegDataSample:
    t = np.concatenate(
        [
            labels_to_flows(labels),
            (labels > 0)[None].astype(np.float32),
            np.ones((1, *labels.shape), np.float32),
        ]
    )
    ds = SegDataSample()
    ds.gt_flows = PixelData(data=torch.from_numpy(t))
    ds.set_metainfo(dict(img_shape=labels.shape, pad_shape=labels.shape))
    return ds


# ------------------------------------------------------------------------------------------------- heads
def test_flow_head_loss_decreases():
    torch.manual_seed(0)
    head = MODELS.build(
        dict(type="FlowHead", in_channels=8, channels=8, num_convs=1, in_index=-1, dropout_ratio=0.0)
    )
    assert head.out_channels == 3 and head.conv_seg.out_channels == 3
    lab = _labels()
    samples = [_sample(lab), _sample(lab[::-1].copy())]
    feats = torch.randn(2, 8, 24, 32)  # half resolution: the loss upsamples the logits
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = head.loss((feats,), samples, {})
        assert set(loss) == {"loss_flow", "loss_prob"}
        total = loss["loss_flow"] + loss["loss_prob"]
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(float(total.detach()))
    assert losses[-1] < 0.7 * losses[0], losses


def test_flow_head_predict_scales_flows_and_rejects_other_classes():
    head = MODELS.build(dict(type="FlowHead", in_channels=4, channels=4, num_convs=0, concat_input=False))
    head.eval()
    feats = torch.randn(1, 4, 16, 20)
    raw = head.forward((feats,))
    out = head.predict((feats,), [dict(img_shape=(16, 20), pad_shape=(16, 20))], {})
    assert out.shape == (1, 3, 16, 20)
    torch.testing.assert_close(out[:, :2], raw[:, :2] / FLOW_SCALE)
    torch.testing.assert_close(out[:, 2], raw[:, 2])
    with pytest.raises(ValueError):
        MODELS.build(dict(type="FlowHead", in_channels=4, channels=4, num_classes=4))


def test_flow_uper_head_on_multilevel_features():
    head = MODELS.build(
        dict(
            type="FlowUPerHead",
            in_channels=[8, 16, 32, 64],
            in_index=[0, 1, 2, 3],
            channels=8,
            pool_scales=(1, 2),
            norm_cfg=dict(type="BN", requires_grad=True),
        )
    )
    feats = tuple(torch.randn(2, c, 48 // s, 64 // s) for c, s in zip([8, 16, 32, 64], [4, 8, 16, 32]))
    lab = _labels()
    loss = head.loss(feats, [_sample(lab), _sample(lab)], {})
    assert torch.isfinite(loss["loss_flow"]) and torch.isfinite(loss["loss_prob"])
    loss["loss_flow"].backward()


def test_loss_ignores_padding_and_needs_targets():
    head = MODELS.build(dict(type="FlowHead", in_channels=4, channels=4, num_convs=0, concat_input=False))
    lab = _labels(20, 24)
    ds = _sample(lab)
    ds.set_metainfo(dict(pad_shape=(32, 32)))
    torch.nn.init.zeros_(head.conv_seg.weight)
    torch.nn.init.zeros_(head.conv_seg.bias)
    out = head.loss((torch.zeros(1, 4, 32, 32),), [ds], {})
    # zero logits: BCE = log 2 on every valid pixel, flow MSE = 25 * |f|^2 / 2 averaged over valid pixels
    assert float(out["loss_prob"].detach()) == pytest.approx(np.log(2), rel=1e-5)
    assert float(out["loss_flow"].detach()) == pytest.approx(0.5 * 25 * (lab > 0).mean() / 2, rel=1e-4)
    with pytest.raises(KeyError):
        head.loss((torch.zeros(1, 4, 32, 32),), [SegDataSample(metainfo=dict(pad_shape=(32, 32)))], {})


def test_flow_encoder_decoder_fixes_flip_signs():
    cfg = load_config(DEMO)
    model = MODELS.build(cfg.model)
    logits = torch.randn(1, 3, 8, 10)
    ds = SegDataSample(
        metainfo=dict(
            ori_shape=(8, 10),
            img_shape=(8, 10),
            padding_size=[0, 0, 0, 0],
            flip=True,
            flip_direction="horizontal",
        )
    )
    out = model.postprocess_result(logits.clone(), [ds])[0]
    ref = logits[0].flip(-1)
    torch.testing.assert_close(out.seg_logits.data, torch.stack([ref[0], -ref[1], ref[2]]))
    torch.testing.assert_close(out.pred_sem_seg.data, (ref[2:3] > 0).long())


# -------------------------------------------------------------------------------------------- transforms
def _mini_root(tmp_path: Path, labels: np.ndarray) -> Path:
    """A data root with train/a.png (not read: the tests pass the image) and a COCO json of ``labels``."""
    h, w = labels.shape
    anns = []
    for v in range(1, int(labels.max()) + 1):
        rle = coco_rle_encode(labels == v)
        anns.append(dict(id=v, image_id=1, category_id=1, segmentation=rle, iscrowd=0))
    coco = dict(
        images=[dict(id=1, file_name="train/a.png", kaggle_id="a", height=h, width=w)], annotations=anns
    )
    (tmp_path / "annotations").mkdir(parents=True)
    (tmp_path / "train").mkdir()
    (tmp_path / "annotations" / "train_all.json").write_text(json.dumps(coco))
    return tmp_path


def _results(root: Path, labels: np.ndarray) -> dict:
    h, w = labels.shape
    img = np.zeros((h, w, 3), dtype=np.uint8)
    return dict(
        img_path=str(root / "train" / "a.png"), img=img, img_shape=(h, w), ori_shape=(h, w), seg_fields=[]
    )


def _run(pipeline: list[dict], results: dict) -> dict:
    for t in pipeline:
        results = TRANSFORMS.build(t)(results)
    return results


def test_cached_targets_equal_fresh_ones(tmp_path: Path):
    lab = _labels()
    root = _mini_root(tmp_path, lab)
    fresh = labels_to_flows(lab)
    pipe = [
        dict(type="LoadFlowSource", ann_file="annotations/train_all.json"),
        dict(type="GenerateFlowTargets"),
    ]
    flow_transforms._MEMORY.clear()
    first = _run(pipe, _results(root, lab))["gt_flows"]
    cached = list((root / "flow_cache").glob("*.npz"))
    assert len(cached) == 1  # computed once, on disk under the data root
    second = _run(pipe, _results(root, lab))["gt_flows"]  # memory hit
    flow_transforms._MEMORY.clear()
    third = _run(pipe, _results(root, lab))["gt_flows"]  # disk hit
    for out in (first, second, third):
        assert out.shape == (4, *lab.shape) and out.dtype == np.float32
        np.testing.assert_allclose(out[:2], fresh, atol=1e-6)
        np.testing.assert_array_equal(out[2], lab > 0)
        assert (out[3] == 1).all()


@pytest.mark.parametrize(
    "aug, fn",
    [
        (dict(type="RandomFlip", prob=1.0, direction="horizontal"), lambda a: a[..., :, ::-1]),
        (dict(type="RandomFlip", prob=1.0, direction="vertical"), lambda a: a[..., ::-1, :]),
        (dict(type="RandomRotate90", prob=1.0, directions=(1,)), lambda a: np.rot90(a, 1, axes=(-2, -1))),
        (dict(type="RandomRotate90", prob=1.0, directions=(2,)), lambda a: np.rot90(a, 2, axes=(-2, -1))),
        (dict(type="RandomRotate90", prob=1.0, directions=(3,)), lambda a: np.rot90(a, 3, axes=(-2, -1))),
    ],
    ids=["hflip", "vflip", "rot90", "rot180", "rot270"],
)
def test_geometric_augmentations_give_the_flows_of_the_transformed_labels(tmp_path: Path, aug: dict, fn):
    lab = _labels()
    root = _mini_root(tmp_path, lab)
    flow_transforms._MEMORY.clear()
    pipe = [
        dict(type="LoadAnnotations", reduce_zero_label=False),
        dict(type="LoadFlowSource", ann_file="annotations/train_all.json", cache_dir=None),
        aug,
        dict(type="GenerateFlowTargets"),
    ]
    res = _results(root, lab)
    res["gt_seg_map"] = (lab > 0).astype(np.uint8)
    res["seg_fields"] = ["gt_seg_map"]
    out = _run(pipe[1:], res)
    moved = np.ascontiguousarray(fn(lab))
    assert out["img"].shape[:2] == moved.shape
    # the cell centres (heat maxima) have a zero gradient up to rounding: their direction is arbitrary
    centres = np.zeros(lab.shape, dtype=bool)
    centres[[12, 12, 34, 36], [12, 26, 40, 12]] = True
    off = ~np.ascontiguousarray(fn(centres))
    np.testing.assert_allclose(out["gt_flows"][:2][:, off], labels_to_flows(moved)[:, off], atol=1e-5)
    np.testing.assert_array_equal(out["gt_flows"][2], moved > 0)
    np.testing.assert_array_equal(out["gt_seg_map"], moved > 0)  # label maps moved alike
    # decoding the augmented targets recovers the augmented instances
    dec = flows_to_labels(out["gt_flows"][2], out["gt_flows"][:2])
    assert dec.max() == lab.max()


def test_crop_and_resize_keep_the_full_cell_flows(tmp_path: Path):
    lab = _labels()
    root = _mini_root(tmp_path, lab)
    flow_transforms._MEMORY.clear()
    full = labels_to_flows(lab)
    res = _results(root, lab)
    out = _run(
        [
            dict(type="LoadFlowSource", ann_file="annotations/train_all.json", cache_dir=None),
            dict(type="RandomCrop", crop_size=(32, 40)),
            dict(type="GenerateFlowTargets"),
        ],
        res,
    )
    y0, y1, x0, x1 = _find_crop(out["img_shape"], lab, out["gt_flows"][2])
    np.testing.assert_allclose(
        out["gt_flows"][:2], full[:, y0:y1, x0:x1], atol=1e-6
    )  # Cellpose: crop the flows
    res = _results(root, lab)
    out = _run(
        [
            dict(type="LoadFlowSource", ann_file="annotations/train_all.json", cache_dir=None),
            dict(type="Resize", scale=(128, 96), keep_ratio=True),
            dict(type="GenerateFlowTargets"),
        ],
        res,
    )
    g = out["gt_flows"]
    assert g.shape == (4, 96, 128)
    # nearest: every second pixel is a source pixel; the fitted scale is isotropic up to ~1e-4
    np.testing.assert_allclose(g[:2, ::2, ::2], full, atol=1e-3)
    nz = g[2] > 0
    np.testing.assert_allclose(np.hypot(g[0], g[1])[nz & (np.hypot(g[0], g[1]) > 0)], 1.0, atol=1e-5)


def _find_crop(shape: tuple[int, int], lab: np.ndarray, prob: np.ndarray) -> tuple[int, int, int, int]:
    h, w = shape
    for y0 in range(lab.shape[0] - h + 1):
        for x0 in range(lab.shape[1] - w + 1):
            if np.array_equal(lab[y0 : y0 + h, x0 : x0 + w] > 0, prob > 0):
                return y0, y0 + h, x0, x0 + w
    raise AssertionError("crop not found")


def test_overlapping_annotations_resolved_in_targets(tmp_path: Path):
    lab = _labels()
    root = _mini_root(tmp_path, lab)
    coco = json.loads((root / "annotations" / "train_all.json").read_text())
    extra = np.zeros_like(lab, dtype=bool)
    extra[10:16, 8:30] = True  # overlaps cells 1 and 2
    coco["annotations"].append(
        dict(id=99, image_id=1, category_id=1, segmentation=coco_rle_encode(extra), iscrowd=0)
    )
    (root / "annotations" / "train_all.json").write_text(json.dumps(coco))
    flow_transforms._COCO_INDEX.clear()
    flow_transforms._MEMORY.clear()
    out = _run(
        [dict(type="LoadFlowSource", cache_dir=None), dict(type="GenerateFlowTargets")], _results(root, lab)
    )
    masks = [lab == v for v in range(1, 5)] + [extra]
    want = labels_to_flows(instances_to_labels(InstanceMasks.from_full(np.stack(masks))))
    np.testing.assert_allclose(out["gt_flows"][:2], want, atol=1e-6)


# -------------------------------------------------------------------------------------------- configs
def test_full_size_config_builds():
    from custom_modules.seg.flow_head import is_flow_segmentor

    cfg = load_config(FULL, {"fold": 2})
    model = MODELS.build(cfg.model)
    assert type(model).__name__ == "FlowEncoderDecoder" and type(model.decode_head).__name__ == "FlowHead"
    assert is_flow_segmentor(model) and cfg.flow_decode["flow_threshold"] == 0.4
    cfg.model.type = "EncoderDecoder"  # a flow head in a plain segmentor is still a flow model
    assert is_flow_segmentor(MODELS.build(cfg.model))
    assert not is_flow_segmentor(model.decode_head)
    assert cfg.train_dataloader.dataset.pipeline[2]["ann_file"] == "annotations/fold2_train.json"


def test_demo_config_trains_one_iteration(tiny_sartorius: Path, tmp_path: Path):
    """One Runner iteration on the tiny prepared dataset, validation, and decodable full-size predictions."""
    cfg = load_config(DEMO, {"data_root": str(tiny_sartorius)})
    cfg.work_dir = str(tmp_path)
    cfg.train_cfg.max_iters = 1
    cfg.train_cfg.val_interval = 10
    cfg.default_hooks.checkpoint.interval = 1
    cfg.visualizer.vis_backends = []
    cfg.log_level = "WARNING"
    runner = Runner.from_cfg(cfg)
    before = {k: v.detach().clone() for k, v in runner.model.state_dict().items()}
    runner.train()
    after = runner.model.state_dict()
    assert not torch.equal(after["decode_head.conv_seg.weight"], before["decode_head.conv_seg.weight"])
    assert any((tiny_sartorius / "flow_cache").glob("*.npz"))
    metrics = runner.val()
    assert 0.0 <= metrics["fgIoU"] <= 100.0
    runner.model.eval()
    batch = next(iter(runner.val_dataloader))
    with torch.no_grad():
        out = runner.model.test_step(batch)[0]
    assert out.seg_logits.data.shape == (3, 520, 704)
    assert out.pred_sem_seg.data.shape == (1, 520, 704)
    maps = out.seg_logits.data.numpy()
    labels = flows_to_labels(1 / (1 + np.exp(-maps[2])), maps[:2])
    assert labels.shape == (520, 704)
