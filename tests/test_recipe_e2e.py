"""The recipe end to end with the project's real tools on a tiny synthetic dataset (slow: trains three models for
a few iterations): every stage runs, the summary is written, a second run skips everything, --from redoes."""

from __future__ import annotations

import json
import re
import runpy
from pathlib import Path

import pytest
import yaml

pytest.importorskip("mmdet")
pytest.importorskip("mmseg")

REPO = Path(__file__).resolve().parents[1]
SHORT = {"train_cfg.max_iters": 2, "train_cfg.val_interval": 2, "default_hooks.checkpoint.interval": 1}


@pytest.mark.slow
def test_recipe_end_to_end_and_rerun(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    recipe = {
        "name": "tiny",
        "data": {"synthetic": {"n_images": 6, "n_test": 2, "density": 0.2, "seed": 0}, "folds": 2},
        "models": [
            {"name": "mask_rcnn", "config": "configs/mask_rcnn/mask-rcnn_r18_fpn_demo-cpu_sartorius.py",
             "role": "instance", "cfg_options": SHORT, "min_score": 0.0},
            {"name": "yolox", "config": "configs/yolox/yolox_tiny_demo-cpu_sartorius.py", "role": "boxes",
             "masks_from": "mask_rcnn", "cfg_options": SHORT},
            {"name": "upernet", "config": "configs/upernet/upernet_r18_1xb2-250iter_sartorius-demo-256x256.py",
             "role": "semantic", "weight": 0.5, "cfg_options": SHORT, "min_score": 0.0},
        ],
        "ensemble": {"mode": "vote", "fusion": {"semantic_weight": 0.5}, "tune": {"rounds": 1, "cv": 2}},
        "outputs": {"submission": str(tmp_path / "sub.csv"), "overlays": 1},
    }  # fmt: skip
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe))
    work = tmp_path / "work"
    main = runpy.run_path(str(REPO / "tools/run_recipe.py"), run_name="run_recipe")["main"]
    assert main([str(path), "--work-dir", str(work)]) == 0
    summary = json.loads((work / "summary.json").read_text())
    names = [m["name"] for m in summary["members"]]
    assert names == ["mask_rcnn", "yolox_masks", "upernet"]
    assert all(m["value"] is not None for m in summary["members"])
    ens = {e["name"]: e for e in summary["ensembles"]}
    assert {"ensemble", "single_mask_rcnn", "single_yolox_masks"} <= set(ens)
    assert ens["ensemble"]["tuned_held_out"] is not None, "tune --cv 2 gives a held-out score"
    assert (tmp_path / "sub.csv").is_file() and (work / "summary.md").is_file()
    assert (work / "plots" / "score_per_class.png").is_file()
    # the tools ran as installed modules (python -m workflow.cli.<tool>), never as script paths
    for step in ("prepare__folds", "train__mask_rcnn__fold0", "oof__yolox_masks__fold0"):
        first = (work / "logs" / f"{step}.log").read_text().splitlines()[0]
        assert first.startswith("$ ") and " -m workflow.cli." in first and "tools/" not in first, first
    capsys.readouterr()
    # second run: every step is skipped
    assert main([str(path), "--work-dir", str(work)]) == 0
    out = capsys.readouterr().out
    assert "ran 0 step(s)" in out and out.count("skipped") >= len(summary["step_seconds"])
    # --from tune redoes tuning and what follows, not training
    assert main([str(path), "--work-dir", str(work), "--from", "tune"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"tune/ensemble\s+run", out) and re.search(r"train/mask_rcnn/fold0\s+done", out)
