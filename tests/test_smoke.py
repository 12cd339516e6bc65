"""tools/run_recipe.py RECIPE --smoke (workflow.recipe.smoke): the plan transformation (fast) and the smoke runs of
the GPU recipes on a small synthetic Sartorius-layout set (slow, `make test-slow`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from workflow.recipe.config import load_recipe
from workflow.recipe.smoke import SMOKE_SUFFIX, build_smoke_plan

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("smoke") / "data"
    subprocess.run(
        [sys.executable, "-m", "workflow.cli.make_synthetic", "--out", str(root), "--n-images", "12",
         "--n-test", "2", "--density", "0.3", "--no-progress"],
        check=True, cwd=REPO, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    return root


def _cmd(step) -> list[str]:
    return [str(a) for a in step.cmd]


def test_smoke_plan_transforms_the_recipe(data_root: Path, tmp_path: Path) -> None:
    recipe = load_recipe(REPO / "configs/recipes/sartorius_gpu.yaml")
    sp = build_smoke_plan(recipe, work_dir=tmp_path / "real", data_root=data_root)
    plan = sp.plan
    assert plan.work_dir == tmp_path / f"real{SMOKE_SUFFIX}" and not (tmp_path / "real").exists()
    assert plan.data_root == plan.work_dir / "data"  # a subset written there; the source root is only read
    with open(plan.data_root / "train.csv") as f:
        ids = {line.split(",")[0] for line in list(f)[1:]}
    assert len(ids) == 10  # 2 images per fold x 5 folds
    assert len(list((plan.data_root / "test").iterdir())) == 2
    for m in ("yolox", "mask_rcnn", "upernet"):
        for k in range(5):  # all folds
            cmd = _cmd(plan.step(f"train/{m}/fold{k}"))
            assert "torch.distributed.run" not in cmd[cmd.index("--") :]  # one process
            assert "default_hooks.logger.interval=1" in cmd and "train_dataloader.num_workers=0" in cmd
            assert "val_dataloader.dataset.indices=2" in cmd and "test_dataloader.dataset.indices=2" in cmd
    yolox = _cmd(plan.step("train/yolox/fold0"))
    assert "train_cfg.max_epochs=1" in yolox and "train_dataloader.batch_size=2" in yolox
    assert (
        "train_dataloader.dataset.dataset.indices=4" in yolox
    )  # 2 iterations of 2 images (inside MultiImageMix)
    upernet = _cmd(plan.step("train/upernet/fold0"))
    assert "train_cfg.max_iters=2" in upernet and "train_cfg.val_interval=2" in upernet
    assert "env_cfg.cudnn_benchmark=False" in upernet
    assert any(a.startswith("yolox: 2 GPUs") for a in sp.adaptations)
    assert any(a.startswith("yolox: train batch 8 -> 2") for a in sp.adaptations)
    assert any("cudnn_benchmark" in a for a in sp.adaptations)
    assert plan.recipe.ensemble.tune.rounds == 1
    assert Path(plan.recipe.outputs.submission).parent == plan.work_dir
    assert plan.step("bundle/load").deps == ["bundle"]
    assert all(str(o).startswith(str(plan.work_dir)) for s in plan.steps for o in s.outputs)


def test_smoke_of_livecell_recipe_generates_its_livecell_set(data_root: Path, tmp_path: Path) -> None:
    recipe = load_recipe(REPO / "configs/recipes/sartorius_gpu_livecell.yaml")
    sp = build_smoke_plan(recipe, work_dir=tmp_path / "real", data_root=data_root)
    raw = sp.plan.work_dir / "livecell_raw"
    coco = json.loads((raw / "livecell_coco_train.json").read_text())
    assert coco["images"] and coco["annotations"]
    cmd = _cmd(sp.plan.step("pretrain/livecell"))
    assert str(raw / "livecell_coco_train.json") in cmd and str(sp.plan.work_dir / "livecell") in cmd
    assert "train_cfg.max_epochs=1" in _cmd(sp.plan.step("pretrain/mask_rcnn_livecell"))


def _smoke(recipe: str, data_root: Path, work: Path) -> dict:
    r = subprocess.run(
        [sys.executable, "-m", "workflow.cli.run_recipe", recipe, "--smoke", "--data-root", str(data_root),
         "--work-dir", str(work)],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=3600,
    )  # fmt: skip
    report = json.loads((work.with_name(work.name + SMOKE_SUFFIX) / "smoke_report.json").read_text())
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert not report["failed"] and all(s["peak_rss_mb"] for s in report["steps"])
    assert not work.exists()
    return report


@pytest.mark.slow
def test_smoke_run_sartorius_gpu(data_root: Path, tmp_path: Path) -> None:
    report = _smoke("configs/recipes/sartorius_gpu.yaml", data_root, tmp_path / "gpu")
    assert all(len(s["iter_seconds"]) == 2 for s in report["steps"] if s["id"].startswith("train/"))


@pytest.mark.slow
def test_smoke_run_sartorius_gpu_livecell(data_root: Path, tmp_path: Path) -> None:
    report = _smoke("configs/recipes/sartorius_gpu_livecell.yaml", data_root, tmp_path / "lc")
    starts = list((tmp_path / "lc_smoke" / "models").glob("*/fold0/pretrained_start.json"))
    assert {p.parent.parent.name for p in starts} == {"yolox", "mask_rcnn"}
    assert report["steps"]
