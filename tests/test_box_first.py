"""Box-first fusion (fuse boxes -> soft masks on the fused boxes -> probability vote) and soft-mask voting."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from celldata.instances import InstanceMasks
from ensemble.box_first import fuse_image_box_first
from ensemble.config import load_config
from ensemble.fuse_boxes import fuse_boxes_image
from ensemble.fuse_boxes import main as fuse_boxes_main
from ensemble.masks import FusionParams, fuse_image
from ensemble.predictions import ImagePredictions, load_predictions, save_predictions
from ensemble.run import main as run_main
from ensemble.submission import read_submission

H, W = 20, 30
BOXES = np.array([[2, 2, 8, 8], [10, 3, 20, 12]], np.float32)
SCORES = [0.8, 0.6]
LABELS = [1, 1]


def _hand_models() -> tuple[ImagePredictions, ImagePredictions, ImagePredictions]:
    """A: soft masks in the box windows +-1 (as tools/infer.py pastes them); B: binary masks; S: a flat map."""
    win_a = np.array([[1, 1, 9, 9], [9, 2, 21, 13]])
    pa0 = np.zeros((8, 8), np.float32)
    pa0[1:7, 1:7] = 0.9
    pa0[1:7, 1:3] = 0.4  # columns x = 2, 3 of box 0
    pa1 = np.zeros((11, 12), np.float32)
    pa1[1:10, 1:11] = 0.7  # all of box 1
    a = ImagePredictions(
        "i",
        H,
        W,
        BOXES,
        SCORES,
        LABELS,
        InstanceMasks(H, W, win_a, [pa0 >= 0.5, pa1 >= 0.5]),
        None,
        [pa0, pa1],
    )
    mb1 = np.zeros((9, 10), bool)
    mb1[:, :5] = True  # columns x = 10..14 of box 1
    b = ImagePredictions(
        "i", H, W, BOXES, SCORES, LABELS, InstanceMasks(H, W, BOXES.astype(int), [np.ones((6, 6), bool), mb1])
    )
    s = ImagePredictions("i", H, W, np.zeros((0, 4)), [], [], None, np.full((H, W), 0.2, np.float32))
    return a, b, s


def test_box_first_hand_case() -> None:
    """Weights A=1, B=3; the map with semantic_weight 0.5 votes with 0.5 * mean(1, 3) = 1; total 5.

    Box 0: x=4..7: (0.9 + 3 + 0.2) / 5 = 0.82; x=2..3: (0.4 + 3 + 0.2) / 5 = 0.72; outside the box only A's
    zero border -> mask = the 6x6 box, score 0.8 * (24 * 0.82 + 12 * 0.72) / 36.
    Box 1: x=10..14: (0.7 + 3 + 0.2) / 5 = 0.78; x=15..19: (0.7 + 0.2) / 5 = 0.18 -> 9x5 pixels, score 0.6 * 0.78.
    """
    a, b, s = _hand_models()
    params = FusionParams(vote_thr=0.5, rerank=True, semantic_weight=0.5, max_lost_frac=1.0, mode="box_first")
    r = fuse_image_box_first([a, b, s], [1.0, 3.0, 1.0], params)
    want = np.zeros((2, H, W), bool)
    want[0, 2:8, 2:8] = True
    want[1, 3:12, 10:15] = True
    np.testing.assert_array_equal(r.masks.to_full(), want)
    np.testing.assert_allclose(r.scores, [0.8 * (24 * 0.82 + 12 * 0.72) / 36, 0.6 * 0.78], rtol=1e-6)
    np.testing.assert_array_equal(r.boxes, BOXES)
    assert r.labels.tolist() == [1, 1]
    # no rerank: fused scores unchanged; vote_thr 0.75 keeps only box 0's inner columns and box 1's left part
    r2 = fuse_image_box_first([a, b, s], [1.0, 3.0, 1.0], FusionParams(vote_thr=0.75, semantic_weight=0.5))
    assert r2.scores.tolist() == pytest.approx(SCORES)
    assert r2.masks.areas().tolist() == [24, 45]
    # a per-model semantic weight overrides fusion.semantic_weight; 0 silences the map: (0.9 + 3) / 4 >= 0.5
    r3 = fuse_image_box_first(
        [a, b, s], [1.0, 3.0, 1.0], FusionParams(semantic_weight=0.5), semantic_weights=[None, None, 0.0]
    )
    assert r3.masks.areas().tolist() == [36, 45]
    # class thresholds apply to the reranked score (box 1: 0.468 < 0.5) and overlap removal runs last
    r4 = fuse_image_box_first(
        [a, b, s], [1.0, 3.0, 1.0], FusionParams(rerank=True, semantic_weight=0.5, score_thr={"astro": 0.5})
    )
    assert len(r4) == 1 and r4.scores[0] == pytest.approx(0.8 * (24 * 0.82 + 12 * 0.72) / 36)


def test_box_first_rejects_other_boxes() -> None:
    a, b, _ = _hand_models()
    shifted = ImagePredictions("i", H, W, BOXES + 1, SCORES, LABELS, b.masks)
    with pytest.raises(ValueError, match="model 'mrcnn_b' has other boxes"):
        fuse_image_box_first([a, shifted], [1.0, 1.0], FusionParams(), names=["mrcnn_a", "mrcnn_b"])
    with pytest.raises(ValueError, match="positive weights"):
        fuse_image_box_first([a, b], [1.0, 0.0], FusionParams())


def test_vote_mode_averages_probabilities() -> None:
    """vote = sum a_i p_i / sum a_i with soft masks, binary masks as p in {0, 1}."""
    win = np.array([[4, 4, 16, 16]])
    box = np.array([[5, 5, 15, 15]], np.float32)
    pa = np.zeros((12, 12), np.float32)
    pa[1:11, 1:11] = 0.8
    mb = np.zeros((12, 12), bool)
    mb[1:11, 6:11] = True
    a = ImagePredictions("x", H, W, box, [1.0], [0], InstanceMasks(H, W, win, [pa >= 0.5]), None, [pa])
    b = ImagePredictions("x", H, W, box, [1.0], [0], InstanceMasks(H, W, win, [mb]))
    # left half: (1 * 0.8 + 3 * 0) / 4 = 0.2; right half: (0.8 + 3) / 4 = 0.95
    r = fuse_image([a, b], [1, 3], FusionParams(vote_thr=0.5, rerank=True))
    assert r.masks.to_full()[0].sum() == 50 and r.masks.boxes.tolist() == [[10, 5, 15, 15]]
    assert r.scores[0] == pytest.approx(0.95, abs=1 / 255)  # soft votes are quantized like prediction files


def _det(boxes, scores, labels, image_id="img0") -> ImagePredictions:
    return ImagePredictions(image_id, 52, 70, np.asarray(boxes, np.float32).reshape(-1, 4), scores, labels)


def test_fuse_boxes_majority_and_semantic_models_skipped(tmp_path: Path) -> None:
    """Two box models agreeing on a cell with different labels give one fused box with the full score; a
    semantic-only model in the same config neither adds a box nor dilutes the scores."""
    y = _det([[10, 10, 20, 20], [40, 30, 50, 40]], [0.9, 0.9], [0, 2])
    m = _det([[10, 10, 20, 20], [40, 30, 50, 40]], [0.9, 0.3], [1, 2])
    fused = fuse_boxes_image([y, m], [1.0, 1.0], FusionParams(iou_thr=0.5))
    assert len(fused) == 2 and fused.scores.tolist() == pytest.approx([0.9, 0.6])
    assert set(fused.labels.tolist()) == {
        2
    }  # weighted majority: cort 0.9 + 0.9 + 0.3 > shsy5y 0.9, astro 0.9
    assert fused.masks is None
    sem = ImagePredictions("img0", 52, 70, np.zeros((0, 4)), [], [], None, np.zeros((52, 70), np.float32))
    files = []
    for name, p in (("yolox", y), ("mrcnn", m), ("upernet", sem)):
        files.append(tmp_path / f"{name}.npz")
        save_predictions(files[-1], [p])
    cfg = {
        "name": "bf",
        "models": [
            {"name": "yolox", "predictions": str(files[0]), "weight": 1.0},
            {"name": "mrcnn", "predictions": str(files[1]), "weight": 1.0},
            {"name": "upernet", "predictions": str(files[2]), "weight": 1.0, "semantic_weight": 1.0},
        ],
        "fusion": {"iou_thr": 0.5, "mode": "box_first"},
        "out_dir": str(tmp_path),
    }
    (tmp_path / "bf.yaml").write_text(yaml.safe_dump(cfg))
    assert load_config(tmp_path / "bf.yaml").fusion.mode == "box_first"
    assert fuse_boxes_main(["--config", str(tmp_path / "bf.yaml"), "--no-progress"]) == 0
    got, meta = load_predictions(tmp_path / "bf_fused_boxes.npz")
    np.testing.assert_allclose(got["img0"].scores, fused.scores)
    assert meta["skipped_semantic_only"] == ["upernet"] and [x["name"] for x in meta["models"]] == [
        "yolox",
        "mrcnn",
    ]
    # only a semantic model: a clear error, exit 2
    cfg["models"] = cfg["models"][2:]
    (tmp_path / "sem.yaml").write_text(yaml.safe_dump(cfg))
    assert fuse_boxes_main(["--config", str(tmp_path / "sem.yaml"), "--out", str(tmp_path / "x.npz")]) == 2
    assert not (tmp_path / "x.npz").exists()
    cfg["fusion"]["mode"] = "boxfirst"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ValueError, match="mode"):
        load_config(tmp_path / "bad.yaml")


def test_box_first_run_end_to_end(tmp_path: Path) -> None:
    """ensemble.run with fusion.mode box_first on step-2 files gives the hand-computed masks: scored against
    them as ground truth, the competition score is 1."""
    a, b, s = _hand_models()
    files = {}
    for name, p in (("mrcnn_on_boxes", a), ("other_on_boxes", b), ("upernet", s)):
        files[name] = tmp_path / f"{name}.npz"
        save_predictions(files[name], [p])
    want = np.zeros((2, H, W), bool)
    want[0, 2:8, 2:8] = True
    want[1, 3:12, 10:15] = True
    lines = ["id,annotation,width,height,cell_type,plate_time,sample_date,sample_id,elapsed_timedelta"]
    lines += [f"i,{rle},{W},{H},astro,,,s0," for rle in InstanceMasks.from_full(want).to_kaggle_rles()]
    truth_csv = tmp_path / "train.csv"
    truth_csv.write_text("\n".join(lines) + "\n")
    cfg = {
        "name": "box_first",
        "models": [
            {"name": "mrcnn_on_boxes", "predictions": str(files["mrcnn_on_boxes"]), "weight": 1.0},
            {"name": "other_on_boxes", "predictions": str(files["other_on_boxes"]), "weight": 3.0},
            {"name": "upernet", "predictions": str(files["upernet"]), "weight": 1.0, "semantic_weight": 0.5},
        ],
        "fusion": {"mode": "box_first", "vote_thr": 0.5, "rerank": True, "max_lost_frac": 1.0},
        "truth": str(truth_csv),
        "out_dir": str(tmp_path / "out"),
    }
    (tmp_path / "bf.yaml").write_text(yaml.safe_dump(cfg))
    assert run_main(["--config", str(tmp_path / "bf.yaml"), "--no-progress", "--overlays", "0"]) == 0
    sub = read_submission(tmp_path / "out" / "box_first.csv", height=H, width=W)
    np.testing.assert_array_equal(sub["i"].to_label_image() > 0, want.any(axis=0))
    score = json.loads((tmp_path / "out" / "box_first_score.json").read_text())
    assert score["score"] == pytest.approx(1.0)


def test_box_first_three_steps_and_held_out_tuning(tmp_path: Path) -> None:
    """Step 1 (fuse_boxes CLI) -> step 2 (simulated: a mask model's probabilities on the fused boxes, written like
    tools/infer.py --mask-head-on) -> step 3 (run) on synthetic data; the tuner handles box_first (held-out CV) and
    keeps the mode; a good soft mask model beats the raw vote of the same boxes."""
    from _ensemble_data import H as H2
    from _ensemble_data import W as W2
    from _ensemble_data import make_truth, write_models, write_truth_csv

    from ensemble.tune import main as tune_main

    truth, types = make_truth(6, seed=0)
    truth_csv = write_truth_csv(tmp_path / "train.csv", truth, types)
    yolox, mrcnn, _ = write_models(tmp_path, truth, types)
    step1 = {
        "name": "boxes",
        "models": [
            {"name": "yolox", "predictions": str(yolox)},
            {"name": "maskrcnn", "predictions": str(mrcnn)},
        ],
        "fusion": {"iou_thr": 0.5, "skip_box_thr": 0.05},
    }
    (tmp_path / "boxes.yaml").write_text(yaml.safe_dump(step1))
    fused_path = tmp_path / "fused.npz"
    assert (
        fuse_boxes_main(["--config", str(tmp_path / "boxes.yaml"), "--out", str(fused_path), "--no-progress"])
        == 0
    )
    fused, _ = load_predictions(fused_path)
    # step 2, simulated: the truth cell under each fused box, blurred into probabilities, in the box window +-1
    rng = np.random.default_rng(0)
    on_boxes = []
    for k, f in fused.items():
        lab = truth[k].to_label_image()
        win = np.concatenate([np.floor(f.boxes[:, :2]) - 1, np.ceil(f.boxes[:, 2:]) + 1], axis=1)
        win = np.clip(win, 0, [W2, H2, W2, H2]).astype(np.int32)
        probs = []
        for x0, y0, x1, y1 in win:
            crop = lab[y0:y1, x0:x1]
            ids, counts = np.unique(crop[crop > 0], return_counts=True)
            cell = (crop == ids[np.argmax(counts)]) if len(ids) else np.zeros(crop.shape, bool)
            noise = rng.uniform(-0.3, 0.3, crop.shape)
            probs.append(np.clip(np.where(cell, 0.8, 0.15) + noise, 0, 1).astype(np.float32))
        masks = InstanceMasks(H2, W2, win, [p >= 0.5 for p in probs])
        on_boxes.append(ImagePredictions(k, H2, W2, f.boxes, f.scores, f.labels, masks, None, probs))
    save_predictions(tmp_path / "maskrcnn_on_boxes.npz", on_boxes, meta={"mask_head_on": str(fused_path)})
    step3 = {
        "name": "bf",
        "models": [{"name": "maskrcnn_on_boxes", "predictions": str(tmp_path / "maskrcnn_on_boxes.npz")}],
        "fusion": {"mode": "box_first", "vote_thr": 0.5, "rerank": True},
        "class_thresholds": {c: {"score": 0.3} for c in ("shsy5y", "astro", "cort")},
        "truth": str(truth_csv),
        "out_dir": str(tmp_path / "out"),
    }
    (tmp_path / "bf.yaml").write_text(yaml.safe_dump(step3))
    assert (
        run_main(
            ["--config", str(tmp_path / "bf.yaml"), "--no-progress", "--overlays", "0", "--workers", "1"]
        )
        == 0
    )
    bf_score = json.loads((tmp_path / "out" / "bf_score.json").read_text())["score"]
    vote = {
        **step3,
        "name": "vote",
        "models": step1["models"],
        "fusion": {"iou_thr": 0.5, "skip_box_thr": 0.05},
    }
    (tmp_path / "vote.yaml").write_text(yaml.safe_dump(vote))
    assert run_main(["--config", str(tmp_path / "vote.yaml"), "--no-progress", "--overlays", "0"]) == 0
    vote_score = json.loads((tmp_path / "out" / "vote_score.json").read_text())["score"]
    assert bf_score > vote_score  # the simulated mask model is better than the noisy models' masks
    out = tmp_path / "tuned.yaml"
    argv = [
        "--config",
        str(tmp_path / "bf.yaml"),
        "--out",
        str(out),
        "--rounds",
        "1",
        "--cv",
        "3",
        "--no-progress",
    ]
    assert tune_main([*argv, "--workers", "1"]) == 0
    tuned = load_config(out)
    assert tuned.fusion.mode == "box_first" and 0.0 <= tuned.tuning["cv"]["score_held_out"] <= 1.0
