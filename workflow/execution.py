"""Running one step: a command with its output in a log, or a Python call; the one step mechanism of the
recipe runner (:mod:`workflow.recipe.runner`) and of the Kaggle bundle's offline inference plan.

A :class:`Step` is a command line (``python -m ...``; a :class:`DeferredArg` such as the recipe's last checkpoint
is resolved only when the step runs) or a Python callable ``func(ctx)``; :func:`execute` runs it under a
:class:`LogContext` (the output goes to the step's log file, echoed when verbose) and checks that every declared
output exists afterwards. Commands run with :func:`tool_env`: this process's environment, unbuffered (the project
is installed, so no ``PYTHONPATH`` is needed).
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workflow.supervisor import stop_pids, supervised_argv, tree_pids

__all__ = [
    "DeferredArg",
    "Arg",
    "Step",
    "LogContext",
    "StepFailed",
    "STOP_GRACE_S",
    "tool_env",
    "execute",
    "failure_reason",
    "write_failure",
    "interrupt_signals",
    "stop_process_tree",
]

STOP_GRACE_S = 10.0
"""Seconds a stopped step's processes get between ``SIGTERM`` and ``SIGKILL`` (checkpoint writes finish)."""


class DeferredArg:
    """A command argument known only when its step runs (e.g. the checkpoint a training step wrote)."""

    def resolve(self) -> str:
        """The argument's value now.

        Raises:
            RuntimeError: If it cannot be resolved (the message says why).
        """
        raise NotImplementedError


Arg = str | DeferredArg


@dataclass
class Step:
    """One unit of work: a command (with :class:`DeferredArg` arguments resolved when it runs) or a Python call
    ``func(ctx)`` that gets the step's :class:`LogContext`.

    Attributes:
        id: Unique id, ``<stage>/<what>[/<fold>]``.
        stage: One of :data:`STAGES`.
        title: One line for progress output.
        cmd: Command (``Checkpoint`` arguments resolved when it runs), or ``None`` for a Python call.
        func: Python callable for steps that are not a command.
        params: Parameters that enter the fingerprint.
        deps: Ids of the steps whose outputs this one reads.
        outputs: Files or folders that must exist when the step is complete.
        train_dir: For training steps: the run's work dir (resumed from its last checkpoint when interrupted).
    """

    id: str
    stage: str
    title: str
    cmd: list[Arg] | None = None
    func: Callable[[], Any] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    deps: list[str] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)
    train_dir: Path | None = None

    def command_text(self) -> str:
        """The command as a shell line (checkpoints shown as placeholders until resolved)."""
        if self.cmd is None:
            name = getattr(self.func, "__qualname__", "python")
            return f"(python) {name}"
        return " ".join(shlex.quote(str(a)) if isinstance(a, str) else str(a) for a in self.cmd)


def tool_env() -> dict[str, str]:
    """Environment of the commands a step runs: this one, with unbuffered Python output."""
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


class StepFailed(RuntimeError):
    """A step's command exited non-zero.

    Attributes:
        rc: Its exit status.
        reason: One line: the tool's own error line, else the exception that ended it, else its last line.
        log_path: The log with the whole output.
        tail: The output's last lines.
    """

    def __init__(self, rc: int, reason: str, log_path: Path, tail: Sequence[str] = ()) -> None:
        self.rc, self.reason, self.log_path, self.tail = rc, reason, Path(log_path), list(tail)
        super().__init__(f"{reason} (exit {rc}); full output in {log_path}")


_CLI_ERROR = re.compile(r"^[\w./-]+(\.py)?: error: ")
_EXC_LINE = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Failure))(: |$)")
_WRITE_ERRORS = re.compile(
    r"File too large|No space left on device|Read-only file system|Disk quota exceeded|file write failed"
    r"|basic_ios::clear: iostream error|PytorchStreamWriter failed"
    r"|\[Errno (27|28|30|122)\]"
)


def failure_reason(lines: Sequence[str]) -> str:
    """One line saying why a command failed, from its output: the last ``<tool>: error: ...`` line (the
    project's CLIs), else the last exception line of a traceback, else the last non-empty line."""
    text = [ln.rstrip("\n") for ln in lines if ln.strip()]
    for ln in reversed(text):
        if _CLI_ERROR.match(ln.strip()):
            return ln.strip()
    for ln in reversed(text):
        if _EXC_LINE.match(ln.strip()):
            return ln.strip()[:500]
    return text[-1].strip()[:500] if text else "no output"


def write_failure(reason: str, tail: Sequence[str] = ()) -> str | None:
    """The path named by a write error (full disk, file-size limit, read-only file system), ``""`` when the
    error names none, ``None`` when neither ``reason`` nor the output's ``tail`` shows a write error (torch's
    checkpoint writer reports one as an ``iostream error`` a few lines above its last line)."""
    if not _WRITE_ERRORS.search(reason) and not any(_WRITE_ERRORS.search(ln) for ln in tail):
        return None
    m = re.search(r": '([^']+)'\s*$", reason) or re.search(r"'(/[^']+)'", reason)
    return m.group(1) if m else ""


def stop_process_tree(proc: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> None:
    """Stop a supervised command (:mod:`workflow.supervisor`) and its whole tree: ``SIGTERM`` to the supervisor
    (it stops the tree within ``grace_s``), and ``SIGKILL`` to whatever is still there a little later."""
    pids = [proc.pid, *tree_pids(proc.pid)]
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s + 5)
    except subprocess.TimeoutExpired:
        pass
    stop_pids(finder=lambda: [*pids, *tree_pids(proc.pid)], grace_s=0.5)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


@contextlib.contextmanager
def interrupt_signals() -> Iterator[None]:
    """``SIGTERM``, ``SIGHUP`` and ``SIGINT`` raise ``KeyboardInterrupt`` (like Ctrl-C) inside the block, so a
    running step's process tree is stopped and its lock released; the previous handlers come back afterwards.
    ``SIGINT`` is set explicitly because a runner started with it ignored (a background job of a
    non-interactive shell, or a parent that ignores it) would otherwise not stop on it. Does nothing outside
    the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    old = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


class LogContext:
    """Runs a step's commands with their output in the step's log (and echoed when ``verbose``).

    Args:
        log_path: The step's log file (appended to; its folder is created).
        verbose: Echo every line of the commands' output (otherwise only training progress lines).
        env: The commands' environment (None: :func:`tool_env`).
        cwd: The commands' working directory (None: this process's).
        grace_s: Seconds a stopped command's processes get between ``SIGTERM`` and ``SIGKILL``.

    Attributes:
        pass_fds: Open files the commands' supervisors inherit (the recipe runner's step lock: held while any
            process of the step lives).
        on_start: Called with each command's supervisor pid once it started.
    """

    def __init__(
        self,
        log_path: Path,
        verbose: bool,
        env: dict[str, str] | None = None,
        cwd: Path | str | None = None,
        grace_s: float = STOP_GRACE_S,
    ) -> None:
        self.log_path = Path(log_path)
        self.grace_s = grace_s
        self.verbose = verbose
        self.env = tool_env() if env is None else env
        self.cwd = cwd
        self.pass_fds: tuple[int, ...] = ()
        self.on_start: Callable[[int], None] | None = None
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.log_path, "a")

    def log(self, text: str) -> None:
        """Append one line to the log (and print it when verbose)."""
        self.fh.write(text + "\n")
        self.fh.flush()
        if self.verbose:
            print(text, flush=True)

    def run(self, cmd: Sequence[Arg]) -> str:
        """Run a command to completion under a :mod:`workflow.supervisor` in its own session; returns its output.

        The command and everything it starts (data-loader workers, torchrun ranks) form one process tree that
        dies with this process: an interruption here (Ctrl-C, or SIGTERM / SIGHUP under
        :func:`interrupt_signals`) stops the whole tree (``SIGTERM``, then ``SIGKILL`` after ``grace_s``), and
        even a ``kill -9`` of this process stops it (the supervisor's parent-death signal).

        Raises:
            StepFailed: If it exits non-zero (one line: the tool's error, the exit status and the log).
        """
        argv = [c.resolve() if isinstance(c, DeferredArg) else str(c) for c in cmd]
        self.log("$ " + " ".join(argv))
        captured: list[str] = []
        proc = subprocess.Popen(
            supervised_argv(argv, self.grace_s),
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            env=self.env,
            bufsize=1,
            start_new_session=True,
            pass_fds=self.pass_fds,
        )
        assert proc.stdout is not None
        try:
            if self.on_start is not None:
                self.on_start(proc.pid)
            for line in proc.stdout:
                captured.append(line)
                self.fh.write(line)
                if self.verbose:
                    sys.stdout.write(line)
                elif "Iter(train)" in line or "Epoch(train)" in line:
                    # training progress, one line per logger interval
                    print("        " + line.split(" - ")[-1].strip()[:150], flush=True)
            rc = proc.wait()
        except BaseException:
            # interrupted (Ctrl-C, SIGTERM, SIGHUP): stop the whole tree; its checkpoints stay
            stop_process_tree(proc, self.grace_s)
            self.log(f"(stopped: the step's process tree was stopped, grace {self.grace_s:g} s)")
            raise
        self.fh.flush()
        if rc != 0:
            raise StepFailed(rc, failure_reason(captured), self.log_path, captured[-40:])
        return "".join(captured)

    def close(self) -> None:
        """Close the log file."""
        self.fh.close()


def execute(step: Step, ctx: LogContext, cmd: Sequence[Arg] | None = None) -> None:
    """Run one step under ``ctx``: its command (``cmd`` when given, e.g. with ``--resume`` added) or its Python
    call, then check that every declared output exists.

    Raises:
        RuntimeError: If the command fails or an output is missing afterwards (naming the log).
    """
    if cmd is not None or step.cmd is not None:
        ctx.run(step.cmd if cmd is None else cmd)
    else:
        if step.func is None:
            raise RuntimeError(f"step {step.id} has neither a command nor a function")
        step.func(ctx)
    missing = [str(o) for o in step.outputs if not Path(o).exists()]
    if missing:
        raise RuntimeError(f"step {step.id} finished without writing {missing}; log {ctx.log_path}")
