"""tools/infer.py and custom_modules.inference: flip mapping, TTA merge, prediction files, mask head on boxes."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mmdet")

from celldata.instances import InstanceMasks  # noqa: E402
from custom_modules.inference import (  # noqa: E402
    flip_boxes,
    flip_image,
    flip_instance_masks,
    flip_predictions,
    limit_predictions,
    list_images,
    load_model,
    merge_tta,
    run_inference,
)
from ensemble.predictions import ImagePredictions, load_predictions, save_predictions  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MRCNN_DEMO = REPO / "configs/mask_rcnn/mask-rcnn_r18_fpn_demo-cpu_sartorius.py"
YOLOX_DEMO = REPO / "configs/yolox/yolox_tiny_demo-cpu_sartorius.py"
H, W = 52, 70


# ------------------------------------------------------------------------------------------ flips (pure numpy)
def test_flip_boxes_known_values_and_involution() -> None:
    b = np.array([[10.0, 5.0, 30.5, 20.0], [0.0, 0.0, 70.0, 52.0]], dtype=np.float32)
    hb = flip_boxes(b, "horizontal", H, W)
    assert hb.tolist() == [[39.5, 5.0, 60.0, 20.0], [0.0, 0.0, 70.0, 52.0]]
    vb = flip_boxes(b, "vertical", H, W)
    assert vb.tolist() == [[10.0, 32.0, 30.5, 47.0], [0.0, 0.0, 70.0, 52.0]]
    for d in ("horizontal", "vertical"):
        assert np.allclose(flip_boxes(flip_boxes(b, d, H, W), d, H, W), b)
    with pytest.raises(ValueError, match="direction"):
        flip_boxes(b, "diagonal", H, W)


def test_flip_boxes_match_flipped_mask_extent() -> None:
    m = np.zeros((H, W), dtype=bool)
    m[7:19, 11:40] = True
    box = np.array([[11, 7, 40, 19]], dtype=np.float32)  # exclusive pixel box of the mask
    for d in ("horizontal", "vertical"):
        fm = flip_image(m, d)
        ys, xs = np.nonzero(fm)
        assert flip_boxes(box, d, H, W)[0].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_flip_instance_masks_equals_flipping_full_frames() -> None:
    rng = np.random.default_rng(0)
    full = rng.random((3, H, W)) > 0.97
    full[1] = False
    inst = InstanceMasks.from_full(full)
    for d in ("horizontal", "vertical"):
        got = flip_instance_masks(inst, d).to_full()
        want = full[:, :, ::-1] if d == "horizontal" else full[:, ::-1, :]
        assert np.array_equal(got, want)


def _pred(boxes, scores, labels, masks=None, semantic=None, image_id="img") -> ImagePredictions:
    return ImagePredictions(
        image_id, H, W, np.asarray(boxes, np.float32).reshape(-1, 4), scores, labels, masks, semantic
    )


def test_flip_predictions_round_trip_and_semantic() -> None:
    full = np.zeros((2, H, W), dtype=bool)
    full[0, 2:10, 3:20] = True
    full[1, 30:50, 40:69] = True
    sem = np.linspace(0, 1, H * W, dtype=np.float32).reshape(H, W)
    p = _pred([[3, 2, 20, 10], [40, 30, 69, 50]], [0.9, 0.8], [0, 2], InstanceMasks.from_full(full), sem)
    for d in ("horizontal", "vertical"):
        back = flip_predictions(flip_predictions(p, d), d)
        assert np.allclose(back.boxes, p.boxes) and np.array_equal(back.masks.to_full(), full)
        assert np.array_equal(back.semantic, sem)


def test_merge_tta_boxes_and_masks() -> None:
    full = np.zeros((2, H, W), dtype=bool)
    full[0, 2:10, 3:20] = True
    full[1, 30:50, 40:69] = True
    boxes = [[3, 2, 20, 10], [40, 30, 69, 50]]
    pm = _pred(boxes, [0.9, 0.6], [0, 1], InstanceMasks.from_full(full))
    extra = full.copy()
    extra[0, 10, 3:20] = True  # one pass has one more row on cell 0: a minority, voted away
    pe = _pred(boxes, [0.9, 0.6], [0, 1], InstanceMasks.from_full(extra))
    merged = merge_tta([pm, pm, pe])
    assert len(merged) == 2
    order = np.argsort(merged.labels)
    assert np.array_equal(merged.masks.subset(order).to_full(), full)
    assert np.allclose(merged.scores[order], [0.9, 0.6], atol=1e-6)
    # a detection seen in one pass only: kept with its score divided by the number of passes ('avg')
    lonely = _pred([[3, 2, 20, 10]], [0.9], [0], InstanceMasks.from_full(full[:1]))
    none = _pred(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int), InstanceMasks.empty(H, W))
    m2 = merge_tta([lonely, none, none])
    assert len(m2) == 1 and m2.scores[0] == pytest.approx(0.3)
    # box-only passes: WBF of the boxes
    pb = _pred(boxes, [0.9, 0.6], [0, 1])
    pb2 = _pred([[4, 2, 21, 10], [40, 30, 69, 50]], [0.7, 0.6], [0, 1])
    mb = merge_tta([pb, pb2, pb])
    assert mb.masks is None and len(mb) == 2
    b0 = mb.boxes[np.argmax(mb.scores)]
    assert b0[0] == pytest.approx((3 * 0.9 * 2 + 4 * 0.7) / (0.9 * 2 + 0.7), abs=1e-3)


def test_limit_predictions() -> None:
    p = _pred([[0, 0, 5, 5]] * 4, [0.1, 0.9, 0.5, 0.04], [0, 1, 2, 0])
    q = limit_predictions(p, score_thr=0.05, max_per_img=2)
    assert q.scores.tolist() == pytest.approx([0.9, 0.5]) and q.labels.tolist() == [1, 2]


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


def test_mask_rcnn_inference_file_and_mask_head_on(
    tiny_sartorius: Path, val_json: Path, tmp_path: Path
) -> None:
    model = load_model(
        MRCNN_DEMO, None, "cpu", {"data_root": str(tiny_sartorius)}, score_thr=0.0, max_per_img=50
    )
    items = list_images(ann_file=val_json)[:2]
    out = tmp_path / "mrcnn.npz"
    preds = run_inference(model, items, out, tta=True, score_thr=0.0, max_per_img=50, progress=False)
    loaded, meta = load_predictions(out)
    assert list(loaded) == [i.image_id for i in items]
    assert meta["library"] == "mmdet" and meta["tta"] is True and meta["has_masks"] is True
    for p in preds:
        q = loaded[p.image_id]
        assert (q.height, q.width) == (520, 704)
        assert q.masks is not None and len(q.masks) == len(q) <= 50
        assert q.semantic is None and np.array_equal(q.scores, p.scores)
    # masks from the mask head for given boxes: boxes/scores/labels kept, one mask per box
    boxes = np.array([[100, 100, 140, 130], [300.5, 200, 360, 260], [0, 0, 20, 20]], np.float32)
    given = [ImagePredictions(i.image_id, 520, 704, boxes, [0.9, 0.8, 0.7], [0, 1, 2]) for i in items]
    box_file = tmp_path / "boxes.npz"
    save_predictions(box_file, given)
    out2 = tmp_path / "masks.npz"
    run_inference(model, items, out2, mask_head_on=box_file, progress=False)
    got, _ = load_predictions(out2)
    for i in items:
        g = got[i.image_id]
        assert np.array_equal(g.boxes, boxes) and g.labels.tolist() == [0, 1, 2]
        assert g.masks is not None and len(g.masks) == 3
        # a mask lies inside (the pixel hull of) its box
        mb = g.masks.tight_boxes()
        nonempty = g.masks.areas() > 0
        assert (mb[nonempty, 0] >= np.floor(boxes[nonempty, 0]) - 1).all()
        assert (mb[nonempty, 2] <= np.ceil(boxes[nonempty, 2]) + 1).all()


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


def test_infer_cli_errors(tmp_path: Path, tiny_sartorius: Path, capsys: pytest.CaptureFixture) -> None:
    main = runpy.run_path(str(REPO / "tools/infer.py"), run_name="tool_under_test")["main"]
    out = str(tmp_path / "x.npz")
    assert main([str(MRCNN_DEMO), "ckpt.pth", "--images", str(tmp_path), "--out", out]) == 2
    assert "no images" in capsys.readouterr().err
    imgs = str(tiny_sartorius / "test")
    assert main([str(MRCNN_DEMO), str(tmp_path / "missing.pth"), "--images", imgs, "--out", out]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
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
