"""``python -m ensemble.tune``: tuning never lowers the validation score and writes a valid, reproducible config."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from _ensemble_data import make_truth, write_models, write_truth_csv

from ensemble.config import EnsembleConfig, ModelEntry, load_config
from ensemble.masks import FusionParams
from ensemble.metrics import evaluate
from ensemble.pipeline import FuseState
from ensemble.predictions import load_predictions
from ensemble.run import run_ensemble
from ensemble.submission import read_sample_ids
from ensemble.tune import SearchSpace, Tuner, group_folds, main, tune

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


def _state(data: dict, sel: slice = slice(None)) -> FuseState:
    cfg = EnsembleConfig("t", [ModelEntry(p.stem, str(p)) for p in data["paths"][sel]])
    return FuseState.from_config(cfg, data["models"][sel])


def test_tuner_scores_agree_with_evaluate(data: dict) -> None:
    state = _state(data)
    tuner = Tuner(state, data["truth"])
    params = FusionParams(semantic_weight=0.5, score_thr={"astro": 0.3})
    w = [1.0, 2.0, 1.0]
    fused = {k: state.fuse(k, w, params).masks for k in data["truth"]}
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
    tuner = Tuner(_state(data), data["truth"])
    start_w, start_p = [1.0, 1.0, 1.0], FusionParams()
    res = tune(tuner, start_w, start_p, method=method, space=SMALL, rounds=2, trials=12, seed=0)
    assert res.start_score == pytest.approx(tuner.score(start_w, start_p))
    assert (
        res.score > res.start_score + 0.05
    )  # the synthetic models leave a lot to gain (spurious detections)
    assert res.score == pytest.approx(tuner.score(res.weights, res.params), abs=1e-12)
    assert res.history and res.history[-1][1] == pytest.approx(res.score)


def test_single_model_tuning(data: dict) -> None:
    tuner = Tuner(_state(data, slice(1, 2)), data["truth"])
    res = tune(tuner, [1.0], FusionParams(), space=SMALL, rounds=1)
    assert res.weights == [1.0]  # one box model: its weight has no effect and is not searched
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
    # the tuned config reproduces its reported score through the normal run path, and the start config scores
    # strictly lower on this data (the start weights are not the best), so tuning found something real
    start_report = run_ensemble(
        load_config(start), out_csv=tmp_path / "s" / "start.csv", overlays=0, progress=False
    )
    tuned_report = run_ensemble(tuned, out_csv=tmp_path / "t" / "tuned.csv", overlays=0, progress=False)
    assert tuned_report["report"].score > start_report["report"].score + 0.01
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


def _cli_config(data: dict, tmp_path: Path) -> Path:
    cfg = {
        "name": "val",
        "models": [{"name": p.stem, "predictions": str(p), "weight": 1.0} for p in data["paths"]],
        "truth": str(data["truth_csv"]),
    }
    start = tmp_path / "start.yaml"
    start.write_text(yaml.safe_dump(cfg))
    return start


def test_workers_give_the_same_tuned_yaml(data: dict, tmp_path: Path) -> None:
    start = _cli_config(data, tmp_path)
    texts = []
    for workers in (1, 2):
        out = tmp_path / f"tuned_{workers}.yaml"
        assert main(["--config", str(start), "--out", str(out), "--rounds", "1", "--no-progress",
                     "--workers", str(workers)]) == 0  # fmt: skip
        texts.append(out.read_text())
    assert texts[0] == texts[1]


def test_group_folds_keep_samples_together() -> None:
    ids = [f"i{k}" for k in range(10)]
    groups = {i: f"s{k // 3}" for k, i in enumerate(ids)}  # 4 samples of 3, 3, 3, 1 images
    parts = group_folds(ids, groups, 3)
    assert sorted(i for p in parts for i in p) == sorted(ids)
    for p in parts:
        for g in {groups[i] for i in p}:
            assert all(i in p for i in ids if groups[i] == g), "a sample was split between parts"
    assert sorted(len(p) for p in parts) == [3, 3, 4]
    with pytest.raises(ValueError, match="only 4 sample group"):
        group_folds(ids, groups, 5)


def test_group_folds_are_the_detectors_folds() -> None:
    """Stratified by cell type with celldata.prepare.make_folds: the same parts as the detectors' folds."""
    from celldata.prepare import make_folds

    ids = [f"i{k:02d}" for k in range(24)]
    groups = {i: f"s{k // 2}" for k, i in enumerate(ids)}
    types = {i: ("shsy5y", "astro", "cort")[(k // 2) % 3] for k, i in enumerate(ids)}
    parts = group_folds(ids, groups, 4, types, seed=5)
    fold_of = make_folds(ids, [types[i] for i in ids], [groups[i] for i in ids], 4, 5)
    assert parts == [[i for i, f in zip(ids, fold_of) if f == k] for k in range(4)]
    for p in parts:  # 4 samples of each type over 4 parts: one of each type per part
        assert sorted(types[i] for i in p) == ["astro", "astro", "cort", "cort", "shsy5y", "shsy5y"]
    assert group_folds(ids, groups, 4, types, seed=5) == parts  # deterministic


def test_cv_reports_held_out_scores(data: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    start = _cli_config(data, tmp_path)
    out = tmp_path / "tuned_cv.yaml"
    assert (
        main(["--config", str(start), "--out", str(out), "--rounds", "1", "--no-progress", "--cv", "3"]) == 0
    )
    printed = capsys.readouterr().out
    tuned = load_config(out)
    cv = tuned.tuning["cv"]
    assert cv["k"] == 3 and len(cv["folds"]) == 3
    groups = read_sample_ids(data["truth_csv"])
    assert sum(f["n_held_out"] for f in cv["folds"]) == len(groups)
    for f in cv["folds"]:
        assert 0.0 <= f["score_held_out"] <= 1.0 and f["n_tune"] + f["n_held_out"] == len(groups)
    assert "held-out (3-fold CV grouped by sample_id)" in printed and "(in-sample)" in printed
    assert "held-out" in out.read_text().splitlines()[1]
    # the held-out estimate is the mean of per-image held-out scores, so it lies within the fold range
    lo = min(f["score_held_out"] for f in cv["folds"])
    hi = max(f["score_held_out"] for f in cv["folds"])
    assert lo - 1e-6 <= cv["score_held_out"] <= hi + 1e-6
    # ensemble.run labels a score of the tuning images in-sample
    rep = run_ensemble(tuned, out_csv=tmp_path / "r" / "r.csv", overlays=0, progress=False, workers=1)
    assert rep["evaluation"] == "in-sample"
