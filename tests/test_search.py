"""tools/search.py and workflow.search: space validation, TPE study resume, failures, pruning, outputs."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")
pytest.importorskip("mmseg")

from optuna.trial import TrialState  # noqa: E402

import workflow.search as search  # noqa: E402
from custom_modules.config import load_config  # noqa: E402
from workflow.search import SearchSpaceError, parse_search_space, run_search  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("search_cli", REPO / "tools" / "search.py")
search_cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(search_cli)
SHARED = REPO.parent / "shared"
FRE_CFG = REPO / "configs/unet/se-unet-brn-fre_c8-s4_1xb4-160iter_sartorius-cell-64x64.py"
DS_CFG = REPO / "configs/unet/se-unet-brn-ds_c8-s4_1xb4-160iter_sartorius-cell-64x64.py"
FRE_SPACE = REPO / "configs/unet/search/fre_b_x.yaml"
DS_SPACE = REPO / "configs/unet/search/ds_lambda.yaml"
B = "model.backbone.fre_cfg.num_enhanced"
X = "model.backbone.fre_cfg.factor"


def _states(study_dir: Path) -> list[tuple[int, str]]:
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{study_dir / 'study.db'}")
    return [(t.number, t.state.name) for t in study.trials]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("a.b: {type: int, low: 1, high: 5, lo: 2}", r"unknown key\(s\) \['lo'\]"),
        ("a.b: {type: int, low: 5, high: 5}", r"need low < high, got \[5, 5\]"),
        ("a.b: {type: float, low: 0.0, high: 1.0, log: true}", "log scale needs low > 0"),
        ("a.b: {type: int, low: 1.5, high: 5}", "low must be an integer"),
        ("a.b: {type: uniform, low: 1, high: 5}", "type must be one of"),
        ("a.b: {type: categorical, choices: []}", "choices must be a non-empty list"),
        ("a.b: {type: categorical, choices: [1, 2], low: 0}", "categorical takes choices"),
        ("a.b: {type: float, low: 0.1, high: 1.0, step: -1}", "step must be > 0"),
        ("a.b: {type: float, low: 0.1}", "low and high are required"),
        (
            "a.b: {type: float, low: 0.1, high: 1, targets: {c.d: {scale: 2, bias: 1}}}",
            "target 'c.d' takes only",
        ),
        ("- 1\n- 2", "expected a non-empty mapping"),
    ],
)
def test_bad_search_space_gives_one_clear_error(tmp_path, text: str, match: str) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(SearchSpaceError, match=match) as info:
        search.load_search_space(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_unknown_config_key_and_cli_exit_status(tmp_path, capsys) -> None:
    space = tmp_path / "space.yaml"
    space.write_text("model.backbone.fre_cfg.num_enhancd: {type: int, low: 1, high: 8}\n")
    rc = search_cli.main(
        [str(FRE_CFG), "--space", str(space), "--trials", "2", "--study-dir", str(tmp_path / "s")]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "config key 'model.backbone.fre_cfg.num_enhancd' not found" in err[0]
    assert not (tmp_path / "s" / "study.db").exists()  # nothing started
    space.write_text("a: {type: int, low: 3, high: 1}\n")
    assert (
        search_cli.main([str(FRE_CFG), "--space", str(space), "--trials", "2", "--study-dir", str(tmp_path)])
        == 2
    )
    assert "need low < high" in capsys.readouterr().err


def test_params_to_cfg_options_with_targets() -> None:
    specs = parse_search_space(
        {
            "lam": {
                "type": "float",
                "low": 0.1,
                "high": 0.5,
                "targets": {"a.w": {}, "b.0.w": {"scale": -1.0, "offset": 1.0}},
            },
            "c.k": {"type": "categorical", "choices": ["x", "y"]},
        }
    )
    assert search.params_to_cfg_options(specs, {"lam": 0.25, "c.k": "y"}) == {
        "a.w": 0.25,
        "b.0.w": 0.75,
        "c.k": "y",
    }
    with pytest.raises(SearchSpaceError, match="more than one parameter"):
        parse_search_space(
            {
                "a": {"type": "int", "low": 0, "high": 2},
                "b": {"type": "int", "low": 0, "high": 2, "targets": {"a": {}}},
            }
        )


def _fake_train(calls: list, fail_on: set[int] | None = None):
    """Stand-in for one training run: scores near B = 10, X = 50; raises on the listed call numbers."""

    def train_and_score(
        config, cfg_options, work_dir, metric, direction="maximize", report=None, extra_hooks=()
    ):
        calls.append(dict(cfg_options))
        if fail_on and len(calls) - 1 in fail_on:
            raise RuntimeError("CUDA out of memory (simulated)")
        value = 100.0 - abs(cfg_options[B] - 10) - abs(cfg_options[X] - 50.0) / 10
        return value, {"mIoU": value, "IoU.cell": value / 2}

    return train_and_score


def test_cli_trials_failures_resume_and_best_config(tmp_path, monkeypatch, capsys) -> None:
    calls: list = []
    monkeypatch.setattr(search, "train_and_score", _fake_train(calls, fail_on={1}))
    study_dir = tmp_path / "study"
    argv = [str(FRE_CFG), "--space", str(FRE_SPACE), "--study-dir", str(study_dir), "--metric", "mIoU"]
    argv += ["--cfg-options", "data_root=some/where/", "train_cfg.max_iters=7"]
    assert search_cli.main([*argv, "--trials", "3"]) == 0
    assert _states(study_dir) == [(0, "COMPLETE"), (1, "FAIL"), (2, "COMPLETE")]  # the raising trial failed
    assert len(calls) == 3 and all(
        c["train_cfg.max_iters"] == 7 and c["data_root"] == "some/where/" for c in calls
    )
    # resume: --trials is the total, numbering continues
    assert search_cli.main([*argv, "--trials", "5"]) == 0
    assert [n for n, _ in _states(study_dir)] == [0, 1, 2, 3, 4] and len(calls) == 5
    assert search_cli.main([*argv, "--trials", "5"]) == 0  # nothing left to do
    assert len(calls) == 5
    out = capsys.readouterr().out
    assert "5 trials (4 complete, 1 fail)" in out
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{study_dir / 'study.db'}")
    best = study.best_trial
    cfg = load_config(study_dir / "best_config.py")
    assert cfg.model.backbone.fre_cfg.num_enhanced == best.params[B]
    assert cfg.model.backbone.fre_cfg.factor == pytest.approx(best.params[X])
    assert cfg.custom_hooks[0].type == "FRERedrawHook"  # the rest of the searched config is inherited
    rows = (study_dir / "trials.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 5 and "params_model.backbone.fre_cfg.factor" in rows[0]
    for png in ("history.png", "param_scatter.png"):
        assert (study_dir / png).stat().st_size > 1000


def test_interrupted_trial_is_failed_and_retried(tmp_path, monkeypatch) -> None:
    calls: list = []
    monkeypatch.setattr(search, "train_and_score", _fake_train(calls))
    study_dir = tmp_path / "s"
    run_search(FRE_CFG, FRE_SPACE, 2, study_dir, write_outputs=False)
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{study_dir / 'study.db'}")
    orphan = study.ask(
        {
            B: optuna.distributions.IntDistribution(1, 64),
            X: optuna.distributions.FloatDistribution(1, 1000, log=True),
        }
    )
    assert orphan.number == 2  # left RUNNING, as by a killed process
    run_search(FRE_CFG, FRE_SPACE, 3, study_dir, write_outputs=False)
    states = _states(study_dir)
    assert states == [(0, "COMPLETE"), (1, "COMPLETE"), (2, "FAIL"), (3, "COMPLETE")]
    assert calls[-1][B] == orphan.params[B] and calls[-1][X] == orphan.params[X]  # retried with its values


def test_pruner_stops_bad_trials(tmp_path) -> None:
    def objective(config, opts, work_dir, report):
        n = len(list((tmp_path / "marks").glob("*"))) if (tmp_path / "marks").exists() else 0
        (tmp_path / "marks").mkdir(exist_ok=True)
        (tmp_path / "marks" / str(n)).touch()
        value = 0.0 if n >= 4 else 1.0
        for step in (1, 2, 3):
            report(value, step)
        return value

    study = run_search(
        FRE_CFG, FRE_SPACE, 6, tmp_path / "s", pruner="median", objective_fn=objective, write_outputs=False
    )
    states = [t.state for t in study.trials]
    assert states[:4] == [TrialState.COMPLETE] * 4 and states[4:] == [TrialState.PRUNED] * 2
    with pytest.raises(ValueError, match="pruner"):
        run_search(FRE_CFG, FRE_SPACE, 1, tmp_path / "t", pruner="asha")


def test_best_config_through_list_keys(tmp_path) -> None:
    specs = search.load_search_space(DS_SPACE)
    opts = search.params_to_cfg_options(specs, {"ds_lambda": 0.4})
    path = tmp_path / "best.py"
    path.write_text(search.best_config_text(DS_CFG, tmp_path, opts))
    cfg = load_config(path)
    assert cfg.model.auxiliary_head.loss_decode.loss_weight == pytest.approx(0.4)
    assert [d.loss_weight for d in cfg.model.decode_head.loss_decode] == pytest.approx([0.6, 0.6])
    assert [d.type for d in cfg.model.decode_head.loss_decode] == ["CrossEntropyLoss", "DiceLoss"]


@pytest.mark.slow
def test_real_training_trial_on_real_images(tmp_path) -> None:
    """One 2-iteration trial through the real Runner on the real images (prepared into tmp_path)."""
    src = SHARED / "data" / "sartorius_real_train"
    if not (src / "train.csv").is_file():
        pytest.skip(f"real training images not available at {src}")
    from celldata.prepare import prepare_sartorius

    root = tmp_path / "data"
    shutil.copytree(src, root)
    prepare_sartorius(root, show_progress=False)
    rc = search_cli.main(
        [
            str(FRE_CFG),
            "--space",
            str(FRE_SPACE),
            "--trials",
            "1",
            "--study-dir",
            str(tmp_path / "study"),
            "--metric",
            "IoU.cell",
            "--cfg-options",
            f"data_root={root}/",
            "train_cfg.max_iters=2",
            "train_cfg.val_interval=2",
            "default_hooks.checkpoint.interval=2",
        ]
    )
    assert rc == 0
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{tmp_path / 'study' / 'study.db'}")
    trial = study.trials[0]
    assert trial.state == TrialState.COMPLETE and 0.0 <= trial.value <= 100.0
    assert trial.user_attrs["val/IoU.cell"] == trial.value and "val/mIoU" in trial.user_attrs


def test_per_class_iou_metric_keys_and_cell_dataset_labels(tmp_path) -> None:
    """The metric keys ``--metric IoU.<class>`` relies on, and the cell / boundary label merge of the study."""
    import numpy as np
    import torch
    from mmengine.registry import DefaultScope
    from mmseg.registry import DATASETS, METRICS
    from mmseg.utils import register_all_modules

    import custom_modules.seg  # noqa: F401  (registers the datasets and the metric)
    from celldata.fileio import atomic_write_png

    register_all_modules(init_default_scope=False)

    lab = np.array([[0, 1, 2, 3, 4, 0]], dtype=np.uint8).repeat(4, axis=0)
    atomic_write_png(tmp_path / "train" / "a.png", np.full((4, 6), 128, np.uint8))
    atomic_write_png(tmp_path / "semantic" / "train" / "a.png", np.minimum(lab, 3))
    atomic_write_png(tmp_path / "semantic" / "train_boundary" / "a.png", lab)
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "val.txt").write_text("a\n")
    pipeline = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations"), dict(type="PackSegInputs")]
    with DefaultScope.overwrite_default_scope("mmseg"):
        cell, boundary = (
            DATASETS.build(
                dict(
                    type=kind,
                    data_root=str(tmp_path),
                    ann_file="splits/val.txt",
                    data_prefix=dict(img_path="train", seg_map_path=f"semantic/{labels}"),
                    pipeline=pipeline,
                )
            )
            for kind, labels in (
                ("SartoriusCellDataset", "train"),
                ("SartoriusCellBoundaryDataset", "train_boundary"),
            )
        )
        metric = METRICS.build(dict(type="PerClassIoUMetric", iou_metrics=["mIoU"]))
    gt = cell[0]["data_samples"].gt_sem_seg.data[0]
    assert gt[0].tolist() == [0, 1, 1, 1, 1, 0]  # three cell types merged; label 4 absent from semantic/train
    assert boundary[0]["data_samples"].gt_sem_seg.data[0][0].tolist() == [0, 1, 1, 1, 2, 0]
    assert cell.metainfo["classes"] == ("background", "cell")
    metric.dataset_meta = cell.metainfo
    pred = gt.clone()
    pred[:, 1] = 0  # one cell column missed: cell IoU 3/4, background IoU 2/3
    metric.process([], [dict(pred_sem_seg=dict(data=pred[None]), gt_sem_seg=dict(data=gt[None]))])
    out = metric.compute_metrics(metric.results)
    assert out["IoU.cell"] == pytest.approx(75.0) and out["IoU.background"] == pytest.approx(66.67)
    assert out["mIoU"] == pytest.approx((75.0 + 66.67) / 2, abs=0.01)
    assert isinstance(torch.tensor(out["IoU.cell"]).item(), float)
