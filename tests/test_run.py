"""``python -m ensemble.run``: config parsing, fused submission + score report + overlays, malformed input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from _ensemble_data import H, W, make_truth, write_models, write_truth_csv

from ensemble.config import EnsembleConfig, load_config, save_config
from ensemble.masks import FusionParams, fuse_image
from ensemble.metrics import evaluate
from ensemble.predictions import load_predictions
from ensemble.run import draw_overlay, main
from ensemble.score import main as score_main
from ensemble.submission import read_kaggle_truth, read_submission

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("ens")
    truth, types = make_truth(6, seed=0)
    return {
        "tmp": tmp,
        "truth": truth,
        "types": types,
        "truth_csv": write_truth_csv(tmp / "train.csv", truth, types),
        "models": write_models(tmp, truth, types),
    }


def _config(data: dict, path: Path, **fusion) -> Path:
    cfg = {
        "name": "ens",
        "models": [
            {"name": p.stem, "predictions": str(p), "weight": w}
            for p, w in zip(data["models"], [1.0, 2.0, 1.0])
        ],
        "fusion": {"iou_thr": 0.5, "skip_box_thr": 0.0, "vote_thr": 0.5, "semantic_weight": 0.5, **fusion},
        "class_thresholds": {
            "shsy5y": {"score": 0.5, "min_area": 10},
            "astro": {"score": 0.5},
            "cort": {"score": 0.5},
        },
        "truth": str(data["truth_csv"]),
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_example_config_parses_and_round_trips(tmp_path: Path) -> None:
    cfg = load_config(REPO / "configs" / "ensemble" / "sartorius_ensemble.yaml")
    assert [m.name for m in cfg.models] == ["yolox", "mask_rcnn", "upernet"] and cfg.weights == [
        1.0,
        2.0,
        1.0,
    ]
    assert cfg.fusion.score_thr["cort"] == 0.45 and cfg.fusion.min_area["astro"] == 80
    save_config(cfg, tmp_path / "copy.yaml", header="copy")
    again = load_config(tmp_path / "copy.yaml")
    assert again == cfg
    assert (tmp_path / "copy.yaml").read_text().startswith("# copy\n")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c: c.update(modles=[]), "unknown key.*modles"),
        (lambda c: c.update(models=[]), "'models' must be a non-empty list"),
        (lambda c: c["models"][0].update(weight=0), r"models\[0\].weight: must be > 0"),
        (lambda c: c["models"][1].update(weight="two"), r"models\[1\].weight: must be a number"),
        (lambda c: c["models"][0].pop("predictions"), r"models\[0\].predictions: must be a path"),
        (lambda c: c["fusion"].update(iou_threshold=0.5), "fusion: unknown key.*iou_threshold"),
        (lambda c: c["fusion"].update(conf_type="mean"), "fusion: .*conf_type"),
        (lambda c: c["fusion"].update(vote_thr=0), "fusion: .*vote_thr"),
        (lambda c: c["class_thresholds"].update(neuron={"score": 1}), "unknown class 'neuron'"),
        (
            lambda c: c["class_thresholds"].update(astro={"scor": 1}),
            r"class_thresholds.astro: must be a mapping",
        ),
        (lambda c: c["class_thresholds"].update(astro={"min_area": 2.5}), "min_area: must be an integer"),
        (lambda c: c.update(name="a/b"), "'name' must be"),
    ],
)
def test_malformed_config(data: dict, tmp_path: Path, mutate, message: str) -> None:
    cfg = yaml.safe_load(_config(data, tmp_path / "c.yaml").read_text())
    mutate(cfg)
    with pytest.raises(ValueError, match=message):
        EnsembleConfig.from_dict(cfg, source="c.yaml")


def test_run_with_config_writes_submission_report_and_overlays(
    data: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg_path = _config(data, tmp_path / "ens.yaml")
    out = tmp_path / "out" / "ens.csv"
    code = main(["--config", str(cfg_path), "--out", str(out), "--overlays", "3", "--no-progress"])
    stdout = capsys.readouterr().out
    assert code == 0
    assert "per class" in stdout and "0.50  0.55" in stdout
    report = json.loads((tmp_path / "out" / "ens_score.json").read_text())
    assert set(report) >= {"score", "per_class", "per_threshold", "per_image", "config", "n_images"}
    assert report["n_images"] == 6 and set(report["per_class"]) == {"shsy5y", "astro", "cort"}
    # the written submission re-scored by the scoring CLI gives the same number
    capsys.readouterr()
    assert score_main(["--truth", str(data["truth_csv"]), "--submission", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["score"] == pytest.approx(report["score"], abs=1e-12)
    # and it equals fusing by hand with the same parameters
    cfg = load_config(cfg_path)
    models = [load_predictions(p)[0] for p in data["models"]]
    fused = {k: fuse_image([m[k] for m in models], cfg.weights, cfg.fusion).masks for k in data["truth"]}
    assert evaluate(data["truth"], fused).score == pytest.approx(report["score"], abs=1e-12)
    # submission is valid (non-overlapping) and has a row for every image
    sub = read_submission(out, H, W, expected_ids=data["truth"])
    assert set(sub) == set(data["truth"])
    pngs = sorted((tmp_path / "out" / "ens_overlays").glob("*.png"))
    assert len(pngs) == 3
    img = cv2.imread(str(pngs[0]))
    assert img.shape == (H, W, 3) and (img[..., 1] > 200).any() and (img[..., 2] > 200).any()
    # the ensemble beats its weakest instance model (upernet, noisy masks and more spurious detections)
    single = tmp_path / "single" / "up.csv"
    assert main(["--predictions", str(data["models"][2]), "--truth", str(data["truth_csv"]), "--out", str(single),
                 "--overlays", "0", "--no-progress"]) == 0  # fmt: skip
    single_score = json.loads((tmp_path / "single" / "ensemble_score.json").read_text())["score"]
    assert report["score"] > single_score


def test_single_model_and_predictions_mode(data: dict, tmp_path: Path) -> None:
    out = tmp_path / "m.csv"
    assert (
        main(["--predictions", str(data["models"][1]), "--weights", "1", "--out", str(out), "--no-progress"])
        == 0
    )
    sub = read_submission(out, H, W)
    # single model with default parameters == fuse_image of that model alone
    preds, _ = load_predictions(data["models"][1])
    for k, p in preds.items():
        expect = fuse_image([p], [1.0], FusionParams()).masks
        assert len(sub[k]) == len(expect)
    assert not (tmp_path / "m_score.json").exists()  # no truth -> no report
    # two models, no config, with truth
    out2 = tmp_path / "two.csv"
    args = [
        "--predictions",
        str(data["models"][1]),
        str(data["models"][2]),
        "--name",
        "two",
        "--out",
        str(out2),
    ]
    assert main([*args, "--truth", str(data["truth_csv"]), "--overlays", "1", "--no-progress"]) == 0
    assert (tmp_path / "two_score.json").is_file() and len(
        list((tmp_path / "two_overlays").glob("*.png"))
    ) == 1


def _assert_fails(argv: list[str], out_dir: Path, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    before = set(out_dir.rglob("*")) if out_dir.exists() else set()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    after = set(out_dir.rglob("*")) if out_dir.exists() else set()
    assert after == before  # no partial output


def test_run_malformed_inputs(data: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "o"
    out = out_dir / "x.csv"
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"not a zip file")
    _assert_fails(["--predictions", str(corrupt), "--out", str(out)], out_dir, str(corrupt), capsys)
    _assert_fails(
        ["--predictions", str(tmp_path / "nope.npz"), "--out", str(out)], out_dir, "not found", capsys
    )
    truncated = tmp_path / "truncated.npz"
    whole = Path(data["models"][1]).read_bytes()
    truncated.write_bytes(whole[: len(whole) // 2])
    _assert_fails(["--predictions", str(truncated), "--out", str(out)], out_dir, str(truncated), capsys)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, boxes=np.zeros((1, 4)))
    _assert_fails(["--predictions", str(foreign), "--out", str(out)], out_dir, "missing member", capsys)
    # models covering different images
    from ensemble.predictions import save_predictions

    preds, _ = load_predictions(data["models"][1])
    partial = tmp_path / "partial.npz"
    save_predictions(partial, list(preds.values())[:3])
    _assert_fails(
        ["--predictions", str(data["models"][1]), str(partial), "--out", str(out)],
        out_dir,
        "different image set",
        capsys,
    )
    # weights mismatch, bad truth, truth without some predicted image, bad config
    _assert_fails(
        ["--predictions", str(partial), "--weights", "1", "2", "--out", str(out)],
        out_dir,
        "2 weights",
        capsys,
    )
    bad_truth = tmp_path / "bad_train.csv"
    bad_truth.write_text("id,annotation,width,height\nimg00,1 2 3,128,96\n")
    _assert_fails(
        ["--predictions", str(partial), "--truth", str(bad_truth), "--out", str(out)],
        out_dir,
        "odd number",
        capsys,
    )
    small_truth = tmp_path / "small_train.csv"
    small_truth.write_text(f"id,annotation,width,height\nimg00,1 2,{W},{H}\n")
    _assert_fails(
        ["--predictions", str(partial), "--truth", str(small_truth), "--out", str(out)],
        out_dir,
        "no ground truth",
        capsys,
    )
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("name: x\nmodels: [{predictions: a.npz, weight: -1}]\n")
    _assert_fails(["--config", str(cfg), "--out", str(out)], out_dir, "weight: must be > 0", capsys)
    cfg.write_text("name: [unclosed\n")
    _assert_fails(["--config", str(cfg), "--out", str(out)], out_dir, "invalid YAML", capsys)
    assert not out_dir.exists()


def test_draw_overlay_on_black_and_on_image() -> None:
    truth, _ = make_truth(1)
    t = next(iter(truth.values()))
    pic = draw_overlay(None, t, t.subset([0]), "title")
    assert pic.shape == (H, W, 3) and pic.dtype == np.uint8
    assert (pic[..., 1] > 200).any()  # green truth contours
    gray = np.full((H, W), 100, np.uint8)
    pic2 = draw_overlay(gray, None, t)
    assert (pic2[..., 2] > 200).any() and pic2[0, 0].tolist() == [100, 100, 100]


def test_module_entry_point(data: dict, tmp_path: Path) -> None:
    out = tmp_path / "cli.csv"
    ok = subprocess.run(
        [sys.executable, "-m", "ensemble.run", "--predictions", str(data["models"][1]), "--out", str(out),
         "--truth", str(data["truth_csv"]), "--overlays", "0", "--no-progress"],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "score" in ok.stdout and out.is_file()
    truth, _ = read_kaggle_truth(data["truth_csv"])
    assert set(read_submission(out, H, W)) == set(truth)


def test_run_scores_only_the_predicted_images(
    data: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ensemble.predictions import save_predictions

    preds, _ = load_predictions(data["models"][1])
    subset = list(preds.values())[:2]
    part = tmp_path / "part.npz"
    save_predictions(part, subset)
    out = tmp_path / "part.csv"
    argv = [
        "--predictions",
        str(part),
        "--truth",
        str(data["truth_csv"]),
        "--out",
        str(out),
        "--overlays",
        "0",
    ]
    assert main([*argv, "--no-progress"]) == 0
    assert "4 other ground-truth image(s) ignored" in capsys.readouterr().err
    report = json.loads((tmp_path / "ensemble_score.json").read_text())
    assert report["n_images"] == 2 and report["n_truth_images_ignored"] == 4
    fused = {p.image_id: fuse_image([p], [1.0], FusionParams()).masks for p in subset}
    assert report["score"] == pytest.approx(
        evaluate({k: data["truth"][k] for k in fused}, fused).score, abs=1e-12
    )


def test_model_without_boxes_or_semantic_map_is_an_error(data: dict, tmp_path: Path, capsys) -> None:
    from ensemble.predictions import ImagePredictions, save_predictions

    empty = [
        ImagePredictions(k, H, W, np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64), None, None)
        for k in data["truth"]
    ]
    bad = tmp_path / "nothing.npz"
    save_predictions(bad, empty)
    out = tmp_path / "o.csv"
    code = main(["--predictions", str(data["models"][1]), str(bad), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and str(bad) in err and "neither detections" in err
    assert not out.exists()


def test_predictions_dir_applies_a_config_to_test_images(data: dict, tmp_path: Path, capsys) -> None:
    """A tuned config (truth: the validation csv) applied to test predictions: truth ignored with a note."""
    truth, types = make_truth(2, seed=7)
    truth = {f"test{k}": v for k, v in zip(range(2), truth.values())}
    types = {f"test{k}": v for k, v in zip(range(2), types.values())}
    test_dir = tmp_path / "preds_test"
    test_dir.mkdir()
    for p in write_models(test_dir, truth, types):
        p.rename(test_dir / f"{p.stem}_test.npz")
    cfg = _config(data, tmp_path / "tuned.yaml")
    out = tmp_path / "sub" / "test.csv"
    argv = [
        "--config",
        str(cfg),
        "--predictions-dir",
        str(test_dir),
        "--predictions-pattern",
        "{name}_test.npz",
    ]
    assert main([*argv, "--out", str(out), "--no-progress", "--workers", "2"]) == 0
    err = capsys.readouterr().err
    assert "note:" in err and "not in the config's truth" in err
    assert set(read_submission(out, H, W)) == {"test0", "test1"}
    assert not (tmp_path / "sub" / "ens_score.json").exists()
    # the same truth given explicitly must hold the images
    assert main([*argv, "--out", str(out), "--truth", str(data["truth_csv"]), "--no-progress"]) == 2
    assert "have no ground truth" in capsys.readouterr().err
    # an unknown field in the pattern is one clear error
    assert main([*argv[:4], "--predictions-pattern", "{model}.npz", "--out", str(out)]) == 2
    assert "fields are {name}, {file}, {stem}" in capsys.readouterr().err


def test_per_model_semantic_weight_and_evaluation_of(data: dict, tmp_path: Path) -> None:
    from ensemble.run import run_ensemble

    cfg = yaml.safe_load(_config(data, tmp_path / "c.yaml").read_text())
    cfg["models"][2]["semantic_weight"] = 2.0
    parsed = EnsembleConfig.from_dict(cfg, "c.yaml")
    assert parsed.models[2].semantic_weight == 2.0 and parsed.models[0].semantic_weight is None
    assert EnsembleConfig.from_dict(parsed.to_dict(), "again") == parsed
    cfg["models"][2]["semantic_weight"] = -1
    with pytest.raises(ValueError, match=r"models\[2\].semantic_weight: must be >= 0"):
        EnsembleConfig.from_dict(cfg, "c.yaml")
    ids = list(data["truth"])
    assert parsed.evaluation_of(ids) == "untuned"
    tuned = EnsembleConfig.from_dict({**parsed.to_dict(), "tuning": {"images": ids[:3]}}, "t")
    assert tuned.evaluation_of(ids[:3]) == "in-sample"
    assert tuned.evaluation_of(ids[3:]) == "held-out"
    assert tuned.evaluation_of(ids) == "partly in-sample"
    summary = run_ensemble(tuned, out_csv=tmp_path / "r" / "e.csv", overlays=0, progress=False)
    assert summary["evaluation"] == "partly in-sample"
    saved = json.loads((tmp_path / "r" / "ens_score.json").read_text())
    assert saved["evaluation"] == "partly in-sample"
