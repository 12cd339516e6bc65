"""Faults (fast): a step's process tree dies with its runner (SIGINT / SIGTERM / SIGHUP / SIGKILL), orphans of a
dead runner are stopped by the next run, two runners share a work dir, corrupt or missing outputs rerun their
step, checkpoints cut short are set aside before a resume, write failures stop with one line naming the path."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from workflow.checkpoint_integrity import checkpoint_problem, resume_point
from workflow.execution import failure_reason, write_failure
from workflow.supervisor import alive

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable

# A step that starts a grandchild in a session of its own (as torchrun starts its ranks) and a plain child (as a
# data loader starts its workers), records the pids, then sleeps; IGNORE_TERM=1 makes it ignore SIGTERM.
TREE_STEP = textwrap.dedent(
    """
    import os, signal, subprocess, sys, time
    if os.environ.get("IGNORE_TERM"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
    g = subprocess.Popen(sleeper, start_new_session=True)
    h = subprocess.Popen(sleeper)
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(f"{os.getpid()} {g.pid} {h.pid}\\n")
    os.replace(sys.argv[1] + ".tmp", sys.argv[1])
    print("ready", flush=True)
    if len(sys.argv) > 2:  # exit at once, leaving both children behind
        sys.exit(0)
    time.sleep(120)
    """
)

# A runner: one command step (the tree step, or a writer) in a toy plan, run by run_plan in a work dir.
RUNNER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from workflow.execution import Step
    from workflow.recipe.config import parse_recipe
    from workflow.recipe.plan import Plan
    from workflow.recipe.runner import run_plan

    work, out, cmd = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
    recipe = parse_recipe({"name": "t", "data": {"synthetic": {"n_images": 4}},
                           "models": [{"name": "m", "config": "x.py", "role": "instance"}]},
                          "t.yaml", check_configs=False)
    step = Step("prepare/a", "prepare", "a", cmd=cmd, outputs=[out])
    try:
        res = run_plan(Plan(recipe=recipe, work_dir=work, data_root=work, steps=[step]))
    except RuntimeError as e:
        print(f"runner: error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    print("ran", res["ran"], "skipped", res["skipped"], flush=True)
    """
)


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _wait_file(p: Path, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> str:
    t0 = time.monotonic()
    while not p.is_file():
        assert time.monotonic() - t0 < timeout, f"{p} not written in {timeout} s"
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"runner exited {proc.returncode}: {proc.stderr.read()}")
        time.sleep(0.1)
    return p.read_text()


def _all_gone(pids: list[int], timeout: float) -> list[int]:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        left = [p for p in pids if alive(p)]
        if not left:
            return []
        time.sleep(0.2)
    return [p for p in pids if alive(p)]


def _start_runner(
    tmp_path: Path, name: str, step_args: list[str], env: dict | None = None
) -> subprocess.Popen:
    (tmp_path / "tree_step.py").write_text(TREE_STEP)
    (tmp_path / "runner.py").write_text(RUNNER)
    return subprocess.Popen(
        [PY, str(tmp_path / "runner.py"), str(tmp_path / "work"), str(tmp_path / name), *step_args],
        env=env or _env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_signal_to_runner_stops_the_whole_step_tree(tmp_path: Path, sig: int) -> None:
    """The step, its child and its grandchild in another session all die with the runner, within the grace
    period, whatever signal stopped the runner (SIGKILL: through the supervisor's parent-death signal)."""
    pids_file = tmp_path / "pids"
    runner = _start_runner(tmp_path, "out.txt", [PY, str(tmp_path / "tree_step.py"), str(pids_file)])
    pids = [int(p) for p in _wait_file(pids_file, proc=runner).split()]
    assert all(alive(p) for p in pids)
    t0 = time.monotonic()
    runner.send_signal(sig)
    runner.wait(timeout=30)
    left = _all_gone(pids, timeout=20)
    print(f"{signal.Signals(sig).name}: tree of {len(pids)} stopped in {time.monotonic() - t0:.1f} s")
    assert not left, f"survived {signal.Signals(sig).name}: {left}"
    if sig != signal.SIGKILL:
        assert runner.returncode == 130, runner.stderr.read()
        lock = tmp_path / "work" / ".stamps" / "prepare__a.lock"
        assert not lock.exists(), "an interrupted step releases its lock"


def test_children_left_behind_by_a_finished_step_are_stopped(tmp_path: Path) -> None:
    """A step that exits leaving workers behind (one in its own session): the runner stops them too."""
    pids_file = tmp_path / "pids"
    out = tmp_path / "pids"  # the step's declared output: the pid file
    runner = _start_runner(tmp_path, out.name, [PY, str(tmp_path / "tree_step.py"), str(pids_file), "exit"])
    stdout, stderr = runner.communicate(timeout=60)
    assert runner.returncode == 0, stderr
    pids = [int(p) for p in pids_file.read_text().split()]
    assert not _all_gone(pids[1:], timeout=15), "orphaned children survived their step"


def test_rerun_stops_the_orphan_of_a_killed_runner_and_two_runners_share_a_work_dir(tmp_path: Path) -> None:
    """kill -9 of a runner whose step ignores SIGTERM (so it outlives the runner for the grace period): the
    rerun finds the lock held by the step of a dead runner, stops it, and runs the step itself. A second
    runner started beside a live one waits for its step and skips it."""
    pids_file = tmp_path / "pids"
    env = {**_env(), "IGNORE_TERM": "1"}
    runner = _start_runner(tmp_path, "out.txt", [PY, str(tmp_path / "tree_step.py"), str(pids_file)], env)
    pids = [int(p) for p in _wait_file(pids_file, proc=runner).split()]
    runner.kill()
    runner.wait(timeout=10)
    assert alive(pids[0]), "the step ignores SIGTERM: it outlives its runner for the grace period"
    # the rerun: its step writes the output at once
    writer = [PY, "-c", f"open({str(tmp_path / 'out.txt')!r}, 'w').write('second run')"]
    rerun = _start_runner(tmp_path, "out.txt", writer)
    out, err = rerun.communicate(timeout=90)
    assert rerun.returncode == 0, err
    assert "is gone but its step still runs" in out and "stopping the orphan" in out, out
    assert not _all_gone(pids, timeout=20)
    assert (tmp_path / "out.txt").read_text() == "second run"
    # two live runners: the second waits for the first's step, then finds it done
    (tmp_path / "out.txt").unlink()
    append = f"import time; time.sleep(2); open({str(tmp_path / 'out.txt')!r}, 'a').write('ran\\n')"
    a = _start_runner(tmp_path, "out.txt", [PY, "-c", append])
    lock = tmp_path / "work" / ".stamps" / "prepare__a.lock"
    _wait_file(lock)
    b = _start_runner(tmp_path, "out.txt", [PY, "-c", append])
    out_b, err_b = b.communicate(timeout=90)
    out_a, err_a = a.communicate(timeout=90)
    assert a.returncode == 0 and b.returncode == 0, (err_a, err_b)
    assert "waiting for it" in out_b and "skipped ['prepare/a']" in out_b, out_b
    assert (tmp_path / "out.txt").read_text() == "ran\n", "one run's output"


class _Write:
    """A Python step writing ``text`` to ``out``."""

    def __init__(self, out: Path, text: str) -> None:
        self.out, self.text, self.calls = out, text, 0

    def __call__(self, ctx) -> None:
        self.calls += 1
        self.out.write_text(self.text)


def _toy(tmp_path: Path):
    from workflow.execution import Step
    from workflow.recipe.config import parse_recipe
    from workflow.recipe.plan import Plan

    recipe = parse_recipe(
        {"name": "t", "data": {"synthetic": {"n_images": 4}},
         "models": [{"name": "m", "config": "x.py", "role": "instance"}]},
        "t.yaml", check_configs=False,
    )  # fmt: skip
    a, b = tmp_path / "pred.npz", tmp_path / "joined.json"
    wa, wb = _Write(a, "x" * 5000), _Write(b, "{}")
    steps = [
        Step("oof/a", "oof", "a", func=wa, outputs=[a]),
        Step("oof/b", "oof", "b", func=wb, deps=["oof/a"], outputs=[b]),
    ]
    return Plan(recipe=recipe, work_dir=tmp_path, data_root=tmp_path, steps=steps), wa, wb


def test_truncated_changed_or_missing_outputs_rerun_their_step(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from workflow.recipe.runner import plan_states, run_plan

    plan, wa, wb = _toy(tmp_path)
    run_plan(plan)
    assert (wa.calls, wb.calls) == (1, 1)
    a = tmp_path / "pred.npz"
    cases = [
        ("truncated", lambda: a.write_text("x" * 100), "is truncated (100 of 5000 bytes)"),
        ("changed", lambda: a.write_text("y" * 5000), "changed since the step finished"),
        ("missing", lambda: a.unlink(), "is missing"),
    ]
    for n, (label, damage, why) in enumerate(cases, 2):
        damage()
        st = {s.step.id: s for s in plan_states(plan)}
        assert st["oof/a"].state == "run" and why in st["oof/a"].why, (label, st["oof/a"].why)
        capsys.readouterr()
        run_plan(plan)
        out = capsys.readouterr().out
        assert f"oof/a: output {a}" in out and "running it again" in out, out
        assert (wa.calls, wb.calls) == (n, n), label  # the dependent reruns too
        assert a.read_text() == "x" * 5000
    # untouched outputs: everything skipped, even with a rewritten but identical file (content, not mtime)
    a.write_text("x" * 5000)
    run_plan(plan)
    assert (wa.calls, wb.calls) == (4, 4)


def _save_ckpt(path: Path, it: int) -> None:
    import torch

    torch.save({"meta": {"iter": it}, "state_dict": {"w": torch.arange(20000.0) + it}}, path)


def test_checkpoint_integrity_falls_back_or_starts_over(tmp_path: Path) -> None:
    """A kill mid-save: the marker names a truncated checkpoint (or is empty) -> set aside, the newest good one
    resumes; nothing good -> training starts over; a truncated checkpoint newer than the named one is set
    aside as well."""
    wd = tmp_path / "run"
    wd.mkdir()
    for it in (1, 2, 3):
        _save_ckpt(wd / f"iter_{it}.pth", it)
    marker = wd / "last_checkpoint"
    marker.write_text(str(wd / "iter_3.pth"))
    assert resume_point(wd).checkpoint == wd / "iter_3.pth"
    data = (wd / "iter_3.pth").read_bytes()
    (wd / "iter_3.pth").write_bytes(data[: len(data) // 2])  # killed mid-save
    assert "zip" in checkpoint_problem(wd / "iter_3.pth")
    point = resume_point(wd)
    assert point.checkpoint == wd / "iter_2.pth" and (wd / "corrupt" / "iter_3.pth").is_file()
    assert (
        "iter_3.pth, which is truncated" in point.note and "previous good checkpoint iter_2.pth" in point.note
    )
    assert marker.read_text() == str(wd / "iter_2.pth")
    # a newer checkpoint cut short while the marker still names the previous one
    (wd / "iter_3.pth").write_bytes(data[:1000])
    point = resume_point(wd)
    assert point.checkpoint == wd / "iter_2.pth" and "iter_3.pth cut short" in point.note
    assert not (wd / "iter_3.pth").exists()
    # an empty marker (killed while writing it)
    marker.write_text("")
    point = resume_point(wd)
    assert point.checkpoint == wd / "iter_2.pth" and "empty" in point.note
    # a corrupt byte inside a complete archive (CRC)
    raw = bytearray((wd / "iter_2.pth").read_bytes())
    raw[len(raw) // 3] ^= 0xFF
    (wd / "iter_2.pth").write_bytes(bytes(raw))
    point = resume_point(wd)
    assert point.checkpoint == wd / "iter_1.pth", point.note
    (wd / "iter_1.pth").write_bytes(b"PK\x03\x04")
    point = resume_point(wd)
    assert point.checkpoint is None and "training starts over" in point.note
    assert not marker.exists() and not list(wd.glob("*.pth"))


def test_train_cli_resume_uses_the_checked_checkpoint(tmp_path: Path) -> None:
    from workflow.checkpoint_integrity import resume_arg

    wd = tmp_path / "run"
    wd.mkdir()
    _save_ckpt(wd / "iter_1.pth", 1)
    _save_ckpt(wd / "iter_2.pth", 2)
    (wd / "iter_2.pth").write_bytes((wd / "iter_2.pth").read_bytes()[:500])
    (wd / "last_checkpoint").write_text(str(wd / "iter_2.pth"))
    notes: list[str] = []
    assert resume_arg(wd, "auto", notes.append) == str(wd / "iter_1.pth")
    assert "resuming from the previous good checkpoint iter_1.pth" in notes[0]
    assert resume_arg(wd, None) is None and resume_arg(wd, "x.pth") == "x.pth"


def test_a_checkpoint_write_cut_by_a_file_size_limit_is_detected(tmp_path: Path) -> None:
    """torch.save under RLIMIT_FSIZE (a full disk, as mmengine's CheckpointHook meets it) leaves a partial
    file: it fails the integrity check."""
    ck = tmp_path / "iter_5.pth"
    code = (
        "import resource, torch\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, resource.RLIM_INFINITY))\n"
        f"torch.save({{'w': torch.zeros(100_000)}}, {str(ck)!r})\n"
    )
    r = subprocess.run([PY, "-c", code], capture_output=True, text=True, env=_env(), timeout=120)
    assert r.returncode != 0 and ck.is_file() and 0 < ck.stat().st_size <= 50_000
    lines = r.stderr.splitlines()
    assert write_failure(failure_reason(lines), lines) is not None, r.stderr[-300:]
    assert checkpoint_problem(ck) is not None


def _limit_fsize(limit: int):
    def _set() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    return _set


def test_write_failure_stops_with_one_line_naming_the_path_and_rerun_completes(tmp_path: Path) -> None:
    """A step whose output write fails (file-size limit on the runner and its tools): one error line naming
    the output, no stamp, no partial output or temporary file; the rerun without the limit completes."""
    (tmp_path / "runner.py").write_text(RUNNER)
    out = tmp_path / "big.bin"
    writer = [
        PY,
        "-c",
        f"from celldata.fileio import atomic_write_bytes; atomic_write_bytes({str(out)!r}, b'x' * 3_000_000)",
    ]
    cmd = [PY, str(tmp_path / "runner.py"), str(tmp_path / "work"), str(out), *writer]
    r = subprocess.run(
        cmd, capture_output=True, text=True, env=_env(), timeout=120, preexec_fn=_limit_fsize(1_000_000)
    )
    assert r.returncode == 1, r.stderr
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("runner: error:")]
    assert len(err) == 1 and f"cannot write {out}" in err[0] and "File too large" in err[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists() and not list(tmp_path.glob(".big.bin.*")), "nothing half-written"
    assert not (tmp_path / "work" / ".stamps" / "prepare__a.json").exists()
    r = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=120)
    assert r.returncode == 0 and "ran ['prepare/a']" in r.stdout, r.stderr
    assert out.stat().st_size == 3_000_000


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_work_dir_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "runner.py").write_text(RUNNER)
    work = tmp_path / "work"
    work.mkdir()
    work.chmod(0o555)
    try:
        r = subprocess.run([PY, str(tmp_path / "runner.py"), str(work), str(work / "o.txt"), PY, "-c", "pass"],
                           capture_output=True, text=True, env=_env(), timeout=120)  # fmt: skip
    finally:
        work.chmod(0o755)
    assert r.returncode == 1 and "cannot write" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_failure_reason_is_one_line() -> None:
    tb = ["Traceback (most recent call last):\n", '  File "x.py", line 1\n', "ValueError: bad fold\n", "\n"]
    assert failure_reason(tb) == "ValueError: bad fold"
    assert failure_reason(
        ["noise\n", "infer.py: error: checkpoint x.pth does not fit the config\n", "tail\n"]
    ) == ("infer.py: error: checkpoint x.pth does not fit the config")
    assert write_failure("OSError: [Errno 28] No space left on device: '/w/a.npz'") == "/w/a.npz"
    assert write_failure("OSError: [Errno 27] File too large") == ""
    assert write_failure("ValueError: bad fold") is None


def test_a_checkpoint_of_the_wrong_model_is_one_clear_error(tmp_path: Path) -> None:
    """A step reading a checkpoint of another model (infer's fit check, custom_modules.checkpoints): the run
    stops with one line naming the checkpoint, no traceback, no output."""
    pytest.importorskip("mmdet")
    import cv2
    import numpy as np
    import torch

    from workflow.execution import Step
    from workflow.recipe.runner import run_plan

    plan, _, _ = _toy(tmp_path)
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.png"), np.zeros((64, 64), np.uint8))
    wrong = tmp_path / "wrong.pth"
    torch.save({"meta": {}, "state_dict": {"backbone.stem.weight": torch.zeros(3)}}, wrong)
    out = tmp_path / "pred_wrong.npz"
    config = "configs/mask_rcnn/mask-rcnn_r18_fpn_demo-cpu_sartorius.py"
    cmd = [PY, "-m", "workflow.cli.infer", config, str(wrong), "--images", str(images), "--out", str(out),
           "--device", "cpu", "--no-progress"]  # fmt: skip
    plan.steps = [Step("oof/m/fold0", "oof", "m", cmd=cmd, outputs=[out])]
    with pytest.raises(RuntimeError) as e:
        run_plan(plan)
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg and str(wrong) in msg, msg
    assert not out.exists()


def test_a_replaced_or_truncated_final_checkpoint_of_a_finished_training(tmp_path: Path) -> None:
    """A finished training's checkpoint truncated -> the step resumes (from the previous good checkpoint);
    replaced by a complete but different file -> it trains again from the start."""
    from workflow.execution import Step
    from workflow.recipe.runner import plan_states, run_plan

    plan, _, _ = _toy(tmp_path)
    tdir = tmp_path / "models" / "m" / "fold0"
    script = tmp_path / "fake_train.py"
    script.write_text(
        "import pathlib, torch\n"
        f"d = pathlib.Path({str(tdir)!r})\n"
        "for it in (1, 2):\n"
        "    torch.save({'w': torch.arange(5000.0) + it}, d / f'iter_{it}.pth')\n"
        "(d / 'last_checkpoint').write_text(str(d / 'iter_2.pth'))\n"
    )
    plan.steps = [Step("train/m/fold0", "train", "m", cmd=[PY, str(script)], outputs=[tdir / "last_checkpoint"],
                       train_dir=tdir)]  # fmt: skip
    run_plan(plan)
    ck = tdir / "iter_2.pth"
    data = ck.read_bytes()
    ck.write_bytes(data[:-100])
    st = plan_states(plan)[0]
    assert st.state == "resume" and f"output {ck} is truncated" in st.why, st
    _save_ckpt(ck, 7)  # complete, another content
    st = plan_states(plan)[0]
    assert st.state == "run" and "training starts over" in st.why, st
