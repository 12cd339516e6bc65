"""tools/train.py / tools/test.py machinery: one training iteration per family, checkpoint round trip, resume."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("mmdet")

from celldata.images import list_images  # noqa: E402
from custom_modules.inference import InferenceModel, load_model, read_image  # noqa: E402
from custom_modules.runner_utils import build_runner, build_test_runner, prepare_train_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MRCNN_DEMO = REPO / "configs/mask_rcnn/mask-rcnn_r18_fpn_demo-cpu_sartorius.py"
YOLOX_DEMO = REPO / "configs/yolox/yolox_tiny_demo-cpu_sartorius.py"
SEG_DEMO = REPO / "configs/upernet/upernet_r18_1xb2-250iter_sartorius-demo-256x256.py"

NO_VAL = {"val_cfg": None, "val_dataloader": None, "val_evaluator": None}


def _opts(root: Path, max_iters: int, **extra) -> dict:
    opts = {
        "data_root": str(root),
        "train_cfg.max_iters": max_iters,
        "train_cfg.val_interval": max_iters,
        "train_dataloader.num_workers": 0,
        "default_hooks.checkpoint.interval": 1,
        "default_hooks.checkpoint.max_keep_ckpts": 5,
        "default_hooks.logger.interval": 1,
    }
    opts.update(extra)
    return opts


def _logged_iters(run_dir: Path) -> list[int]:
    lines = (run_dir / "vis_data" / "scalars.json").read_text().splitlines()
    return [json.loads(s)["iter"] for s in lines if '"loss"' in s]


def test_mask_rcnn_one_iteration_and_checkpoint_round_trip(tiny_sartorius: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    few = {"model.test_cfg.rcnn.max_per_img": 100}
    runner = build_runner(
        MRCNN_DEMO, work_dir=tmp_path, cfg_options=_opts(tiny_sartorius, 1, **NO_VAL, **few)
    )
    runner.train()
    ckpt = tmp_path / "iter_1.pth"
    assert ckpt.is_file() and runner.iter == 1
    # same outputs from the in-memory model and from the checkpoint loaded (weights_only-safe) into a new model
    runner.model.eval()
    live = InferenceModel(runner.model, runner.cfg, "mmdet")
    img = read_image(list_images(ann_file=tiny_sartorius / "annotations/fold0_val.json")[0].path)
    a = live.predict(img, "x")
    loaded = load_model(MRCNN_DEMO, ckpt, "cpu", {"data_root": str(tiny_sartorius), **few}, max_per_img=100)
    b = loaded.predict(img, "x")
    assert len(a) == len(b) > 0
    assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.scores, b.scores)
    assert np.array_equal(a.masks.boxes, b.masks.boxes)
    assert all(np.array_equal(x, y) for x, y in zip(a.masks.crops, b.masks.crops))
    # the checkpoint loads with weights_only=True under onedl-mmengine's allow-list (no unsafe fallback needed)
    from mmengine.runner.checkpoint import get_torch_safe_globals

    with torch.serialization.safe_globals(get_torch_safe_globals()):
        sd = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    own = runner.model.state_dict()
    assert set(sd) == set(own) and all(torch.equal(sd[k], own[k]) for k in own)


def test_yolox_train_validate_and_resume(tiny_sartorius: Path, tmp_path: Path) -> None:
    opts = _opts(tiny_sartorius, 2, **{"val_dataloader.dataset.indices": 1})
    runner = build_runner(YOLOX_DEMO, work_dir=tmp_path, cfg_options=opts)
    runner.train()
    assert (tmp_path / "iter_1.pth").is_file() and (tmp_path / "iter_2.pth").is_file()
    first_run = sorted(p for p in tmp_path.iterdir() if p.is_dir())[-1]
    assert _logged_iters(first_run) == [1, 2]
    val_lines = [
        s for s in (first_run / "vis_data" / "scalars.json").read_text().splitlines() if "bbox_mAP" in s
    ]
    assert val_lines, "validation at the end of training did not report the metric"
    # interrupted run: resume from the latest checkpoint and continue to iteration 3
    runner2 = build_runner(
        YOLOX_DEMO, work_dir=tmp_path, cfg_options=_opts(tiny_sartorius, 3, **NO_VAL), resume="auto"
    )
    runner2.train()
    assert runner2.iter == 3 and (tmp_path / "iter_3.pth").is_file()
    second_run = sorted(p for p in tmp_path.iterdir() if p.is_dir() and p != first_run)[-1]
    assert _logged_iters(second_run) == [3]
    # explicit checkpoint: continue from iteration 1
    cfg = prepare_train_config(
        YOLOX_DEMO, tmp_path / "b", _opts(tiny_sartorius, 2, **NO_VAL), str(tmp_path / "iter_1.pth")
    )
    assert cfg.resume is True and cfg.load_from.endswith("iter_1.pth")
    # tools/test.py path: evaluate the final checkpoint with the config's evaluator
    tr = build_test_runner(
        YOLOX_DEMO, tmp_path / "iter_3.pth", work_dir=tmp_path / "test",
        cfg_options={"data_root": str(tiny_sartorius), "test_dataloader.dataset.indices": 1},
    )  # fmt: skip
    metrics = tr.test()
    assert "sartorius/bbox_mAP" in metrics and 0.0 <= metrics["sartorius/bbox_mAP"] <= 1.0


def test_same_train_entry_point_trains_an_mmseg_config(tiny_sartorius: Path, tmp_path: Path) -> None:
    cfg = prepare_train_config(SEG_DEMO, tmp_path, {"data_root": str(tiny_sartorius)})
    assert cfg.default_scope == "mmseg"
    runner = build_runner(SEG_DEMO, work_dir=tmp_path, cfg_options=_opts(tiny_sartorius, 1, **NO_VAL))
    runner.train()
    assert runner.iter == 1 and (tmp_path / "iter_1.pth").is_file()


def _tool(name: str) -> dict:
    return runpy.run_path(str(REPO / "tools" / name), run_name="tool_under_test")


def test_cli_errors_exit_nonzero_with_message(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert _tool("train.py")["main"](["configs/nope.py", "--work-dir", str(tmp_path)]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert _tool("test.py")["main"]([str(YOLOX_DEMO), str(tmp_path / "none.pth")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    r = subprocess.run(
        [sys.executable, "tools/train.py", "configs/nope.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and "config file not found" in r.stderr
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--amp needs a CUDA"):
            prepare_train_config(YOLOX_DEMO, tmp_path, amp=True)


@pytest.mark.slow
def test_dist_train_two_cpu_processes(tiny_sartorius: Path, tmp_path: Path) -> None:
    opts = [f"{k}={v}" for k, v in _opts(tiny_sartorius, 2).items()] + [
        "val_cfg=None",
        "val_dataloader=None",
        "val_evaluator=None",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHON=sys.executable, PORT="29513")
    r = subprocess.run(
        ["bash", "tools/dist_train.sh", str(YOLOX_DEMO), "2", "--work-dir", str(tmp_path), "--cfg-options", *opts],
        cwd=REPO, capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "iter_2.pth").is_file()
    assert "Distributed training: True" in r.stdout + r.stderr


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic data of `make demo` (24 images at real cell density), prepared with 5 folds."""
    from celldata.prepare import prepare_sartorius
    from celldata.synthetic import generate_synthetic_dataset

    root = tmp_path_factory.mktemp("demo_synthetic")
    generate_synthetic_dataset(root, n_images=24, n_test=2, seed=0, show_progress=False)
    prepare_sartorius(root, folds=5, seed=0)
    return root


@pytest.mark.slow
@pytest.mark.parametrize(
    ("config", "key", "minimum"),
    [(MRCNN_DEMO, "sartorius/score", 0.05), (YOLOX_DEMO, "sartorius/bbox_mAP_50", 0.02)],
    ids=["mask_rcnn", "yolox"],
)
def test_cpu_demo_configs_learn(
    config: Path, key: str, minimum: float, demo_data: Path, tmp_path: Path
) -> None:
    """The CPU demo schedules (a few minutes each) learn something measurable on the synthetic data."""
    runner = build_runner(config, work_dir=tmp_path, cfg_options={"data_root": str(demo_data)})
    runner.train()
    value = runner.message_hub.get_scalar(f"val/{key}").current()
    assert value > minimum, f"{key} = {value} after the demo schedule"


@pytest.mark.slow
def test_recipe_ddp_step_trains_two_cpu_processes(
    tiny_sartorius: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A recipe model with ``gpus: 2`` trains through the plan's own command (``python -m torch.distributed.run
    ... -m workflow.cli.train ... --launcher pytorch``), here as two CPU processes (gloo)."""
    from workflow.execution import LogContext, execute
    from workflow.recipe.config import parse_recipe
    from workflow.recipe.plan import build_plan

    short = {k: v for k, v in _opts(tiny_sartorius, 2, **NO_VAL).items() if k != "data_root"}
    recipe = parse_recipe(
        {
            "name": "ddp",
            "data": {"root": str(tiny_sartorius), "folds": 2},
            "models": [
                {"name": "mask_rcnn", "config": str(MRCNN_DEMO), "role": "instance"},
                {"name": "yolox", "config": str(YOLOX_DEMO), "role": "boxes", "masks_from": "mask_rcnn",
                 "gpus": 2, "cfg_options": short},
            ],
        },
        "ddp.yaml",
    )  # fmt: skip
    step = build_plan(recipe, work_dir=tmp_path).step("train/yolox/fold0")
    assert "torch.distributed.run" in step.command_text() and "-m workflow.cli.train" in step.command_text()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PORT", "29514")
    ctx = LogContext(tmp_path / "train.log", verbose=False, cwd=REPO)
    execute(step, ctx)
    ctx.close()
    log = (tmp_path / "train.log").read_text()
    assert "--master_port=29514" in log.splitlines()[0] and "Distributed training: True" in log
    assert (step.train_dir / "iter_2.pth").is_file()
