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

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from celldata.fileio import atomic_write_json, atomic_write_text
from workflow.checkpoint_integrity import named_checkpoint, resume_point
from workflow.execution import (
    STOP_GRACE_S,
    LogContext,
    Step,
    StepFailed,
    execute,
    interrupt_signals,
    tool_env,
    write_failure,
)
from workflow.recipe.config import REPO
from workflow.recipe.plan import STAGES, Plan, step_fingerprint
from workflow.supervisor import alive, stop_pids, tree_pids

__all__ = ["StepState", "plan_states", "run_plan", "format_plan", "select_steps"]

FINGERPRINT_FILE = "recipe_fingerprint.txt"


@dataclass
class StepState:
    """A step's fingerprint and state: ``done``, ``resume`` (training with a checkpoint) or ``run``; ``why``
    says why a stamped step is not done (an output changed or went missing since it finished)."""

    step: Step
    fingerprint: str
    state: str
    why: str = ""


def _stamp_path(work_dir: Path, step_id: str) -> Path:
    return work_dir / ".stamps" / (step_id.replace("/", "__") + ".json")


def _lock_path(work_dir: Path, step_id: str) -> Path:
    return work_dir / ".stamps" / (step_id.replace("/", "__") + ".lock")


def _pid_alive(pid: int) -> bool:
    return alive(pid)


def _lock_holder(lock: Path) -> dict:
    """What a lock file records: ``{"runner": pid, "step": supervisor pid or None}`` (an old lock file holds
    just the runner's pid); ``{}`` when unreadable."""
    try:
        text = lock.read_text().strip()
    except OSError:
        return {}
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    if isinstance(data, int):
        return {"runner": data}
    return data if isinstance(data, dict) else {}


def _flock_held(lock: Path) -> bool:
    """Whether some process holds the lock file's ``flock`` (a runner, or the supervisor of its step)."""
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing drops a lock taken just now
    return False


def _stop_orphan(step_id: str, holder: dict, grace_s: float = STOP_GRACE_S) -> None:
    """The runner that started a step is gone but the step's processes live on: stop them (their supervisor
    stops its tree on SIGTERM; what is left after the grace period is killed)."""
    sup = int(holder.get("step") or 0)
    print(
        f"        {step_id}: its runner (pid {holder.get('runner')}) is gone but its step still runs "
        f"(supervisor pid {sup}); stopping the orphan",
        flush=True,
    )
    if sup > 0:
        pids = [sup, *tree_pids(sup)]
        stop_pids(finder=lambda: [*pids, *tree_pids(sup)], grace_s=grace_s + 5)


def _wait_for_other_run(work_dir: Path, step_id: str, poll_s: float = 10.0) -> bool:
    """While another invocation (e.g. ``--only train/yolox`` started beside this one) runs this step, wait for
    it. Returns whether there was one. A lock left by a dead runner is ignored; a step still running for a dead
    runner (an orphan: its supervisor still holds the lock) is stopped."""
    lock = _lock_path(work_dir, step_id)
    waited = False
    while lock.is_file():
        holder = _lock_holder(lock)
        runner = int(holder.get("runner") or 0)
        held = _flock_held(lock)
        if runner == os.getpid():
            break
        if runner and not _pid_alive(runner) and held:
            _stop_orphan(step_id, holder)
            if _flock_held(lock):
                time.sleep(poll_s)
            continue
        if not held and not (runner and _pid_alive(runner)):
            break
        if not waited:
            print(
                f"        {step_id}: running in another invocation (pid {runner or '?'}); waiting for it",
                flush=True,
            )
            waited = True
        time.sleep(poll_s)
    return waited


class _StepLock:
    """``.stamps/<step>.lock``: an exclusive ``flock`` (released by the kernel when its holders die, even by
    ``SIGKILL``) with the runner's and the step supervisor's pids in it. The step's supervisor inherits the
    open lock, so the lock stays held while any process of the step lives."""

    def __init__(self, work_dir: Path, step_id: str) -> None:
        self.path = _lock_path(work_dir, step_id)
        self.fd: int | None = None

    def try_acquire(self) -> bool:
        """Take the lock if no one holds it; returns whether it was taken."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        try:
            same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the holder removed the file meanwhile: take the new one
            os.close(fd)
            return self.try_acquire()
        self.fd = fd
        self.record(None)
        return True

    def record(self, step_pid: int | None) -> None:
        """Write the runner's pid and the step supervisor's (None before it starts)."""
        assert self.fd is not None
        data = json.dumps({"runner": os.getpid(), "step": step_pid, "since": time.time()}).encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data + b"\n", 0)

    def release(self) -> None:
        """Remove the lock file and drop the lock."""
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self.fd)
        self.fd = None


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


_FULL_HASH_MAX = 8 << 20  # outputs up to this size are hashed whole; larger ones: size, mtime, head and tail
_EDGE = 1 << 20


def _file_state(p: Path) -> dict:
    """Size and content hash of a file (for a large one: its first and last MiB, and its mtime)."""
    st = p.stat()
    h = hashlib.sha1()
    with open(p, "rb") as f:
        if st.st_size <= _FULL_HASH_MAX:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
            return {"size": st.st_size, "sha1": h.hexdigest()[:16]}
        h.update(f.read(_EDGE))
        f.seek(-_EDGE, os.SEEK_END)
        h.update(f.read(_EDGE))
    return {"size": st.st_size, "sha1": h.hexdigest()[:16], "mtime_ns": st.st_mtime_ns}


def output_state(outputs: Sequence[Path]) -> dict[str, dict]:
    """What a stamp records of a step's outputs, to notice later that one changed, was truncated or went
    missing: every file's size and content hash, every folder's file names and sizes (not recursive), and
    for a training's ``last_checkpoint`` marker the checkpoint it names too."""
    state: dict[str, dict] = {}
    for o in map(Path, outputs):
        if o.is_file():
            state[str(o)] = _file_state(o)
            ckpt = named_checkpoint(o, REPO) if o.name == "last_checkpoint" else None
            if ckpt is not None:
                state[str(ckpt)] = _file_state(ckpt) if ckpt.is_file() else {"missing": True}
        elif o.is_dir():
            files = sorted(f"{p.name}:{p.stat().st_size}" for p in o.iterdir() if p.is_file())
            state[str(o)] = {
                "files": len(files),
                "sha1": hashlib.sha1("\n".join(files).encode()).hexdigest()[:16],
            }
        else:
            state[str(o)] = {"missing": True}
    return state


def _outputs_changed(stamp: dict, step: Step) -> str:
    """Why the stamped outputs of ``step`` no longer hold (``""`` when they do; a stamp without a record of
    its outputs is checked for their existence only)."""
    missing = [str(o) for o in step.outputs if not Path(o).exists()]
    if missing:
        return f"output {missing[0]} is missing"
    recorded = stamp.get("output_state")
    if not isinstance(recorded, dict):
        return ""
    now = output_state(step.outputs)
    for path, rec in recorded.items():
        cur = now.get(path)
        if cur is None and not Path(path).exists():
            return f"output {path} is missing"
        if cur is None:
            cur = _file_state(Path(path)) if Path(path).is_file() else {"missing": True}
        if cur != rec:
            if cur.get("missing"):
                return f"output {path} is missing"
            if "size" in rec and cur.get("size", 0) < rec["size"]:
                return f"output {path} is truncated ({cur.get('size')} of {rec['size']} bytes)"
            return f"output {path} changed since the step finished"
    return ""


def _state_of(plan: Plan, s: Step, eff: dict[str, str], redo: set[str]) -> StepState:
    """State of step ``s`` given the effective fingerprints ``eff`` of the steps before it."""
    fp = step_fingerprint(s, [eff.get(d, "absent") for d in s.deps])
    stamp = read_stamp(plan.work_dir, s.id)
    why = ""
    done = s.id not in redo and stamp is not None and stamp.get("fingerprint") == fp
    if done:
        why = _outputs_changed(stamp, s)
        done = not why
    if done:
        state = "done"
    elif s.train_dir is not None and s.id not in redo and _resumable(s.train_dir, fp):
        state = "resume"
        if why and _replaced_checkpoint(s.train_dir):
            state, why = (
                "run",
                why + " (a complete checkpoint that is not the one trained here: training starts over)",
            )
    else:
        state = "run"
    return StepState(s, fp, state, why)


def _replaced_checkpoint(train_dir: Path) -> bool:
    """A finished training's checkpoint changed but is complete: someone else's (not resumable)."""
    from workflow.checkpoint_integrity import checkpoint_problem

    ckpt = named_checkpoint(train_dir / "last_checkpoint", REPO)
    return ckpt is not None and ckpt.is_file() and checkpoint_problem(ckpt) is None


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
    """Training: resume when possible (from a checked checkpoint, see
    :func:`workflow.checkpoint_integrity.resume_point`), else start clean; returns the command to run."""
    assert step.train_dir is not None and step.cmd is not None
    tdir = step.train_dir
    cmd = list(step.cmd)
    if state == "resume":
        point = resume_point(tdir)
        print(f"        {step.id}: {point.note}", flush=True)
        if point.checkpoint is not None:
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
    selected = select_steps(plan, only) if only else None
    # The states of all steps up front (stamps read, outputs hashed) only where they are shown or checked; the
    # loop below computes each step's state when it gets there.
    if dry_run or selected is not None:
        states = plan_states(plan, from_step)
        if dry_run:
            print(format_plan(plan, states, selected))
            return {"ran": [], "skipped": [], "failed": [], "seconds": {}}
        _check_selected_deps(states, selected)
    env = tool_env()
    result: dict = {"ran": [], "skipped": [], "failed": [], "seconds": {}}
    failed: set[str] = set()
    t_all = time.perf_counter()
    n = len(plan.steps)
    redo = _redo_ids(plan, from_step)
    eff: dict[str, str] = {}
    with interrupt_signals():  # SIGTERM / SIGHUP stop the running step's whole process tree, as Ctrl-C does
        for i, s in enumerate(plan.steps, 1):
            chosen = selected is None or s.id in selected
            wanted = chosen and not any(d in failed for d in s.deps)
            st, lock = _claim(plan, s, eff, redo, wanted)
            eff[s.id] = _effective(plan, st)
            if not chosen:
                continue
            if not wanted:
                failed.add(s.id)
                print(f"[{i:>2}/{n}] {s.id}: not run (a dependency failed)", flush=True)
                continue
            if lock is None:
                stamp = read_stamp(plan.work_dir, s.id) or {}
                print(
                    f"[{i:>2}/{n}] {s.id:<40} done ({stamp.get('seconds', 0):.0f} s when it ran), skipped",
                    flush=True,
                )
                result["skipped"].append(s.id)
                continue
            verb = "resume" if st.state == "resume" else "run"
            print(f"[{i:>2}/{n}] {s.id:<40} {verb}: {s.title}", flush=True)
            if st.why:
                print(f"        {s.id}: {st.why}; running it again", flush=True)
            secs, err = _run_step(plan, st, verbose, env, lock)
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


def _claim(
    plan: Plan, s: Step, eff: dict[str, str], redo: set[str], wanted: bool
) -> tuple[StepState, _StepLock | None]:
    """The state of ``s`` and, when it is to run here (``wanted`` and not done), its lock.

    A step that another invocation is running is waited for (then it is usually done); a step whose runner
    died while the step lives on is stopped first (:func:`_wait_for_other_run`). The state is computed again
    once the lock is held: another invocation may have finished the step just before.
    """
    while True:
        if wanted and _wait_for_other_run(plan.work_dir, s.id):
            redo.discard(s.id)  # another invocation just ran it
        st = _state_of(plan, s, eff, redo)  # with the stamps of the steps that ran before it
        if not wanted or st.state == "done":
            return st, None
        lock = _StepLock(plan.work_dir, s.id)
        try:
            taken = lock.try_acquire()
        except OSError as e:
            raise RuntimeError(f"cannot write {e.filename or lock.path}: {e.strerror}") from e
        if taken:
            st = _state_of(plan, s, eff, redo)
            if st.state != "done":
                return st, lock
            lock.release()
            return st, None


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
    plan: Plan, st: StepState, verbose: bool, env: dict[str, str], lock: _StepLock
) -> tuple[float, Exception | None]:
    """Run one step under its log and ``lock`` (released here) and write its stamp when it succeeds.

    Returns:
        The seconds it took and the exception it failed with (``None`` when it succeeded; no stamp then).

    Raises:
        BaseException: An interruption (Ctrl-C, SIGTERM, SIGHUP): the step's process tree is stopped, the lock
            goes, the step stays unfinished (resumable).
    """
    s = st.step
    log_path = plan.work_dir / "logs" / (s.id.replace("/", "__") + ".log")
    t0 = time.perf_counter()
    try:
        ctx = LogContext(log_path, verbose, env, cwd=REPO)
    except OSError as e:
        lock.release()
        return 0.0, RuntimeError(f"cannot write {e.filename or log_path}: {e.strerror}")
    ctx.pass_fds = (
        () if lock.fd is None else (lock.fd,)
    )  # the step's supervisor holds the lock while it lives
    ctx.on_start = lock.record
    try:
        _stamp_path(plan.work_dir, s.id).unlink(missing_ok=True)
        _remove_temp_files(s)
        cmd = _prepare_train_dir(s, st.fingerprint, st.state) if s.train_dir is not None else None
        execute(s, ctx, cmd)
        secs = round(time.perf_counter() - t0, 1)
        atomic_write_json(
            _stamp_path(plan.work_dir, s.id),
            {
                "id": s.id,
                "fingerprint": st.fingerprint,
                "seconds": secs,
                "finished": time.time(),
                "outputs": [str(o) for o in s.outputs],
                "output_state": output_state(s.outputs),
                "log": str(log_path),
            },  # fmt: skip
        )
    except Exception as e:  # a step failing must not leave a stamp; report it with its log
        err = _failure(s, e, log_path)
        with contextlib.suppress(OSError):
            ctx.log(f"FAILED: {err}")
        return time.perf_counter() - t0, err
    finally:  # also on an interruption: the step stays unfinished (resumable)
        lock.release()
        ctx.close()
    return secs, None


def _remove_temp_files(step: Step) -> None:
    """Temporary files of the step's outputs left by an atomic write that a kill cut short
    (``.<name>.*.tmp`` beside each output, see :func:`celldata.fileio.atomic_open`)."""
    for o in map(Path, step.outputs):
        if o.parent.is_dir():
            for tmp in o.parent.glob(f".{o.name}.*.tmp"):
                tmp.unlink(missing_ok=True)


def _failure(step: Step, e: Exception, log_path: Path) -> Exception:
    """The error a failed step is reported with: one line, naming the file a write failed on; a training's
    checkpoints cut short by the failure are discarded (nothing half-written stays)."""
    if isinstance(e, OSError):
        return RuntimeError(f"cannot write {e.filename or log_path}: {e.strerror}; log {log_path}")
    if not isinstance(e, StepFailed):
        return e
    _remove_temp_files(step)
    path = write_failure(e.reason, e.tail)
    if path is None:
        return RuntimeError(str(e))
    note, cut = "", []
    if step.train_dir is not None and step.train_dir.is_dir():
        point = resume_point(step.train_dir, discard=True)
        cut = [p.name for p in point.set_aside if p.name != "last_checkpoint"]
        note = f"; {point.note}" if point.set_aside else ""
    if not path and cut:
        path = str(step.train_dir / cut[0]) if step.train_dir is not None else cut[0]
    elif not path and step.train_dir is None and len(step.outputs) == 1:
        path = str(step.outputs[0])
    elif not path:
        path = f"in {step.train_dir or (Path(step.outputs[0]).parent if step.outputs else log_path.parent)}"
    return RuntimeError(f"cannot write {path}: {e.reason}; nothing half-written kept; log {log_path}{note}")
