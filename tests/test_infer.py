"""tools/infer.py and custom_modules.inference: batches, TTA passes, prediction files, mask head on boxes
(the flip and merge arithmetic: tests/test_tta.py)."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mmdet")

from celldata.images import list_images  # noqa: E402
from custom_modules.inference import (  # noqa: E402
    load_model,
    paste_soft_masks,
    run_inference,
    semantic_on_boxes,
)
from ensemble.predictions import ImagePredictions, load_predictions, save_predictions  # noqa: E402
from ensemble.tta import limit_predictions  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MRCNN_DEMO = REPO / "configs/mask_rcnn/mask-rcnn_r18_fpn_demo-cpu_sartorius.py"
YOLOX_DEMO = REPO / "configs/yolox/yolox_tiny_demo-cpu_sartorius.py"
H, W = 52, 70


def test_paste_soft_masks_equals_mmdet_paste() -> None:
    """Probabilities pasted per box window equal mmdet's _do_paste_mask (one box at a time, as on CPU); the binary
    masks equal its >= 0.5; chunking (tiny max_elements) changes nothing."""
    import torch
    from mmdet.models.roi_heads.mask_heads.fcn_mask_head import _do_paste_mask

    g = torch.Generator().manual_seed(0)
    n, h, w = 12, 60, 80
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w - 5.0, h - 5.0])
    wh = torch.rand(n, 2, generator=g) * 30 + 0.5
    boxes = torch.cat([xy, xy + wh], dim=1)
    boxes[0] = torch.tensor([-3.0, -2.0, 10.5, 9.25])  # beyond the border: clipped windows
    boxes[1] = torch.tensor([70.2, 50.7, 90.0, 70.0])
    boxes[2] = torch.tensor([5.0, 5.0, 5.0, 9.0])  # zero width
    probs = torch.rand(n, 28, 28, generator=g)
    for max_el in (1 << 24, 300):
        masks, crops = paste_soft_masks(probs, boxes, h, w, mask_thr=0.5, max_elements=max_el)
        assert len(masks) == n and len(crops) == n
        for i in range(n):
            ref, (sy, sx) = _do_paste_mask(probs[i : i + 1, None], boxes[i : i + 1], h, w, skip_empty=True)
            x0, y0, x1, y1 = masks.boxes[i].tolist()
            assert (x0, y0, x1, y1) == (sx.start, sy.start, sx.stop, sy.stop)
            ref = ref[0].numpy()
            assert crops[i].shape == ref.shape and crops[i].dtype == np.float32
            assert np.abs(crops[i] - ref).max(initial=0) <= 1 / 510 + 1e-6  # quantized to round(255 p) / 255
            np.testing.assert_array_equal(masks.crops[i], ref >= 0.5)
    empty, none = paste_soft_masks(probs[:0], boxes[:0], h, w)
    assert len(empty) == 0 and none == []


def test_semantic_on_boxes_crops_the_map() -> None:
    sem = np.linspace(0, 1, H * W, dtype=np.float32).reshape(H, W)
    boxes = np.array([[3.5, 2, 20, 10.2], [60, 40, 70, 52]], np.float32)
    given = ImagePredictions("img", H, W, boxes, np.array([0.9, 0.8]), np.array([1, 1]), None, None)
    out = semantic_on_boxes(given, sem)
    assert out.masks.boxes.tolist() == [[3, 2, 20, 11], [60, 40, 70, 52]]
    np.testing.assert_array_equal(out.mask_probs[0], sem[2:11, 3:20])
    np.testing.assert_array_equal(out.masks.crops[1], sem[40:52, 60:70] >= 0.5)
    assert np.array_equal(out.boxes, given.boxes) and out.semantic is None
    with pytest.raises(ValueError, match="semantic map"):
        semantic_on_boxes(given, sem[:10])


# ---------------------------------------------------------------------------------------- models (tiny data)
@pytest.fixture(scope="module")
def val_json(tiny_sartorius: Path) -> Path:
    return tiny_sartorius / "annotations" / "fold0_val.json"


def test_list_images_sources(tiny_sartorius: Path, val_json: Path) -> None:
    items = list_images(ann_file=val_json)
    coco = json.loads(val_json.read_text())
    assert [i.image_id for i in items] == [im["kaggle_id"] for im in coco["images"]]
    assert all(Path(i.path).is_file() for i in items)
    folder = list_images(images_dir=tiny_sartorius / "test")
    assert len(folder) == 2
    with pytest.raises(ValueError, match="exactly one"):
        list_images()
    with pytest.raises(FileNotFoundError):
        list_images(images_dir=tiny_sartorius / "nope")


# few proposals and detections keep the random-weight Mask R-CNN fast on a CPU
FAST_MRCNN = {
    "model.test_cfg.rpn.nms_pre": 300,
    "model.test_cfg.rpn.max_per_img": 60,
    "model.test_cfg.rcnn.max_per_img": 20,
}


@pytest.fixture(scope="module")
def mrcnn(tiny_sartorius: Path):
    import torch

    torch.manual_seed(0)
    return load_model(
        MRCNN_DEMO,
        None,
        "cpu",
        {"data_root": str(tiny_sartorius), **FAST_MRCNN},
        score_thr=0.0,
        max_per_img=20,
    )


def _assert_same_file(a: Path, b: Path) -> None:
    pa, _ = load_predictions(a)
    pb, _ = load_predictions(b)
    assert list(pa) == list(pb)
    for k in pa:
        x, y = pa[k], pb[k]
        assert len(x) == len(y) > 0
        np.testing.assert_allclose(x.boxes, y.boxes, atol=1e-4)
        np.testing.assert_allclose(x.scores, y.scores, atol=1e-6)
        np.testing.assert_array_equal(x.labels, y.labels)
        assert (x.masks is None) == (y.masks is None) and (x.mask_probs is None) == (y.mask_probs is None)
        if x.masks is not None:
            np.testing.assert_array_equal(x.masks.boxes, y.masks.boxes)
            assert all(np.array_equal(c, d) for c, d in zip(x.masks.crops, y.masks.crops))
        if x.mask_probs is not None:
            assert max(np.abs(c - d).max(initial=0) for c, d in zip(x.mask_probs, y.mask_probs)) <= 1 / 255


def test_mask_rcnn_soft_masks_equal_mmdet_masks(mrcnn, val_json: Path) -> None:
    """The soft path (RPN -> box head -> mask head probabilities pasted by us) gives mmdet's own detections and
    binary masks, plus probabilities consistent with them."""
    from custom_modules.inference import read_image

    item = list_images(ann_file=val_json)[0]
    img = read_image(item.path)
    assert mrcnn.predicts_soft_masks
    ref = mrcnn.to_predictions(mrcnn.predict_sample(img), item.image_id, 520, 704)
    soft = mrcnn.predict_raw([img], [item.image_id])[0]
    assert len(soft) == len(ref) > 0
    np.testing.assert_allclose(soft.boxes, ref.boxes, atol=1e-4)
    np.testing.assert_allclose(soft.scores, ref.scores, atol=1e-6)
    np.testing.assert_array_equal(soft.labels, ref.labels)
    np.testing.assert_array_equal(soft.masks.to_full(), ref.masks.to_full())
    assert soft.mask_probs is not None and ref.mask_probs is None
    for c, m in zip(soft.mask_probs, soft.masks.crops):
        assert c.shape == m.shape and 0.0 <= c.min(initial=0) and c.max(initial=1) <= 1.0
        assert (c[m] >= 0.5 - 1 / 510).all() and (c[~m] <= 0.5 + 1 / 510).all()


def test_batched_inference_equals_one_by_one(mrcnn, val_json: Path, tmp_path: Path) -> None:
    """--batch-size 2 writes the same file as one image at a time (Mask R-CNN with soft masks)."""
    from custom_modules.inference import read_image

    items = list_images(ann_file=val_json)[:2]
    for bs in (1, 2):
        run_inference(
            mrcnn,
            items,
            tmp_path / f"bs{bs}.npz",
            score_thr=0.0,
            max_per_img=15,
            progress=False,
            batch_size=bs,
        )
    _assert_same_file(tmp_path / "bs1.npz", tmp_path / "bs2.npz")
    loaded, meta = load_predictions(tmp_path / "bs2.npz")
    assert list(loaded) == [i.image_id for i in items]
    assert meta["library"] == "mmdet" and meta["tta"] is False and meta["has_masks"] is True
    assert meta["batch_size"] == 2 and meta["has_mask_probs"] is True and meta["fp16"] is False
    for q in loaded.values():
        assert (q.height, q.width) == (520, 704) and q.semantic is None
        assert q.masks is not None and len(q.masks) == len(q) <= 15 and len(q.mask_probs) == len(q)
    with pytest.raises(ValueError, match="batch-size"):
        run_inference(mrcnn, items, tmp_path / "x.npz", batch_size=0, progress=False)
    mrcnn.soft_masks = False  # --no-soft-masks: the same binary masks, no probabilities
    try:
        binary = limit_predictions(
            mrcnn.predict_raw([read_image(items[0].path)], [items[0].image_id])[0], 0.0, 15
        )
    finally:
        mrcnn.soft_masks = True
    first = loaded[items[0].image_id]
    assert binary.mask_probs is None and np.array_equal(binary.masks.to_full(), first.masks.to_full())


@pytest.mark.slow
def test_batched_tta_inference_equals_one_by_one(
    mrcnn, tiny_sartorius: Path, val_json: Path, tmp_path: Path
) -> None:
    """With flip TTA (6 passes in one batch of 2 images) and for YOLOX (test_step path) batching changes nothing."""
    items = list_images(ann_file=val_json)[:2]
    for bs in (1, 2):
        run_inference(
            mrcnn, items, tmp_path / f"tta{bs}.npz", tta=True, score_thr=0.0, max_per_img=20, progress=False,
            batch_size=bs,
        )  # fmt: skip
    _assert_same_file(tmp_path / "tta1.npz", tmp_path / "tta2.npz")
    assert load_predictions(tmp_path / "tta2.npz")[1]["has_mask_probs"] is True
    yolox = load_model(
        YOLOX_DEMO, None, "cpu", {"data_root": str(tiny_sartorius)}, score_thr=0.0, max_per_img=30
    )
    for bs in (1, 2):
        run_inference(
            yolox, items, tmp_path / f"yolox_bs{bs}.npz", score_thr=0.0, max_per_img=30, progress=False,
            batch_size=bs,
        )  # fmt: skip
    _assert_same_file(tmp_path / "yolox_bs1.npz", tmp_path / "yolox_bs2.npz")


def test_fp16_needs_cuda(tiny_sartorius: Path) -> None:
    with pytest.raises(ValueError, match="fp16 needs a CUDA"):
        load_model(YOLOX_DEMO, None, "cpu", {"data_root": str(tiny_sartorius)}, fp16=True)


def test_mask_head_on_given_boxes_soft(mrcnn, val_json: Path, tmp_path: Path) -> None:
    """Soft masks from the mask head for given boxes (box-first step 2): boxes/scores/labels kept, one mask and
    one probability crop per box, batched == one by one, TTA averages the flipped passes."""
    items = list_images(ann_file=val_json)[:2]
    boxes = np.array([[100, 100, 140, 130], [300.5, 200, 360, 260], [0, 0, 20, 20]], np.float32)
    given = [ImagePredictions(i.image_id, 520, 704, boxes, [0.9, 0.8, 0.7], [0, 1, 2]) for i in items]
    box_file = tmp_path / "boxes.npz"
    save_predictions(box_file, given)
    for bs in (1, 2):
        run_inference(
            mrcnn, items, tmp_path / f"masks{bs}.npz", mask_head_on=box_file, progress=False, batch_size=bs
        )
    _assert_same_file(tmp_path / "masks1.npz", tmp_path / "masks2.npz")
    got, meta = load_predictions(tmp_path / "masks2.npz")
    assert meta["mask_head_on"] == str(box_file)
    for i in items:
        g = got[i.image_id]
        assert np.array_equal(g.boxes, boxes) and g.labels.tolist() == [0, 1, 2]
        assert g.masks is not None and len(g.masks) == 3 and len(g.mask_probs) == 3
        # the window of each box is its pixel hull plus one pixel (clipped), as mmdet pastes it
        assert g.masks.boxes.tolist()[0] == [99, 99, 141, 131] and g.masks.boxes.tolist()[2] == [0, 0, 21, 21]
    run_inference(mrcnn, items[:1], tmp_path / "tta.npz", mask_head_on=box_file, tta=True, progress=False)
    t = load_predictions(tmp_path / "tta.npz")[0][items[0].image_id]
    plain = got[items[0].image_id]
    np.testing.assert_array_equal(t.masks.boxes, plain.masks.boxes)
    assert any(not np.array_equal(a, b) for a, b in zip(t.mask_probs, plain.mask_probs))  # passes averaged
    for c, m in zip(t.mask_probs, t.masks.crops):
        assert (c[m] >= 0.5 - 1 / 510).all() and (c[~m] <= 0.5 + 1 / 510).all()


def test_yolox_inference_boxes_only(tiny_sartorius: Path, val_json: Path, tmp_path: Path) -> None:
    model = load_model(
        YOLOX_DEMO, None, "cpu", {"data_root": str(tiny_sartorius)}, score_thr=0.0, max_per_img=30
    )
    items = list_images(ann_file=val_json)[:1]
    out = tmp_path / "yolox.npz"
    run_inference(model, items, out, tta=True, score_thr=0.0, max_per_img=30, progress=False)
    loaded, meta = load_predictions(out)
    p = loaded[items[0].image_id]
    assert p.masks is None and meta["has_masks"] is False
    assert 0 < len(p) <= 30
    assert (p.boxes[:, 2] <= 704).all() and (p.boxes[:, 3] <= 520).all() and (p.boxes >= 0).all()


SEG_CONFIG = REPO / "configs/upernet/upernet_r18_1xb2-250iter_sartorius-demo-256x256.py"


def test_segmentor_inference_semantic(tiny_sartorius: Path, val_json: Path, tmp_path: Path) -> None:
    model = load_model(SEG_CONFIG, None, "cpu", {"data_root": str(tiny_sartorius)})
    assert model.library == "mmseg"
    items = list_images(ann_file=val_json)[:1]
    out = tmp_path / "seg.npz"
    run_inference(model, items, out, tta=True, progress=False)
    loaded, meta = load_predictions(out)
    p = loaded[items[0].image_id]
    assert meta["library"] == "mmseg" and len(p) == 0 and p.masks is None
    assert p.semantic.shape == (520, 704) and 0.0 <= p.semantic.min() <= p.semantic.max() <= 1.0
    # box-first step 2 with a segmentor: its probability map cropped to the given boxes
    boxes = np.array([[100, 100, 140, 130.5], [300, 200, 360, 260]], np.float32)
    box_file = tmp_path / "boxes.npz"
    save_predictions(box_file, [ImagePredictions(items[0].image_id, 520, 704, boxes, [0.9, 0.8], [1, 1])])
    run_inference(
        model, items, tmp_path / "seg_on_boxes.npz", mask_head_on=box_file, tta=True, progress=False
    )
    q = load_predictions(tmp_path / "seg_on_boxes.npz")[0][items[0].image_id]
    assert q.masks.boxes.tolist() == [[100, 100, 140, 131], [300, 200, 360, 260]]
    np.testing.assert_allclose(q.mask_probs[0], p.semantic[100:131, 100:140], atol=1 / 255 + 1e-6)


def test_infer_cli_errors(tmp_path: Path, tiny_sartorius: Path, capsys: pytest.CaptureFixture) -> None:
    main = runpy.run_path(str(REPO / "tools/infer.py"), run_name="tool_under_test")["main"]
    out = str(tmp_path / "x.npz")
    assert main([str(MRCNN_DEMO), "ckpt.pth", "--images", str(tmp_path), "--out", out]) == 2
    assert "no images" in capsys.readouterr().err
    imgs = str(tiny_sartorius / "test")
    assert main([str(MRCNN_DEMO), str(tmp_path / "missing.pth"), "--images", imgs, "--out", out]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    dummy = tmp_path / "dummy.pth"
    dummy.write_bytes(b"x")
    assert (
        main([str(MRCNN_DEMO), str(dummy), "--images", imgs, "--out", out, "--fp16", "--device", "cpu"]) == 2
    )
    assert "fp16 needs a CUDA device" in capsys.readouterr().err
    assert main([str(MRCNN_DEMO), str(dummy), "--images", imgs, "--out", out, "--batch-size", "0"]) == 2
    assert "--batch-size must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists()


def test_non_finite_detections_are_dropped_with_a_warning() -> None:
    """A barely trained detector can emit NaN boxes; they are dropped (with their masks), the rest kept."""
    from types import SimpleNamespace

    import torch
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    from custom_modules.inference import InferenceModel

    h, w = 20, 30
    inst = InstanceData()
    inst.bboxes = torch.tensor([[1.0, 2.0, 5.0, 6.0], [float("nan")] * 4, [10.0, 10.0, 20.0, 15.0]])
    inst.scores = torch.tensor([0.9, 0.8, float("inf")])
    inst.labels = torch.tensor([0, 1, 2])
    masks = torch.zeros(3, h, w, dtype=torch.bool)
    masks[0, 2:6, 1:5] = True
    masks[1, 0:3, 0:3] = True
    masks[2, 10:15, 10:20] = True
    inst.masks = masks
    sample = DetDataSample()
    sample.pred_instances = inst
    with pytest.warns(UserWarning, match="dropped 2 detection"):
        pred = InferenceModel.to_predictions(SimpleNamespace(library="mmdet"), sample, "img", h, w)
    assert len(pred.boxes) == 1 and pred.labels.tolist() == [0]
    assert np.allclose(pred.boxes[0], [1, 2, 5, 6]) and pred.scores.tolist() == pytest.approx([0.9])
    assert len(pred.masks) == 1 and pred.masks.areas().tolist() == [16]


@pytest.mark.gpu
def test_fp16_cuda_soft_masks_close_to_fp32(tiny_sartorius: Path, val_json: Path, tmp_path: Path) -> None:
    """On CUDA, --fp16 (autocast) with --batch-size 2 gives the fp32 soft masks on given boxes up to fp16 noise."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    items = list_images(ann_file=val_json)[:2]
    boxes = np.array([[100, 100, 140, 130], [300.5, 200, 360, 260]], np.float32)
    box_file = tmp_path / "boxes.npz"
    save_predictions(
        box_file, [ImagePredictions(i.image_id, 520, 704, boxes, [0.9, 0.8], [0, 1]) for i in items]
    )
    got = {}
    for fp16 in (False, True):
        torch.manual_seed(0)
        model = load_model(
            MRCNN_DEMO, None, "cuda", {"data_root": str(tiny_sartorius), **FAST_MRCNN}, 0.0, 20, fp16=fp16
        )
        out = tmp_path / f"fp16_{fp16}.npz"
        run_inference(model, items, out, mask_head_on=box_file, progress=False, batch_size=2)
        got[fp16] = load_predictions(out)
        assert got[fp16][1]["fp16"] is fp16
        run_inference(
            model, items, tmp_path / "plain.npz", tta=True, progress=False, batch_size=2
        )  # runs in fp16
    for k in got[False][0]:
        a, b = got[False][0][k], got[True][0][k]
        np.testing.assert_array_equal(a.masks.boxes, b.masks.boxes)
        assert max(np.abs(x - y).max() for x, y in zip(a.mask_probs, b.mask_probs)) <= 0.05
