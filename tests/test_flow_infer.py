"""Flow models through tools/infer.py (custom_modules.inference) into both ensemble modes, and in a recipe.

The instance path is tested with an *oracle* network: the demo flow config's model whose ``test_step`` returns the
flows of the tiny dataset's ground truth (looked up by the image's bytes, so the flipped TTA passes get the flows of
the flipped truth, as a perfect network would). Everything after the network is the real code: map averaging of
the TTA passes, decoding, instance arrays, labels from another model's file, the prediction file, fuse_boxes and
ensemble.run in vote and box-first mode. The random-weight network itself runs through the CLI.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml

torch = pytest.importorskip("torch")

from mmengine.structures import PixelData  # noqa: E402
from mmseg.structures import SegDataSample  # noqa: E402

from celldata import CLASSES  # noqa: E402
from celldata.flows import flip_flow_map, instances_to_labels, labels_to_flows  # noqa: E402
from celldata.images import list_images  # noqa: E402
from celldata.kaggle_csv import read_train_csv  # noqa: E402
from custom_modules.inference import (  # noqa: E402
    image_labels_from_file,
    load_model,
    read_image,
    run_inference,
)
from ensemble.fuse_boxes import main as fuse_boxes_main  # noqa: E402
from ensemble.predictions import ImagePredictions, load_predictions, save_predictions  # noqa: E402
from ensemble.run import main as run_main  # noqa: E402
from ensemble.tta import FLIP_DIRECTIONS, flip_image  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs/flow/se-unet-flow_c8-s4_1xb2-300iter_sartorius-256x256_demo-cpu.py"
RECIPE = REPO / "configs/recipes/demo_cpu_flow.yaml"
LOGIT = 8.0  # the oracle's cell logit inside cells (-LOGIT outside): probability 0.99966


def _key(img: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(img).tobytes()).hexdigest()


def _oracle_map(labels: np.ndarray) -> np.ndarray:
    """The map a perfect flow network predicts for a label image: unit flows and a +-LOGIT cell logit."""
    return np.concatenate(
        [labels_to_flows(labels), np.where(labels > 0, LOGIT, -LOGIT)[None].astype(np.float32)]
    )


@pytest.fixture(scope="module")
def truth(tiny_sartorius: Path) -> dict:
    """Per fold-0 validation image: path, cell type, truth label image."""
    by_id = {im.image_id: im for im in read_train_csv(tiny_sartorius / "train.csv")}
    items = list_images(ann_file=tiny_sartorius / "annotations" / "fold0_val.json")
    out = {}
    for it in items:
        im = by_id[it.image_id]
        out[it.image_id] = dict(
            item=it, cell_type=im.cell_type, labels=instances_to_labels(im.to_instances()), n=len(im.rles)
        )
    return out


@pytest.fixture(scope="module")
def oracle(tiny_sartorius: Path, truth: dict):
    """The demo flow config (random weights) with an oracle ``test_step`` (module docstring)."""
    model = load_model(DEMO, None, "cpu", {"data_root": str(tiny_sartorius)})
    assert model.is_flow and model.predicts_soft_masks
    table = {}
    for t in truth.values():
        img = read_image(t["item"].path)
        table[_key(img)] = _oracle_map(t["labels"])
        for d in FLIP_DIRECTIONS:
            lab = flip_image(t["labels"], d)
            table[_key(flip_image(img, d))] = _oracle_map(lab)
    calls = []

    def test_step(data: dict) -> list[SegDataSample]:
        out = []
        for inp in data["inputs"]:
            img = inp.permute(1, 2, 0).numpy()  # the in-memory pipeline's (C, H, W) uint8 BGR image
            maps = table[_key(img)]
            ds = SegDataSample(metainfo=dict(ori_shape=img.shape[:2], img_shape=img.shape[:2]))
            ds.seg_logits = PixelData(data=torch.from_numpy(maps.copy()))
            out.append(ds)
        calls.append(len(out))
        return out

    model.model.test_step = test_step
    model.calls = calls
    return model


def _labelled(truth: dict) -> list[ImagePredictions]:
    """A detector-like file of the truth images: one box per cell, labelled with the true cell type."""
    preds = []
    for i, t in truth.items():
        lab = t["labels"]
        from celldata.flows import labels_to_instances

        inst = labels_to_instances(lab, (lab > 0).astype(np.float32))
        k = CLASSES.index(t["cell_type"])
        preds.append(
            ImagePredictions(i, *lab.shape, inst.boxes, np.full(len(inst), 0.9), np.full(len(inst), k))
        )
    return preds


def _iou_recall(pred: ImagePredictions, labels: np.ndarray, thr: float = 0.9) -> float:
    """Fraction of truth labels matched by a predicted mask with IoU >= thr."""
    got = pred.masks.to_label_image()
    hit = 0
    vals = [v for v in np.unique(labels) if v > 0]
    for v in vals:
        m = labels == v
        ids, cnt = np.unique(got[m], return_counts=True)
        cnt, ids = cnt[ids > 0], ids[ids > 0]
        if ids.size:
            j = ids[np.argmax(cnt)]
            inter = cnt.max()
            hit += inter / (m.sum() + (got == j).sum() - inter) >= thr
    return hit / max(len(vals), 1)


def test_tta_averages_maps_with_flow_signs_fixed_once(oracle, truth: dict):
    """TTA map = plain map for the (flip-equivariant) oracle; a wrong or doubled sign fix would halve flow x/y."""
    oracle.calls.clear()
    imgs = [read_image(t["item"].path) for t in truth.values()][:2]
    plain = oracle.predict_flow_maps(imgs)
    tta = oracle.predict_flow_maps(imgs, tta=True)
    assert oracle.calls == [2, 6]  # the flipped passes run in the same batch
    for a, b in zip(plain, tta):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # and a pass whose pipeline flipped (mmseg's own TTA) is refused instead of being un-flipped twice
    ds = SegDataSample(metainfo=dict(flip=True, flip_direction="horizontal"))
    ds.seg_logits = PixelData(data=torch.zeros(3, 4, 5))
    with pytest.raises(ValueError, match="flips"):
        oracle._flow_map(ds, 4, 5)
    np.testing.assert_array_equal(flip_flow_map(flip_flow_map(plain[0], "vertical"), "vertical"), plain[0])


def test_real_network_tta_fixes_signs_once(tiny_sartorius: Path):
    """The real FlowEncoderDecoder (its encode_decode replaced by image gradients, which are flip-equivariant with
    a sign change): TTA maps equal the plain ones away from the padded border."""
    model = load_model(DEMO, None, "cpu", {"data_root": str(tiny_sartorius)})

    def encode_decode(inputs, metas):
        x = inputs[:, :1]
        p = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate")
        dy = p[:, :, 2:, 1:-1] - p[:, :, :-2, 1:-1]
        dx = p[:, :, 1:-1, 2:] - p[:, :, 1:-1, :-2]
        return torch.cat([dy, dx, x], dim=1)

    model.model.encode_decode = encode_decode
    rng = np.random.default_rng(0)
    img = np.repeat((rng.random((40, 56, 1)) * 255).astype(np.uint8), 3, axis=2)
    plain = model.predict_flow_maps([img])[0]
    tta = model.predict_flow_maps([img], tta=True)[0]
    assert np.abs(plain[1]).max() > 0.1
    np.testing.assert_allclose(plain[:, 1:-1, 1:-1], tta[:, 1:-1, 1:-1], atol=1e-4)


def test_flow_prediction_file_recovers_truth_and_fuses_in_both_modes(oracle, truth: dict, tiny_sartorius: Path,
                                                                      tmp_path: Path):  # fmt: skip
    items = [t["item"] for t in truth.values()]
    det = tmp_path / "det_val.npz"
    save_predictions(det, _labelled(truth), meta={"name": "det"})
    flow_file = tmp_path / "flow_val.npz"
    preds = run_inference(
        oracle, items, flow_file, tta=True, image_class_from=det, meta={"name": "flow"}, progress=False
    )
    loaded, meta = load_predictions(flow_file)
    assert meta["flow"] and meta["image_class_from"] == str(det) and meta["has_mask_probs"]
    assert meta["flow_decode"]["min_size"] == 15
    for p in preds:
        t = truth[p.image_id]
        q = loaded[p.image_id]
        assert len(q) == len(p) > 0 and q.mask_probs is not None and q.semantic is None
        assert set(q.labels.tolist()) == {CLASSES.index(t["cell_type"])}  # the image class of det's file
        # score = mean cell probability in the mask (filled holes of the decoded masks lower a few)
        assert np.median(q.scores) == pytest.approx(1 / (1 + np.exp(-LOGIT)), abs=1e-4)
        assert q.scores.min() > 0.9
        assert _iou_recall(q, t["labels"]) >= 0.9
        # exclusive soft masks: zero on the other instances' pixels, the probability on the own mask
        lab = q.masks.to_label_image()
        for i in range(min(len(q), 20)):
            x0, y0, x1, y1 = q.masks.boxes[i]
            sub, crop = lab[y0:y1, x0:x1], q.mask_probs[i]
            assert (crop[(sub > 0) & (sub != i + 1)] == 0).all()
            assert (crop[q.masks.crops[i]] > 0.99).mean() > 0.9  # (filled holes keep their low probability)
    truth_csv = tiny_sartorius / "train.csv"
    # vote mode: the flow file as an instance member, alone and with the detector-like file
    for name, members in (("flow_alone", ["flow"]), ("vote", ["flow", "det"])):
        cfg = {
            "name": name,
            "models": [
                {"name": m, "predictions": str(tmp_path / f"{m}_val.npz"), "weight": 1.0} for m in members
            ],
            "fusion": {"rerank": False},
            "truth": str(truth_csv),
            "out_dir": str(tmp_path / "out"),
        }
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
        assert run_main(["--config", str(tmp_path / f"{name}.yaml"), "--no-progress", "--overlays", "0"]) == 0
        score = json.loads((tmp_path / "out" / f"{name}_score.json").read_text())
        assert score["score"] > 0.8, (name, score["score"])
    # box-first: fuse the boxes of det + flow, the flow model's probability cropped to the fused boxes
    bcfg = {
        "name": "bf",
        "models": [
            {"name": m, "predictions": str(tmp_path / f"{m}_val.npz"), "weight": 1.0} for m in ("det", "flow")
        ],
        "fusion": {"mode": "box_first"},
        "out_dir": str(tmp_path),
    }
    (tmp_path / "boxes.yaml").write_text(yaml.safe_dump(bcfg))
    fused = tmp_path / "fused_boxes_val.npz"
    assert (
        fuse_boxes_main(["--config", str(tmp_path / "boxes.yaml"), "--out", str(fused), "--no-progress"]) == 0
    )
    on_boxes = tmp_path / "flow_on_boxes_val.npz"
    got = run_inference(oracle, items, on_boxes, tta=True, mask_head_on=fused, progress=False)
    given, _ = load_predictions(fused)
    for p in got:
        g = given[p.image_id]
        np.testing.assert_array_equal(p.boxes, g.boxes)
        np.testing.assert_array_equal(p.labels, g.labels)
        assert p.mask_probs is not None and len(p.mask_probs) == len(g)
    cfg = {
        "name": "box_first",
        "models": [{"name": "flow_on_boxes", "predictions": str(on_boxes), "weight": 1.0}],
        "fusion": {"mode": "box_first"},
        "truth": str(truth_csv),
        "out_dir": str(tmp_path / "out"),
    }
    (tmp_path / "bf.yaml").write_text(yaml.safe_dump(cfg))
    assert run_main(["--config", str(tmp_path / "bf.yaml"), "--no-progress", "--overlays", "0"]) == 0
    score = json.loads((tmp_path / "out" / "box_first_score.json").read_text())
    assert score["score"] > 0.5, score["score"]


def test_image_class_rules_and_errors(oracle, truth: dict, tmp_path: Path):
    items = [t["item"] for t in truth.values()]
    ids = [it.image_id for it in items]
    det = tmp_path / "det.npz"
    preds = _labelled(truth)
    # one image whose detector file has no detection: the default class, reported
    empty = ImagePredictions(preds[0].image_id, preds[0].height, preds[0].width, np.zeros((0, 4)), [], [])
    save_predictions(det, [empty, *preds[1:]])
    labels, defaulted = image_labels_from_file(det, ids)
    assert defaulted == [ids[0]] and labels[ids[0]] == 0
    assert all(labels[i] == CLASSES.index(truth[i]["cell_type"]) for i in ids[1:])
    with pytest.raises(ValueError, match="no predictions"):
        image_labels_from_file(det, [*ids, "nope"])
    with pytest.raises(ValueError, match="mask-head-on"):
        run_inference(
            oracle, items, tmp_path / "x.npz", mask_head_on=det, image_class_from=det, progress=False
        )
    with pytest.warns(UserWarning, match="image-class-from"):
        out = run_inference(oracle, items[:1], tmp_path / "y.npz", progress=False)
    assert set(out[0].labels.tolist()) == {0}
    sem = load_model(
        REPO / "configs/unet/se-unet-fre_c8-s4_1xb2-500iter_sartorius-demo-256x256.py", None, "cpu"
    )
    assert not sem.is_flow
    with pytest.raises(ValueError, match="flow models"):
        run_inference(sem, items[:1], tmp_path / "z.npz", image_class_from=det, progress=False)


def test_cli_random_weights_writes_a_flow_file(tiny_sartorius: Path, truth: dict, tmp_path: Path):
    """tools/infer.py on a random-weight checkpoint of the demo flow config: a valid flow prediction file."""
    from workflow.cli.infer import main as infer_main

    model = load_model(DEMO, None, "cpu", {"data_root": str(tiny_sartorius)})
    ckpt = tmp_path / "random.pth"
    torch.save({"state_dict": model.model.state_dict(), "meta": {}}, ckpt)
    det = tmp_path / "det.npz"
    save_predictions(det, _labelled(truth))
    out = tmp_path / "flow.npz"
    ann = tiny_sartorius / "annotations" / "fold0_val.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = infer_main(
            [str(DEMO), str(ckpt), "--ann-file", str(ann), "--out", str(out), "--device", "cpu",
             "--image-class-from", str(det), "--no-progress", "--cfg-options", f"data_root={tiny_sartorius}",
             "flow_decode.min_size=5"]
        )  # fmt: skip
    assert rc == 0
    preds, meta = load_predictions(out)
    assert set(preds) == set(truth) and meta["flow"] and meta["flow_decode"]["min_size"] == 5
    for i, p in preds.items():
        assert p.semantic is None and p.masks is not None
        assert set(p.labels.tolist()) <= {CLASSES.index(truth[i]["cell_type"])}


# -------------------------------------------------------------------------------------------------- recipe
def test_flow_config_serves_the_instance_role():
    from workflow.recipe.config import config_capabilities

    assert config_capabilities(DEMO) == {"instance"}
    assert config_capabilities(REPO / "configs/flow/se-unet-flow_c64-s4_4xb4-40k_sartorius-704x520.py") == {
        "instance"
    }
    assert config_capabilities(
        REPO / "configs/unet/se-unet-fre_c8-s4_1xb2-500iter_sartorius-demo-256x256.py"
    ) == {"semantic"}


def _cmd(step) -> list[str]:
    return [str(a) for a in step.cmd]


@pytest.mark.parametrize("mode", ["vote", "box_first"])
def test_plan_treats_the_flow_model_as_an_instance_member(tmp_path: Path, mode: str):
    from workflow.recipe.config import parse_recipe
    from workflow.recipe.plan import build_plan

    raw = yaml.safe_load(RECIPE.read_text())
    raw["ensemble"]["mode"] = mode
    recipe = parse_recipe(raw, str(RECIPE))
    plan = build_plan(recipe, work_dir=tmp_path / "w")
    ids = [s.id for s in plan.steps]
    pos = {s: k for k, s in enumerate(ids)}
    oof = plan.step("oof/flow/fold0")
    cmd = _cmd(oof)
    src = str(tmp_path / "w" / "predictions" / "val_fold0" / "mask_rcnn.npz")
    assert cmd[cmd.index("--image-class-from") + 1] == src
    assert "oof/mask_rcnn/fold0" in oof.deps and pos["oof/mask_rcnn/fold0"] < pos["oof/flow/fold0"]
    test = _cmd(plan.step("test/flow/fold0"))
    assert test[test.index("--image-class-from") + 1].endswith("test_fold0/mask_rcnn.npz")
    assert DEMO.name not in " ".join(_cmd(plan.step("prepare/boxes")))  # no anchors to analyze
    if mode == "vote":
        for s in ("oof/flow/join", "score/flow", "tune/single_flow", "test/flow/merge"):
            assert s in pos, s
        assert "flow" in [n for n, _, _ in recipe.members()]
    else:
        on = plan.step("oof/flow_on_boxes/fold0")
        c = _cmd(on)
        assert c[c.index("--mask-head-on") + 1].endswith("val_fold0/fused_boxes.npz")
        assert "--image-class-from" not in c
        assert "oof/flow/fold0" in plan.step("oof/fused_boxes/fold0").deps
        assert ("flow_on_boxes", "instance", 1.0) in recipe.members()


def test_flow_recipe_dry_run(capsys):
    from workflow.cli.run_recipe import main as recipe_main

    assert recipe_main([str(RECIPE), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "oof/flow/fold0" in out and "--image-class-from" in out
