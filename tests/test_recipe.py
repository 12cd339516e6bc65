"""Recipes: parsing errors, the --dry-run plan, step skipping / fingerprints / --from / --only, training resume."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml

from workflow.recipe.config import load_recipe, parse_recipe
from workflow.recipe.plan import Plan, Step, build_plan
from workflow.recipe.runner import plan_states, run_plan

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs/recipes/demo_cpu.yaml"
MRCNN = "configs/mask_rcnn/mask-rcnn_r18_fpn_demo-cpu_sartorius.py"
YOLOX = "configs/yolox/yolox_tiny_demo-cpu_sartorius.py"
UPERNET = "configs/upernet/upernet_r18_1xb2-250iter_sartorius-demo-256x256.py"


def _recipe(**over) -> dict:
    d = {
        "name": "t",
        "data": {"synthetic": {"n_images": 4}, "folds": 3, "train_folds": [0]},
        "models": [
            {"name": "mask_rcnn", "config": MRCNN, "role": "instance"},
            {"name": "yolox", "config": YOLOX, "role": "boxes", "masks_from": "mask_rcnn"},
            {"name": "upernet", "config": UPERNET, "role": "semantic", "weight": 0.5},
        ],
        "ensemble": {"mode": "vote", "tune": {"cv": 3}},
    }
    d.update(over)
    return d


def test_shipped_recipes_parse() -> None:
    for p in sorted((REPO / "configs/recipes").glob("*.yaml")):
        r = load_recipe(p)
        assert r.models and r.ensemble.mode in ("vote", "box_first"), p
    demo = load_recipe(DEMO)
    assert [m.name for m in demo.models] == ["mask_rcnn", "yolox", "upernet", "unet"]
    assert demo.data.folds == 3 and demo.trained_folds() == [0]
    assert all(m.min_score is not None for m in demo.models), "every demo model states its minimum"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(extra=1), "unknown key(s) ['extra']"),
        (lambda d: d["models"][0].update(weigth=2), "models[0] (mask_rcnn): unknown key(s) ['weigth']"),
        (lambda d: d["data"].update(fold=2), "data: unknown key(s) ['fold']"),
        (lambda d: d["ensemble"].update(tune={"cvv": 3}), "ensemble.tune: unknown key(s) ['cvv']"),
        (lambda d: d["models"][0].update(config="configs/nope.py"), "config file not found: configs/nope.py"),
        (lambda d: d["models"][1].update(role="instance", masks_from=None), "cannot serve role 'instance'"),
        (lambda d: d["models"][2].update(role="boxes"), "cannot serve role 'boxes'"),
        (lambda d: d["models"][0].update(role="masks"), "unknown role 'masks'"),
        (lambda d: d["models"][1].update(masks_from="upernet"), "is not an 'instance' model"),
        (lambda d: d["models"][0].update(cfg_options={"data_root": "x"}), "'data_root' is set by the recipe"),
        (lambda d: d["models"].append(dict(d["models"][0])), "duplicate model name(s) ['mask_rcnn']"),
        (lambda d: d["data"].update(train_folds=[3]), "fold 3 outside 0..2"),
        (lambda d: d["ensemble"].update(mode="stack"), "unknown mode 'stack'"),
        (lambda d: d.pop("data"), "give 'root' (Kaggle layout) or 'synthetic'"),
    ],
)
def test_recipe_errors_name_file_and_key(change, message: str) -> None:
    d = _recipe()
    change(d)
    with pytest.raises(ValueError) as e:
        parse_recipe(d, "my.yaml")
    assert str(e.value).startswith("my.yaml: ") and message in str(e.value)


def _cli():
    import runpy

    return runpy.run_path(str(REPO / "tools/run_recipe.py"), run_name="run_recipe")["main"]


def test_cli_errors_and_dry_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    main = _cli()
    bad = tmp_path / "bad.yaml"
    d = _recipe()
    d["models"][0]["config"] = "configs/mask_rcnn/missing.py"
    bad.write_text(yaml.safe_dump(d))
    assert main([str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.py" in err
    work = tmp_path / "w"
    assert main([str(DEMO), "--work-dir", str(work), "--dry-run"]) == 0
    out = capsys.readouterr().out
    for step in ("prepare/synthetic", "prepare/folds", "train/mask_rcnn/fold0", "train/yolox/fold0",
                 "oof/yolox_masks/fold0", "tune/ensemble", "test/unet/merge", "submission", "summary"):  # fmt: skip
        assert step in out, step
    assert (
        "--mask-head-on" in out
        and "-m workflow.cli.train configs/yolox/yolox_tiny_demo-cpu_sartorius.py" in out
    )
    assert "<last checkpoint of" in out
    assert not work.exists(), "--dry-run must not write anything"
    assert main([str(DEMO), "--work-dir", str(work), "--dry-run", "--only", "nosuchstep"]) == 2


def test_plan_folds_and_box_first(tmp_path: Path) -> None:
    d = _recipe()
    d["data"]["train_folds"] = [0, 2]
    d["ensemble"] = {"mode": "box_first"}
    r = parse_recipe(d, "x.yaml")
    plan = build_plan(r, work_dir=tmp_path)
    ids = [s.id for s in plan.steps]
    assert "train/yolox/fold2" in ids and "train/yolox/fold1" not in ids
    assert "oof/fused_boxes/fold0" in ids and "oof/mask_rcnn_on_boxes/fold2" in ids
    join = plan.step("oof/mask_rcnn_on_boxes/join")
    assert join.deps == ["oof/mask_rcnn_on_boxes/fold0", "oof/mask_rcnn_on_boxes/fold2"]
    assert [n for n, _, _ in r.members()] == ["mask_rcnn_on_boxes", "upernet"]
    merge = plan.step("test/mask_rcnn_on_boxes/merge")
    assert len(merge.deps) == 2
    # test images: one fused box set over every fold's box models, every fold's mask head on it
    fused = plan.step("test/fused_boxes")
    assert sorted(fused.deps) == [
        "test/mask_rcnn/fold0",
        "test/mask_rcnn/fold2",
        "test/yolox/fold0",
        "test/yolox/fold2",
    ]
    assert plan.step("test/mask_rcnn_on_boxes/fold2").deps[0] == "test/fused_boxes"
    assert fused.func.weights == {
        "yolox_fold0": 0.5,
        "yolox_fold2": 0.5,
        "mask_rcnn_fold0": 0.5,
        "mask_rcnn_fold2": 0.5,
    }
    # every dependency comes before its step
    pos = {s.id: i for i, s in enumerate(plan.steps)}
    assert all(pos[d] < pos[s.id] for s in plan.steps for d in s.deps)


class _Writer:
    """A Python step that writes its output and counts its calls."""

    calls: list[str] = []

    def __init__(self, name: str, out: Path) -> None:
        self.name, self.out = name, out

    def __call__(self, ctx) -> None:
        _Writer.calls.append(self.name)
        self.out.write_text(self.name)


def _toy_plan(tmp_path: Path, param: int = 0) -> Plan:
    r = parse_recipe(_recipe(), "toy.yaml", check_configs=False)
    a, b, c = (tmp_path / f"{n}.txt" for n in "abc")
    steps = [
        Step("prepare/a", "prepare", "a", func=_Writer("a", a), outputs=[a]),
        Step(
            "train/b",
            "train",
            "b",
            func=_Writer("b", b),
            params={"p": param},
            deps=["prepare/a"],
            outputs=[b],
        ),
        Step("tune/c", "tune", "c", func=_Writer("c", c), deps=["train/b"], outputs=[c]),
    ]
    return Plan(recipe=r, work_dir=tmp_path, data_root=tmp_path, steps=steps)


def test_skip_fingerprint_from_and_only(tmp_path: Path) -> None:
    _Writer.calls = []
    res = run_plan(_toy_plan(tmp_path))
    assert _Writer.calls == ["a", "b", "c"] and res["ran"] == ["prepare/a", "train/b", "tune/c"]
    _Writer.calls = []
    res = run_plan(_toy_plan(tmp_path))
    assert _Writer.calls == [] and res["skipped"] == ["prepare/a", "train/b", "tune/c"]
    # a changed parameter redoes that step and what depends on it, nothing before it
    _Writer.calls = []
    run_plan(_toy_plan(tmp_path, param=1))
    assert _Writer.calls == ["b", "c"]
    # a deleted output redoes its step and the dependents
    (tmp_path / "a.txt").unlink()
    _Writer.calls = []
    run_plan(_toy_plan(tmp_path, param=1))
    assert _Writer.calls == ["a", "b", "c"]
    # --from a stage redoes it and everything after it
    _Writer.calls = []
    run_plan(_toy_plan(tmp_path, param=1), from_step="train")
    assert _Writer.calls == ["b", "c"]
    # --only runs just that step; a dependency that is not done is an error
    _Writer.calls = []
    run_plan(_toy_plan(tmp_path, param=1), only=["tune/c"], from_step="tune")
    assert _Writer.calls == ["c"]
    with pytest.raises(ValueError, match="dependency train/b is not done"):
        run_plan(_toy_plan(tmp_path, param=2), only=["tune"])
    states = {s.step.id: s.state for s in plan_states(_toy_plan(tmp_path, param=1))}
    assert states == {"prepare/a": "done", "train/b": "done", "tune/c": "done"}


def test_failed_step_leaves_no_stamp_and_training_resumes(tmp_path: Path) -> None:
    """A training command interrupted after its first checkpoint is resumed (--resume) on the next run."""
    r = parse_recipe(_recipe(), "toy.yaml", check_configs=False)
    tdir = tmp_path / "models" / "m" / "fold0"
    script = tmp_path / "fake_train.py"
    script.write_text(
        "import sys, pathlib\n"
        f"d = pathlib.Path({str(tdir)!r})\n"
        "args = sys.argv[1:]\n"
        "(d / 'calls.txt').open('a').write(' '.join(args) + '\\n')\n"
        "(d / 'iter_1.pth').write_text('x')\n"
        "(d / 'last_checkpoint').write_text(str(d / 'iter_1.pth'))\n"
        "sys.exit(0 if '--resume' in args else 1)   # the first run is 'killed' after a checkpoint\n"
    )
    step = Step("train/m/fold0", "train", "m", cmd=[sys.executable, str(script), "--cfg-options", "a=1"],
                outputs=[tdir / "last_checkpoint"], train_dir=tdir)  # fmt: skip
    plan = Plan(recipe=r, work_dir=tmp_path, data_root=tmp_path, steps=[step])
    with pytest.raises(RuntimeError, match="train/m/fold0 failed"):
        run_plan(plan)
    assert not (tmp_path / ".stamps" / "train__m__fold0.json").exists()
    assert plan_states(plan)[0].state == "resume"
    res = run_plan(plan)
    assert res["ran"] == ["train/m/fold0"]
    calls = (tdir / "calls.txt").read_text().splitlines()
    assert calls == ["--cfg-options a=1", "--resume --cfg-options a=1"]
    assert plan_states(plan)[0].state == "done"
    # a changed training command: the old run is moved aside and training starts clean
    step.cmd = [sys.executable, str(script), "--cfg-options", "a=2"]
    assert plan_states(plan)[0].state == "run"
    with pytest.raises(RuntimeError):
        run_plan(plan)
    assert (tdir.parent / "fold0.stale" / "iter_1.pth").is_file()


def test_concurrent_invocations_wait_for_a_running_step(tmp_path: Path) -> None:
    import subprocess
    import threading

    from workflow.recipe.runner import _lock_path, _wait_for_other_run

    lock = _lock_path(tmp_path, "train/b")
    lock.parent.mkdir(parents=True)
    lock.write_text("999999999\n")  # a dead process: ignored
    assert _wait_for_other_run(tmp_path, "train/b", poll_s=0.05) is False
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.0)"])
    threading.Thread(target=proc.wait, daemon=True).start()  # reaped when it ends (as another invocation is)
    lock.write_text(f"{proc.pid}\n")
    assert _wait_for_other_run(tmp_path, "train/b", poll_s=0.05) is True
    assert proc.poll() is not None, "returned before the other run ended"
    # a full run skips a step that another invocation finished meanwhile; --only ignores other steps' locks
    _Writer.calls = []
    run_plan(_toy_plan(tmp_path))
    lock.write_text(f"{os.getpid()}\n")  # our own pid: not waited for
    _Writer.calls = []
    run_plan(_toy_plan(tmp_path, param=5), only=["train/b"])
    assert _Writer.calls == ["b"]


def test_config_digest_ignores_comments_not_values(tmp_path: Path) -> None:
    from workflow.recipe.plan import _config_digest

    base = tmp_path / "base.py"
    base.write_text("a = 1\nmodel = dict(x=a)\n")
    leaf = tmp_path / "leaf.py"
    leaf.write_text("_base_ = ['./base.py']\nmodel = dict(y=2)\n")
    d0 = _config_digest(str(leaf))
    leaf.write_text("# a new comment\n_base_ = ['./base.py']\n\nmodel = dict(y=2)  # same value\n")
    assert _config_digest(str(leaf)) == d0
    base.write_text("a = 1\nmodel = dict(x=3)\n")  # a value in the _base_ chain
    assert _config_digest(str(leaf)) != d0


def _commands(plan: Plan) -> list[list[str]]:
    return [[str(a) for a in s.cmd] for s in plan.steps if s.cmd is not None]


@pytest.mark.parametrize("path", sorted((REPO / "configs/recipes").glob("*.yaml")), ids=lambda p: p.stem)
def test_plan_runs_modules_never_script_paths(path: Path, tmp_path: Path) -> None:
    """Every command of a shipped recipe is ``python -m <module>`` of an existing module; no path under tools/."""
    import importlib.util

    plan = build_plan(load_recipe(path), work_dir=tmp_path, python="PY")
    cmds = _commands(plan)
    assert cmds
    for cmd in cmds:
        assert cmd[:2] == ["PY", "-m"], cmd
        assert not any("tools/" in a or a.endswith(".sh") for a in cmd), cmd
        modules = [cmd[i + 1] for i, a in enumerate(cmd) if a == "-m"]
        assert all(importlib.util.find_spec(m) is not None for m in modules), modules
        assert modules[-1].startswith("workflow.cli."), cmd


def test_ddp_training_and_bundle_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """gpus > 1: torchrun runs the train module with dist_launch.sh's rendezvous options (read when the step runs);
    the bundle step runs ``-m workflow.cli.make_bundle``."""
    from workflow.recipe import steps as S

    d = _recipe(outputs={"bundle": str(tmp_path / "bundle")})
    d["models"][0]["gpus"] = 2
    plan = build_plan(parse_recipe(d, "x.yaml"), work_dir=tmp_path, python="PY")
    step = plan.step("train/mask_rcnn/fold0")
    cmd = [str(a) for a in step.cmd]
    assert cmd[:3] == ["PY", "-m", "torch.distributed.run"] and "--nproc_per_node=2" in cmd
    i = cmd.index("workflow.cli.train")
    assert cmd[i - 1] == "-m" and cmd[i + 1] == MRCNN and cmd[-2:] == ["--launcher", "pytorch"]
    monkeypatch.setenv("PORT", "29613")
    monkeypatch.delenv("NNODES", raising=False)
    resolved = [a if isinstance(a, str) else a.resolve() for a in step.cmd]
    assert "--master_port=29613" in resolved and "--nnodes=1" in resolved
    assert "${PORT" in step.command_text(), "the dry run shows the variable, not its value"
    bundle = plan.step("bundle")
    assert isinstance(bundle.func, S.Bundle)

    class Ctx:
        cmds: list[list[str]] = []

        def run(self, cmd: list[str]) -> str:
            self.cmds.append(cmd)
            return ""

    bundle.func(Ctx())
    assert Ctx.cmds[0][:3] == ["PY", "-m", "workflow.cli.make_bundle"]


def test_tool_env_sets_no_pythonpath(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tools run as installed modules: the step environment adds no PYTHONPATH."""
    from workflow.execution import tool_env

    monkeypatch.delenv("PYTHONPATH", raising=False)
    env = tool_env()
    assert "PYTHONPATH" not in env and env["PYTHONUNBUFFERED"] == "1"
