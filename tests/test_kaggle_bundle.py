"""python -m workflow.cli.make_bundle and workflow.bundle: what goes into a Kaggle bundle, and what is refused."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("mmdet")
import torch  # noqa: E402

from ensemble.predictions import ImagePredictions, save_predictions  # noqa: E402
from workflow.bundle import (  # noqa: E402
    BundleError,
    inference_plan,
    load_bundle,
    make_bundle,
    paths_outside,
    validate_submission,
)
from workflow.execution import LogContext, execute  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
YOLOX_DEMO = REPO / "configs/yolox/yolox_tiny_demo-cpu_sartorius.py"
MRCNN_DEMO = REPO / "configs/mask_rcnn/mask-rcnn_r18_fpn_demo-cpu_sartorius.py"


def test_demo_configs_exist() -> None:
    assert YOLOX_DEMO.is_file() and MRCNN_DEMO.is_file()


@pytest.fixture(scope="module")
def yolox_state() -> dict[str, torch.Tensor]:
    from custom_modules.inference import load_model

    torch.manual_seed(0)
    return {k: v.clone() for k, v in load_model(YOLOX_DEMO, None, "cpu").model.state_dict().items()}


def _training_checkpoint(path: Path, sd: dict[str, torch.Tensor], ema: bool = True) -> Path:
    """A checkpoint shaped like an mmengine Runner's (EMAHook: averaged weights under state_dict)."""
    ckpt = {
        "meta": {"iter": 7, "epoch": 0, "dataset_meta": {"classes": ["shsy5y", "astro", "cort"]}},
        "state_dict": sd,
        "optimizer": {"state": {i: {"momentum_buffer": v.clone()} for i, v in enumerate(sd.values())}},
        "message_hub": {"log_scalars": {}},
    }
    if ema:
        ckpt["ema_state_dict"] = {f"module.{k}": v + 1 for k, v in sd.items()} | {"steps": torch.tensor(7)}
    torch.save(ckpt, path)
    return path


def _pred_file(path: Path, meta: dict) -> Path:
    p = ImagePredictions("img0", 64, 64, np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64))
    save_predictions(path, [p], meta={"library": "mmdet", "has_masks": False, **meta})
    return path


def _ensemble(path: Path, models: list[tuple[str, Path]]) -> Path:
    cfg = {
        "name": "tuned",
        "models": [{"name": n, "predictions": str(p), "weight": 1.5} for n, p in models],
        "fusion": {"iou_thr": 0.6},
        "class_thresholds": {"astro": {"score": 0.4, "min_area": 30}},
        "truth": str(path.parent / "fold0_val.json"),
        "images_dir": str(path.parent),
        "out_dir": str(path.parent / "subs"),
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_bundle_holds_stripped_weights_and_bundle_relative_paths(tmp_path: Path, yolox_state: dict) -> None:
    ckpt = _training_checkpoint(tmp_path / "iter_7.pth", yolox_state)
    pred = _pred_file(
        tmp_path / "yolox_val.npz",
        {
            "config": str(YOLOX_DEMO),
            "checkpoint": str(ckpt),
            "tta": True,
            "score_thr": 0.01,
            "max_per_img": 300,
        },
    )
    ens = _ensemble(tmp_path / "tuned.yaml", [("yolox", pred)])
    out = tmp_path / "bundle"
    bundle = make_bundle(ens, out)

    assert bundle == load_bundle(out)  # every listed file present with its sha256
    (m,) = bundle["models"]
    assert (m["name"], m["role"], m["tta"], m["score_thr"], m["max_per_img"]) == (
        "yolox",
        "boxes",
        True,
        0.01,
        300,
    )
    (f,) = m["folds"]
    assert f["ema_weights"] is True and f["trained_iter"] == 7
    # weights only (EMA = state_dict under mmengine's EMAHook), no optimizer / message hub / raw copy
    saved = torch.load(out / f["checkpoint"], map_location="cpu", weights_only=True)
    assert set(saved) == {"state_dict", "meta"}
    assert set(saved["state_dict"]) == set(yolox_state)
    assert all(torch.equal(saved["state_dict"][k], yolox_state[k]) for k in yolox_state)
    assert f["checkpoint_bytes"] < f["source"]["checkpoint_bytes"] == ckpt.stat().st_size
    # the rewritten ensemble: same tuned parameters, prediction files named relative to the notebook's folder
    tuned = yaml.safe_load((out / "ensemble.yaml").read_text())
    assert tuned["models"] == [{"name": "yolox", "predictions": "yolox.npz", "weight": 1.5}]
    assert tuned["fusion"]["iou_thr"] == 0.6 and tuned["class_thresholds"]["astro"] == {
        "score": 0.4,
        "min_area": 30,
    }
    assert "truth" not in tuned and "images_dir" not in tuned
    assert paths_outside(tuned, out) == []
    # the config is resolved and references nothing outside the bundle
    text = (out / f["config"]).read_text()
    assert "_base_" not in text and "data_root" not in text and "load_from" not in text
    from mmengine.config import Config

    assert paths_outside(Config.fromfile(str(out / f["config"])).to_dict(), out) == []


def test_paths_outside_flags_absolute_and_parent_paths(tmp_path: Path) -> None:
    obj = {"a": "x.npz", "b": ["models/m/config.py", {"c": "/abs/file.pth"}], "d": "../up/file.npz"}
    assert paths_outside(obj, tmp_path) == ["/abs/file.pth", "../up/file.npz"]


def test_refuses_missing_checkpoint(tmp_path: Path) -> None:
    pred = _pred_file(
        tmp_path / "y.npz", {"config": str(YOLOX_DEMO), "checkpoint": str(tmp_path / "gone.pth")}
    )
    ens = _ensemble(tmp_path / "t.yaml", [("yolox", pred)])
    with pytest.raises(BundleError, match=r"model 'yolox'.*checkpoint .*gone\.pth not found"):
        make_bundle(ens, tmp_path / "b")
    # random-weight predictions record no checkpoint
    pred2 = _pred_file(tmp_path / "y2.npz", {"config": str(YOLOX_DEMO), "checkpoint": None})
    ens2 = _ensemble(tmp_path / "t2.yaml", [("yolox", pred2)])
    with pytest.raises(BundleError, match="no checkpoint recorded"):
        make_bundle(ens2, tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_refuses_checkpoint_that_does_not_load_into_its_config(tmp_path: Path, yolox_state: dict) -> None:
    bad = dict(yolox_state)
    key = next(k for k, v in bad.items() if v.ndim == 4)
    bad[key] = torch.zeros(3, *bad[key].shape[1:])  # wrong number of output channels
    ckpt = _training_checkpoint(tmp_path / "bad.pth", bad, ema=False)
    pred = _pred_file(tmp_path / "y.npz", {"config": str(YOLOX_DEMO), "checkpoint": str(ckpt)})
    ens = _ensemble(tmp_path / "t.yaml", [("yolox", pred)])
    with pytest.raises(BundleError, match=r"does not load into the config.*shape mismatch"):
        make_bundle(ens, tmp_path / "b")
    # a checkpoint of another architecture: names missing
    missing = {k: v for k, v in yolox_state.items() if not k.startswith("bbox_head")}
    ckpt2 = _training_checkpoint(tmp_path / "other.pth", missing, ema=False)
    pred2 = _pred_file(tmp_path / "y2.npz", {"config": str(YOLOX_DEMO), "checkpoint": str(ckpt2)})
    with pytest.raises(BundleError, match=r"missing key\(s\) \(bbox_head\."):
        make_bundle(_ensemble(tmp_path / "t2.yaml", [("yolox", pred2)]), tmp_path / "b")
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob(".b.*"))


def test_cli_exits_2_with_one_message(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    main = runpy.run_path(str(REPO / "tools/kaggle/make_bundle.py"), run_name="tool_under_test")["main"]
    pred = _pred_file(tmp_path / "y.npz", {"config": str(YOLOX_DEMO), "checkpoint": str(tmp_path / "no.pth")})
    ens = _ensemble(tmp_path / "t.yaml", [("yolox", pred)])
    assert main(["--ensemble", str(ens), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("make_bundle.py: error: model 'yolox'")
    # --model names a model the ensemble does not have
    assert (
        main(["--ensemble", str(ens), "--out", str(tmp_path / "b"), "--model", "nope", "a.py", "b.pth"]) == 2
    )
    assert "not models of" in capsys.readouterr().err


def test_mask_head_provider_is_bundled_and_planned_first(tmp_path: Path, yolox_state: dict) -> None:
    """Masks predicted on another file's boxes: the box model joins the bundle and runs before the mask model."""
    ckpt = _training_checkpoint(tmp_path / "y.pth", yolox_state, ema=False)
    boxes = _pred_file(
        tmp_path / "yolox_val.npz", {"config": str(YOLOX_DEMO), "checkpoint": str(ckpt), "name": "yolox"}
    )
    # the "mask head" model here is the same YOLOX (the planner only needs the recorded provenance)
    heads = _pred_file(
        tmp_path / "heads_val.npz",
        {"config": str(YOLOX_DEMO), "checkpoint": str(ckpt), "mask_head_on": str(boxes), "has_masks": True},
    )
    ens = _ensemble(tmp_path / "t.yaml", [("heads", heads)])
    bundle = make_bundle(ens, tmp_path / "b")
    names = [(m["name"], m["role"], m["in_ensemble"], m["masks_from"]) for m in bundle["models"]]
    assert names == [("yolox", "boxes", False, None), ("heads", "mask_head", True, "yolox")]
    images = tmp_path / "test"
    images.mkdir()
    plan = inference_plan(tmp_path / "b", images, tmp_path / "work", tmp_path / "sub.csv", device="cpu")
    assert [s.title for s in plan] == ["yolox", "heads", "ensemble"]
    assert plan[1].cmd[plan[1].cmd.index("--mask-head-on") + 1] == str(
        (tmp_path / "work" / "yolox.npz").resolve()
    )
    assert "--tta" not in plan[0].cmd and plan[0].cmd[plan[0].cmd.index("--device") + 1] == "cpu"
    assert plan[2].cmd[1:3] == ["-m", "ensemble.run"]
    assert plan[0].cmd[1:3] == ["-m", "workflow.cli.infer"]  # the installed module, no script path
    assert plan[2].cmd[plan[2].cmd.index("--predictions-dir") + 1] == str((tmp_path / "work").resolve())


def test_load_bundle_detects_a_corrupted_file(tmp_path: Path, yolox_state: dict) -> None:
    ckpt = _training_checkpoint(tmp_path / "y.pth", yolox_state, ema=False)
    pred = _pred_file(tmp_path / "y.npz", {"config": str(YOLOX_DEMO), "checkpoint": str(ckpt)})
    make_bundle(_ensemble(tmp_path / "t.yaml", [("yolox", pred)]), tmp_path / "b")
    cfg = tmp_path / "b/models/yolox/config.py"
    cfg.write_text(cfg.read_text().replace("YOLOX", "YOLOY"))
    with pytest.raises(BundleError, match="does not match its sha256"):
        load_bundle(tmp_path / "b")
    data = json.loads((tmp_path / "b/bundle.json").read_text())
    data["models"][0]["role"] = "oracle"
    (tmp_path / "b/bundle.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="role 'oracle'"):
        load_bundle(tmp_path / "b", verify=False)


def test_validate_submission_needs_every_test_image(tmp_path: Path) -> None:
    import cv2

    images = tmp_path / "test"
    images.mkdir()
    for i in ("a", "b"):
        cv2.imwrite(str(images / f"{i}.png"), np.zeros((8, 10), np.uint8))
    sub = tmp_path / "s.csv"
    sub.write_text("id,predicted\na,1 3 11 3\nb,\n")
    assert validate_submission(sub, images) == {
        "images": 2, "instances": 1, "empty_images": 1, "per_image": {"a": 1, "b": 0},
    }  # fmt: skip
    sub.write_text("id,predicted\na,1 3\n")
    with pytest.raises(ValueError, match=r"1 test image\(s\) without any row.*'b'"):
        validate_submission(sub, images)
    sub.write_text("id,predicted\na,1 3\na,2 3\nb,\n")
    with pytest.raises(ValueError, match="overlaps"):
        validate_submission(sub, images)


def test_fold_merged_model_bundles_every_fold_and_plans_the_merge(tmp_path: Path, yolox_state: dict) -> None:
    """A recipe's test file merges K fold models: the bundle holds K networks and the notebook merges them again."""
    folds = []
    for k in range(2):
        sd = {n: v + k for n, v in yolox_state.items()}
        ckpt = _training_checkpoint(tmp_path / f"fold{k}.pth", sd, ema=False)
        boxes = np.array([[10, 10, 30, 30], [40, 40, 60, 50]], np.float32) + k
        p = ImagePredictions("img0", 64, 64, boxes, np.array([0.9, 0.6 - 0.1 * k]), np.zeros(2, np.int64))
        f = tmp_path / f"test_fold{k}" / "yolox.npz"
        f.parent.mkdir()
        save_predictions(
            f, [p], meta={"library": "mmdet", "config": str(YOLOX_DEMO), "checkpoint": str(ckpt)}
        )
        folds.append(f)
    merged = _pred_file(
        tmp_path / "yolox_test.npz",
        {
            "config": str(YOLOX_DEMO),
            "checkpoint": str(tmp_path / "fold0.pth"),
            "folds_merged": [str(f) for f in folds],
        },
    )
    ens = _ensemble(tmp_path / "t.yaml", [("yolox", merged)])
    bundle = make_bundle(ens, tmp_path / "b")
    (m,) = bundle["models"]
    assert [f["checkpoint"] for f in m["folds"]] == [
        "models/yolox/fold0/weights.pth",
        "models/yolox/fold1/weights.pth",
    ]
    w1 = torch.load(tmp_path / "b" / m["folds"][1]["checkpoint"], weights_only=True)["state_dict"]
    assert all(torch.equal(w1[n], yolox_state[n] + 1) for n in yolox_state)  # fold 1's own weights
    with pytest.raises(BundleError, match="merges 2 fold models"):
        make_bundle(ens, tmp_path / "b2", models={"yolox": (str(YOLOX_DEMO), str(tmp_path / "fold0.pth"))})

    images = tmp_path / "test"
    images.mkdir()
    work = tmp_path / "work"
    plan = inference_plan(tmp_path / "b", images, work, tmp_path / "sub.csv")
    assert [(s.stage, s.title) for s in plan] == [
        ("infer", "yolox fold 0"), ("infer", "yolox fold 1"), ("merge", "yolox (2 folds)"), ("ensemble", "ensemble"),
    ]  # fmt: skip
    assert plan[1].cmd[plan[1].cmd.index("--out") + 1] == str(work.resolve() / "yolox.fold1.npz")
    # the merge step merges the fold files with the recipe's rule (flip-TTA merge)
    for k, f in enumerate(folds):
        (work / f"yolox.fold{k}.npz").write_bytes(f.read_bytes())
    execute(plan[2], LogContext(tmp_path / "plan.log", verbose=False))
    from ensemble.predictions import load_predictions
    from ensemble.tta import merge_tta

    got, meta = load_predictions(work / "yolox.npz")
    want = merge_tta([load_predictions(f)[0]["img0"] for f in folds])
    assert np.allclose(got["img0"].boxes, want.boxes) and np.allclose(got["img0"].scores, want.scores)
    assert meta["folds_merged"] == [str(work.resolve() / f"yolox.fold{k}.npz") for k in range(2)]


def test_box_first_bundle_replays_fuse_boxes_before_the_mask_heads(tmp_path: Path, yolox_state: dict) -> None:
    """Box-first: the mask model ran on fused boxes; the bundle holds the box model and step 1's YAML."""
    from ensemble.fuse_boxes import main as fuse_main
    from ensemble.predictions import load_predictions

    ckpt = _training_checkpoint(tmp_path / "y.pth", yolox_state, ema=False)
    boxes = np.array([[10, 10, 30, 30], [12, 11, 31, 30], [40, 40, 60, 50]], np.float32)
    p = ImagePredictions("img0", 64, 64, boxes, np.array([0.9, 0.7, 0.6]), np.array([1, 1, 1]))
    yolox = tmp_path / "yolox_val.npz"
    save_predictions(
        yolox, [p], meta={"library": "mmdet", "config": str(YOLOX_DEMO), "checkpoint": str(ckpt)}
    )
    boxes_yaml = tmp_path / "boxes.yaml"
    boxes_yaml.write_text(yaml.safe_dump({"name": "bf", "models": [{"name": "yolox", "predictions": str(yolox)}],
                                          "fusion": {"iou_thr": 0.5}}))  # fmt: skip
    fused = tmp_path / "fused_val.npz"
    assert fuse_main(["--config", str(boxes_yaml), "--out", str(fused), "--no-progress"]) == 0
    heads = _pred_file(
        tmp_path / "heads_val.npz",
        {"config": str(YOLOX_DEMO), "checkpoint": str(ckpt), "mask_head_on": str(fused), "has_masks": True},
    )
    ens = tmp_path / "t.yaml"
    ens.write_text(yaml.safe_dump({"name": "t", "models": [{"name": "heads", "predictions": str(heads)}],
                                   "fusion": {"mode": "box_first"}}))  # fmt: skip
    bundle = make_bundle(ens, tmp_path / "b")
    assert bundle["mode"] == "box_first"
    got = [(m["name"], m["role"], m["in_ensemble"], m.get("masks_from")) for m in bundle["models"]]
    assert got == [
        ("yolox", "boxes", False, None), ("bf_fused_boxes", "fused_boxes", False, None),
        ("heads", "mask_head", True, "bf_fused_boxes"),
    ]  # fmt: skip
    step1 = yaml.safe_load((tmp_path / "b" / bundle["models"][1]["boxes_config"]).read_text())
    assert step1["models"] == [{"name": "yolox", "predictions": "yolox.npz", "weight": 1.0}]
    assert step1["fusion"]["iou_thr"] == 0.5

    images = tmp_path / "test"
    images.mkdir()
    work = tmp_path / "work"
    plan = inference_plan(tmp_path / "b", images, work, tmp_path / "sub.csv")
    assert [(s.stage, s.title) for s in plan] == [
        ("infer", "yolox"), ("fuse_boxes", "bf_fused_boxes"), ("infer", "heads"), ("ensemble", "ensemble"),
    ]  # fmt: skip
    assert plan[2].cmd[plan[2].cmd.index("--mask-head-on") + 1] == str(work.resolve() / "bf_fused_boxes.npz")
    # step 1 replayed from the bundle gives the fused boxes the mask model was tuned on
    (work / "yolox.npz").write_bytes(yolox.read_bytes())
    execute(plan[1], LogContext(tmp_path / "plan.log", verbose=False))
    a = load_predictions(work / "bf_fused_boxes.npz")[0]["img0"]
    b = load_predictions(fused)[0]["img0"]
    assert len(a) == 2 and np.allclose(a.boxes, b.boxes) and np.allclose(a.scores, b.scores)


# ------------------------------------------------------------------------------------------------------------------
# the recipe's own bundle step on what the recipe writes: fold-merged test members, a tuned YAML with its `tuning:`
# record; the bundle loaded back and its plan run on the test images
# ------------------------------------------------------------------------------------------------------------------
class _InProcess:
    """A step context (``run``/``log``) that runs ``python -m MODULE ARGS`` as ``MODULE.main(ARGS)`` in this process:
    the commands are the ones the recipe and the notebook run, without an interpreter start per command."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.lines: list[str] = []

    def log(self, text: str) -> None:
        self.lines.append(text)

    def run(self, cmd: list) -> str:
        import contextlib
        import importlib
        import io

        assert cmd[1] == "-m", f"not a module command: {cmd}"
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = importlib.import_module(cmd[2]).main([str(c) for c in cmd[3:]])
        self.lines.append(out.getvalue())
        assert rc == 0, f"{' '.join(map(str, cmd))} exited {rc}:\n{out.getvalue()}"
        return out.getvalue()


def _infer(ctx: _InProcess, config: Path, ckpt: Path, images: Path, out: Path, *extra: str) -> Path:
    ctx.run(["python", "-m", "workflow.cli.infer", config, ckpt, "--images", images, "--out", out, "--device", "cpu",
             "--score-thr", "0.001", "--max-per-img", "20", "--no-progress", *extra])  # fmt: skip
    return out


@pytest.fixture(scope="module")
def recipe_test_folds(tiny_sartorius: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two fold checkpoints (random weights) of a YOLOX and a Mask R-CNN, and their raw test predictions as the
    recipe lays them out (``test_fold<k>/<model>.npz``)."""
    from custom_modules.inference import load_model

    work = tmp_path_factory.mktemp("recipe")
    ctx = _InProcess(work / "log")
    ckpts, raw = {}, {}
    for name, config in (("yolox", YOLOX_DEMO), ("mask_rcnn", MRCNN_DEMO)):
        for k in range(2):
            torch.manual_seed(k)
            sd = load_model(config, None, "cpu").model.state_dict()
            ckpts[name, k] = _training_checkpoint(work / f"{name}_fold{k}.pth", sd, ema=False)
            out = work / "predictions" / f"test_fold{k}" / f"{name}.npz"
            raw[name, k] = _infer(ctx, config, ckpts[name, k], tiny_sartorius / "test", out)
    return {
        "work": work,
        "ckpts": ckpts,
        "raw": raw,
        "images": tiny_sartorius / "test",
        "root": tiny_sartorius,
    }


def _derived_test_members(folds: dict, mode: str, ctx: _InProcess) -> dict[str, Path]:
    """The mode's members' fold-merged test files, made as the recipe makes them (box-first: one fused box set over
    every fold model's boxes, each fold's mask head on it; vote: each fold's mask head on that fold's YOLOX boxes)."""
    from workflow.recipe.steps import MergeFolds

    P, raw = folds["work"] / mode / "predictions", folds["raw"]
    heads: dict[str, list[Path]] = {}
    if mode == "box_first":
        fuse_yaml, fused = P / "test" / "fuse_boxes.yaml", P / "test" / "fused_boxes.npz"
        fuse_yaml.parent.mkdir(parents=True)
        fuse_yaml.write_text(yaml.safe_dump({"name": "fused_boxes", "fusion": {"mode": "box_first", "iou_thr": 0.55},
                                             "models": [{"name": f"{n}_fold{k}", "predictions": str(p), "weight": 0.5}
                                                        for (n, k), p in raw.items()]}))  # fmt: skip
        ctx.run(
            ["python", "-m", "ensemble.fuse_boxes", "--config", fuse_yaml, "--out", fused, "--no-progress"]
        )
        heads["mask_rcnn_on_boxes"] = [fused, fused]
    else:
        heads["yolox_masks"] = [raw["yolox", k] for k in range(2)]
    parts = {n: [P / f"test_fold{k}" / f"{n}.npz" for k in range(2)] for n in heads}
    for n, boxes in heads.items():
        for k in range(2):
            _infer(ctx, MRCNN_DEMO, folds["ckpts"]["mask_rcnn", k], folds["images"], parts[n][k],
                   "--mask-head-on", str(boxes[k]), "--name", n)  # fmt: skip
    if mode == "vote":
        parts["mask_rcnn"] = [raw["mask_rcnn", k] for k in range(2)]
    members = {n: P / "test" / f"{n}_test.npz" for n in parts}
    for n, files in parts.items():
        MergeFolds(files, members[n])(ctx)
    return members


@pytest.mark.parametrize("mode", ["box_first", "vote"])
def test_recipe_bundle_step_on_a_tuned_ensemble_runs_offline(recipe_test_folds: dict, mode: str) -> None:
    """The recipe's Submission and Bundle steps on a tuned YAML that keeps its ``tuning:`` record (truth path
    included): the bundle is made (no path outside it, the record's numbers kept), make_bundle's summary prints
    every entry (fused boxes too), and the bundle's plan reproduces the recipe's submission on the test images."""
    from ensemble.config import load_config as load_ensemble
    from workflow.recipe.steps import Bundle, Submission

    folds, work = recipe_test_folds, recipe_test_folds["work"] / mode
    ctx = _InProcess(work / "log")
    members = _derived_test_members(folds, mode, ctx)
    truth = folds["root"] / "train.csv"
    record = {"method": "coordinate", "truth": str(truth), "n_images": 6, "score_start": 0.21, "score_in_sample": 0.25,
              "cv": {"k": 2, "grouped_by": "sample_id", "score_held_out": 0.23}, "images": ["img_a", "img_b"]}  # fmt: skip
    tuned = work / "ensemble" / "ensemble_tuned.yaml"
    tuned.parent.mkdir(parents=True)
    tuned.write_text(yaml.safe_dump({
        "name": "ensemble_tuned", "truth": str(truth), "tuning": record,
        "models": [{"name": n, "predictions": str(work / "oof" / f"{n}_val.npz"), "weight": 1.0} for n in members],
        "fusion": {"mode": mode, "iou_thr": 0.55}, "class_thresholds": {"astro": {"score": 0.3, "min_area": 10}},
    }))  # fmt: skip
    test_yaml, sub = work / "ensemble" / "ensemble_test.yaml", work / "submission.csv"
    Submission(tuned, members[next(iter(members))].parent, test_yaml, sub, sys.executable)(ctx)
    assert load_ensemble(test_yaml).tuning == record  # what the bundle step gets keeps the truth path

    Bundle(test_yaml, work / "bundle", sys.executable)(
        ctx
    )  # python -m workflow.cli.make_bundle ... --overwrite
    bundle = load_bundle(work / "bundle")  # every file with its sha256
    summary = ctx.lines[-1].splitlines()
    assert len(summary) == len(bundle["models"]) + 1 and summary[-1].startswith(f"wrote {work / 'bundle'}")
    shipped = yaml.safe_load((work / "bundle" / "ensemble.yaml").read_text())
    assert paths_outside(shipped, work / "bundle") == [] and "truth" not in shipped
    assert shipped["tuning"] == {**record, "truth": "train.csv"}  # numbers and ids kept, the path reduced
    roles = [
        (m["name"], m["role"], len(m["folds"]) if "folds" in m else m["n_folds"]) for m in bundle["models"]
    ]
    if (
        mode == "box_first"
    ):  # every fold model's boxes fused once (one fused file), the mask head per fold on it
        assert roles == [("yolox_fold0", "boxes", 1), ("yolox_fold1", "boxes", 1), ("mask_rcnn_fold0", "instance", 1),
                         ("mask_rcnn_fold1", "instance", 1), ("fused_boxes_fused_boxes", "fused_boxes", 1),
                         ("mask_rcnn_on_boxes", "mask_head", 2)]  # fmt: skip
    else:  # each fold's mask head on that fold's boxes
        boxes = YOLOX_DEMO.stem  # the recipe's raw predictions carry the config name
        assert roles == [(boxes, "boxes", 2), ("yolox_masks", "mask_head", 2), ("mask_rcnn", "instance", 2)]
        assert bundle["models"][1]["masks_from"] == boxes
        assert [f["masks_from_fold"] for f in bundle["models"][1]["folds"]] == [0, 1]

    out = work / "offline" / "submission.csv"
    plan = inference_plan(
        work / "bundle", folds["images"], work / "offline" / "predictions", out, device="cpu"
    )
    for step in plan:
        execute(step, ctx)
    assert validate_submission(out, folds["images"])["images"] == 2
    assert out.read_text() == sub.read_text()  # the bundle reproduces the recipe's submission
