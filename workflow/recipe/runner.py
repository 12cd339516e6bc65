"""Run a recipe plan: skip finished steps, resume interrupted training, time every step.

A step is *done* when its stamp ``<work_dir>/.stamps/<step id>.json`` holds the step's current fingerprint and
all its outputs exist. The fingerprint covers the step's command and parameters and its dependencies'
fingerprints, so changing a config, an option or an upstream result redoes exactly the steps that read it.
A training step whose stamp is missing (interrupted) but whose work dir holds a checkpoint written for the same
fingerprint resumes from it (``--resume``); a work dir trained for another fingerprint is moved aside
(``<dir>.stale``) and training restarts.

``only`` runs just the named steps or stages (their dependencies must be done); ``from_step`` redoes that step
or stage and everything after it; ``dry_run`` prints the plan with each step's state and command. Several
invocations may share a work dir (e.g. ``--only train/yolox`` and ``--only train/mask_rcnn`` on two GPUs beside a
full run): a step being run by one (``.stamps/<step>.lock`` with a live process id) is waited for by the others,
which then skip it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from celldata.fileio import atomic_write_json, atomic_write_text
from workflow.execution import LogContext, Step, execute, tool_env
from workflow.recipe.config import REPO
from workflow.recipe.plan import STAGES, Plan, step_fingerprint

__all__ = ["StepState", "plan_states", "run_plan", "format_plan", "select_steps"]

FINGERPRINT_FILE = "recipe_fingerprint.txt"


@dataclass
class StepState:
    """A step's fingerprint and state: ``done``, ``resume`` (training with a checkpoint) or ``run``."""

    step: Step
    fingerprint: str
    state: str


def _stamp_path(work_dir: Path, step_id: str) -> Path:
    return work_dir / ".stamps" / (step_id.replace("/", "__") + ".json")


def _lock_path(work_dir: Path, step_id: str) -> Path:
    return work_dir / ".stamps" / (step_id.replace("/", "__") + ".lock")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_for_other_run(work_dir: Path, step_id: str, poll_s: float = 10.0) -> bool:
    """While another invocation (e.g. ``--only train/yolox`` started beside this one) runs this step, wait for
    it. Returns whether there was one. A lock left by a dead process is ignored."""
    lock = _lock_path(work_dir, step_id)
    waited = False
    while lock.is_file():
        try:
            pid = int(lock.read_text().strip() or 0)
        except (OSError, ValueError):
            break
        if pid == os.getpid() or not _pid_alive(pid):
            break
        if not waited:
            print(f"        {step_id}: running in another invocation (pid {pid}); waiting for it", flush=True)
            waited = True
        time.sleep(poll_s)
    return waited


def read_stamp(work_dir: Path, step_id: str) -> dict | None:
    """The stamp of a finished step, or None."""
    p = _stamp_path(work_dir, step_id)
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        return None


def _matches(spec: str, step: Step) -> bool:
    """``spec`` names a stage (``train``), a step id (``train/yolox/fold0``) or an id prefix (``train/yolox``)."""
    return spec == step.stage or step.id == spec or step.id.startswith(spec.rstrip("/") + "/")


def select_steps(plan: Plan, specs: Sequence[str]) -> set[str]:
    """Ids of the steps named by ``specs``.

    Raises:
        ValueError: If a spec names no step (the message lists the stages).
    """
    ids: set[str] = set()
    for spec in specs:
        hit = {s.id for s in plan.steps if _matches(spec, s)}
        if not hit:
            raise ValueError(
                f"no step matches {spec!r}; stages: {', '.join(STAGES)}; steps: "
                + ", ".join(s.id for s in plan.steps[:8])
                + (" ..." if len(plan.steps) > 8 else "")
            )
        ids |= hit
    return ids


def _redo_ids(plan: Plan, from_step: str | None) -> set[str]:
    if from_step is None:
        return set()
    first = select_steps(plan, [from_step])
    idx = min(i for i, s in enumerate(plan.steps) if s.id in first)
    return {s.id for s in plan.steps[idx:]}


def _state_of(plan: Plan, s: Step, eff: dict[str, str], redo: set[str]) -> StepState:
    """State of step ``s`` given the effective fingerprints ``eff`` of the steps before it."""
    fp = step_fingerprint(s, [eff.get(d, "absent") for d in s.deps])
    stamp = read_stamp(plan.work_dir, s.id)
    done = (
        s.id not in redo
        and stamp is not None
        and stamp.get("fingerprint") == fp
        and all(Path(o).exists() for o in s.outputs)
    )
    if done:
        state = "done"
    elif s.train_dir is not None and s.id not in redo and _resumable(s.train_dir, fp):
        state = "resume"
    else:
        state = "run"
    return StepState(s, fp, state)


def _effective(plan: Plan, st: StepState) -> str:
    """What dependents fingerprint: the step's fingerprint and when it finished (``pending`` if not done), so a
    step that runs again (even with unchanged inputs) makes its dependents run again."""
    if st.state != "done":
        return st.fingerprint + "@pending"
    stamp = read_stamp(plan.work_dir, st.step.id) or {}
    return f"{st.fingerprint}@{stamp.get('finished')}"


def plan_states(plan: Plan, from_step: str | None = None) -> list[StepState]:
    """Fingerprint and state of every step as things stand (no side effects)."""
    eff: dict[str, str] = {}
    out: list[StepState] = []
    redo = _redo_ids(plan, from_step)
    for s in plan.steps:
        st = _state_of(plan, s, eff, redo)
        eff[s.id] = _effective(plan, st)
        out.append(st)
    return out


def _resumable(train_dir: Path, fp: str) -> bool:
    marker = train_dir / FINGERPRINT_FILE
    return marker.is_file() and marker.read_text().strip() == fp and (train_dir / "last_checkpoint").is_file()


def format_plan(plan: Plan, states: list[StepState], selected: set[str] | None = None) -> str:
    """The plan as text: one block per step with its state and command."""
    lines = [
        f"recipe {plan.recipe.name} ({plan.recipe.source})",
        f"work dir {plan.work_dir}",
        f"data {plan.data_root}",
    ]
    lines += [f"note: {n}" for n in plan.notes]
    for i, st in enumerate(states, 1):
        s = st.step
        state = st.state if selected is None or s.id in selected else "skip (not selected)"
        lines.append(f"[{i:>2}/{len(states)}] {s.id:<40} {state:<8} {s.title}")
        lines.append(f"        {s.command_text()}")
    return "\n".join(lines)


def _prepare_train_dir(step: Step, fp: str, state: str) -> list:
    """Training: resume when possible, else start clean; returns the command to run."""
    assert step.train_dir is not None and step.cmd is not None
    tdir = step.train_dir
    cmd = list(step.cmd)
    if state == "resume":
        cmd.append("--resume")
        return _move_resume_flag(cmd)
    if tdir.exists() and any(tdir.iterdir()):
        stale = tdir.with_name(tdir.name + ".stale")
        if stale.exists():
            shutil.rmtree(stale)
        tdir.rename(stale)
    tdir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(tdir / FINGERPRINT_FILE, fp + "\n")
    return cmd


def _move_resume_flag(cmd: list) -> list:
    """``--resume`` must come before ``--cfg-options`` (whose values run to the end of the line)."""
    cmd = [c for c in cmd if c != "--resume"]
    i = cmd.index("--cfg-options") if "--cfg-options" in cmd else len(cmd)
    return cmd[:i] + ["--resume"] + cmd[i:]


def run_plan(
    plan: Plan,
    only: Sequence[str] | None = None,
    from_step: str | None = None,
    dry_run: bool = False,
    verbose: bool = False,
    keep_going: bool = False,
) -> dict:
    """Run the plan's steps that are not done.

    Args:
        plan: The plan.
        only: Steps / stages to run (others are left as they are; a missing dependency is an error).
        from_step: Redo this step or stage and everything after it.
        dry_run: Print the plan and do nothing.
        verbose: Echo every step's full output (it always goes to ``<work_dir>/logs/``).
        keep_going: After a failed step, continue with the steps that do not depend on it.

    Returns:
        ``{"ran": [...], "skipped": [...], "failed": [...], "seconds": {...}}``.

    Raises:
        ValueError: Unknown step names, or ``only`` with an unfinished dependency outside the selection.
        RuntimeError: A step failed (without ``keep_going``); the message names the step and its log.
    """
    states = plan_states(plan, from_step)
    selected = select_steps(plan, only) if only else None
    if dry_run:
        print(format_plan(plan, states, selected))
        return {"ran": [], "skipped": [], "failed": [], "seconds": {}}
    if selected is not None:
        _check_selected_deps(states, selected)
    env = tool_env()
    result: dict = {"ran": [], "skipped": [], "failed": [], "seconds": {}}
    failed: set[str] = set()
    t_all = time.perf_counter()
    n = len(states)
    redo = _redo_ids(plan, from_step)
    eff: dict[str, str] = {}
    for i, st0 in enumerate(states, 1):
        s = st0.step
        if (selected is None or s.id in selected) and _wait_for_other_run(plan.work_dir, s.id):
            redo.discard(s.id)  # another invocation just ran it
        st = _state_of(plan, s, eff, redo)  # with the stamps of the steps that ran before it
        eff[s.id] = _effective(plan, st)
        if selected is not None and s.id not in selected:
            continue
        if any(d in failed for d in s.deps):
            failed.add(s.id)
            print(f"[{i:>2}/{n}] {s.id}: not run (a dependency failed)", flush=True)
            continue
        state = st.state
        if state == "done":
            stamp = read_stamp(plan.work_dir, s.id) or {}
            print(
                f"[{i:>2}/{n}] {s.id:<40} done ({stamp.get('seconds', 0):.0f} s when it ran), skipped",
                flush=True,
            )
            result["skipped"].append(s.id)
            continue
        verb = "resume" if state == "resume" else "run"
        print(f"[{i:>2}/{n}] {s.id:<40} {verb}: {s.title}", flush=True)
        secs, err = _run_step(plan, st, verbose, env)
        if err is not None:
            failed.add(s.id)
            result["failed"].append(s.id)
            print(f"[{i:>2}/{n}] {s.id}: FAILED after {secs:.0f} s: {err}", file=sys.stderr)
            if not keep_going:
                raise RuntimeError(f"step {s.id} failed: {err}") from err
            continue
        eff[s.id] = _effective(plan, StepState(s, st.fingerprint, "done"))
        result["ran"].append(s.id)
        result["seconds"][s.id] = secs
        print(
            f"[{i:>2}/{n}] {s.id:<40} done in {secs:.1f} s (total {time.perf_counter() - t_all:.0f} s)",
            flush=True,
        )
    return result


def _check_selected_deps(states: list[StepState], selected: set[str]) -> None:
    """``--only``: every dependency of a selected step is selected too or done.

    Raises:
        ValueError: Naming the step and its unfinished dependency.
    """
    by_id = {st.step.id: st for st in states}
    for sid in selected:
        for d in by_id[sid].step.deps:
            if d not in selected and by_id[d].state != "done":
                raise ValueError(
                    f"--only {sid}: its dependency {d} is not done; run it first (or drop --only)"
                )


def _run_step(
    plan: Plan, st: StepState, verbose: bool, env: dict[str, str]
) -> tuple[float, Exception | None]:
    """Run one step under its log and lock and write its stamp when it succeeds.

    Returns:
        The seconds it took and the exception it failed with (``None`` when it succeeded; no stamp then).

    Raises:
        BaseException: An interruption (Ctrl-C, SIGTERM): the lock goes, the step stays unfinished (resumable).
    """
    s = st.step
    log_path = plan.work_dir / "logs" / (s.id.replace("/", "__") + ".log")
    ctx = LogContext(log_path, verbose, env, cwd=REPO)
    stamp_path = _stamp_path(plan.work_dir, s.id)
    if stamp_path.exists():
        stamp_path.unlink()
    lock = _lock_path(plan.work_dir, s.id)
    atomic_write_text(lock, f"{os.getpid()}\n")
    t0 = time.perf_counter()
    try:
        cmd = _prepare_train_dir(s, st.fingerprint, st.state) if s.train_dir is not None else None
        execute(s, ctx, cmd)
    except Exception as e:  # a step failing must not leave a stamp; report it with its log
        lock.unlink(missing_ok=True)
        ctx.log(f"FAILED: {type(e).__name__}: {e}")
        ctx.close()
        return time.perf_counter() - t0, e
    except BaseException:
        lock.unlink(missing_ok=True)
        ctx.close()
        raise
    ctx.close()
    secs = round(time.perf_counter() - t0, 1)
    atomic_write_json(
        stamp_path,
        {
            "id": s.id,
            "fingerprint": st.fingerprint,
            "seconds": secs,
            "finished": time.time(),
            "outputs": [str(o) for o in s.outputs],
            "log": str(log_path),
        },  # fmt: skip
    )
    lock.unlink(missing_ok=True)
    return secs, None
