"""``python -m ensemble.tune``: tuning never lowers the validation score and writes a valid, reproducible config."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import yaml

from ensemble.config import load_config
from ensemble.masks import FusionParams, fuse_image
from ensemble.metrics import evaluate
from ensemble.predictions import load_predictions
from ensemble.run import run_ensemble
from ensemble.tune import SearchSpace, Tuner, main, tune

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _ensemble_data import make_truth, write_models, write_truth_csv  # noqa: E402

SMALL = SearchSpace(
    weights=(0.5, 1.0, 2.0),
    iou_thr=(0.5, 0.6),
    vote_thr=(0.4, 0.6),
    semantic_weight=(0.0, 1.0),
    score_thr=(0.0, 0.2, 0.4),
    min_area=(0, 20),
)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("tune")
    truth, types = make_truth(5, seed=1)
    models = write_models(tmp, truth, types)
    return {
        "tmp": tmp,
        "truth": truth,
        "truth_csv": write_truth_csv(tmp / "train.csv", truth, types),
        "paths": models,
        "models": [load_predictions(p)[0] for p in models],
    }


def test_tuner_scores_agree_with_evaluate(data: dict) -> None:
    tuner = Tuner(data["models"], data["truth"])
    params = FusionParams(semantic_weight=0.5, score_thr={"astro": 0.3})
    w = [1.0, 2.0, 1.0]
    fused = {k: fuse_image([m[k] for m in data["models"]], w, params).masks for k in data["truth"]}
    assert tuner.score(w, params) == pytest.approx(evaluate(data["truth"], fused).score, abs=1e-12)
    # the threshold cache without thresholds reproduces the exact score of the unthresholded fusion
    base = dataclasses.replace(params, score_thr={})
    cache = tuner.threshold_cache(w, params)
    assert tuner.proxy_score(cache, {}, {}) == pytest.approx(tuner.score(w, base), abs=1e-12)
    # memoized: the second call does no work
    n = tuner.n_evaluations
    tuner.score(w, params)
    assert tuner.n_evaluations == n
    assert tuner.has_semantic


@pytest.mark.parametrize("method", ["coord", "tpe"])
def test_tuning_does_not_lower_the_score(data: dict, method: str) -> None:
    tuner = Tuner(data["models"], data["truth"])
    start_w, start_p = [1.0, 1.0, 1.0], FusionParams()
    res = tune(tuner, start_w, start_p, method=method, space=SMALL, rounds=2, trials=12, seed=0)
    assert res.start_score == pytest.approx(tuner.score(start_w, start_p))
    assert res.score >= res.start_score
    assert (
        res.score > res.start_score + 0.05
    )  # the synthetic models leave a lot to gain (spurious detections)
    assert res.score == pytest.approx(tuner.score(res.weights, res.params), abs=1e-12)
    assert res.history and res.history[-1][1] == pytest.approx(res.score)


def test_single_model_tuning(data: dict) -> None:
    tuner = Tuner(data["models"][1:2], data["truth"])
    res = tune(tuner, [1.0], FusionParams(), space=SMALL, rounds=1)
    assert res.weights == [1.0] and res.score >= res.start_score
    with pytest.raises(ValueError, match="1 models but 2 weights"):
        tune(tuner, [1.0, 1.0], FusionParams())
    with pytest.raises(ValueError, match="unknown tuning method"):
        tune(tuner, [1.0], FusionParams(), method="grid")


def test_tune_cli_writes_valid_config(data: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = {
        "name": "val",
        "models": [{"name": p.stem, "predictions": str(p), "weight": 1.0} for p in data["paths"]],
        "truth": str(data["truth_csv"]),
    }
    start = tmp_path / "start.yaml"
    start.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "tuned.yaml"
    assert main(["--config", str(start), "--out", str(out), "--rounds", "1", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    tuned = load_config(out)
    assert tuned.name == "val_tuned" and len(tuned.models) == 3
    assert out.read_text().startswith("# Tuned by python -m ensemble.tune")
    # the tuned config reproduces its reported score through the normal run path, and beats the start
    start_report = run_ensemble(
        load_config(start), out_csv=tmp_path / "s" / "start.csv", overlays=0, progress=False
    )
    tuned_report = run_ensemble(tuned, out_csv=tmp_path / "t" / "tuned.csv", overlays=0, progress=False)
    assert tuned_report["report"].score >= start_report["report"].score
    assert f"-> {tuned_report['report'].score:.5f}" in printed


def test_tune_cli_errors(data: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "nt.yaml"
    cfg.write_text(yaml.safe_dump({"name": "x", "models": [{"predictions": str(data["paths"][1])}]}))
    out = tmp_path / "tuned.yaml"
    assert main(["--config", str(cfg), "--out", str(out)]) == 2
    assert "needs ground truth" in capsys.readouterr().err
    bad_truth = tmp_path / "t.csv"
    bad_truth.write_text("id,annotation,width,height\nimg00,5 0,128,96\n")
    assert main(["--config", str(cfg), "--truth", str(bad_truth), "--out", str(out)]) == 2
    assert "non-positive length" in capsys.readouterr().err
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 broken")
    cfg.write_text(
        yaml.safe_dump({"name": "x", "models": [{"predictions": str(corrupt)}], "truth": str(bad_truth)})
    )
    assert main(["--config", str(cfg), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(corrupt) in err and err.count("\n") == 1
    assert not out.exists()
