"""Running one step: a command with its output in a log, or a Python call; the one step mechanism of the
recipe runner (:mod:`workflow.recipe.runner`) and of the Kaggle bundle's offline inference plan.

A :class:`Step` is a command line (``python -m ...``; a :class:`DeferredArg` such as the recipe's last checkpoint
is resolved only when the step runs) or a Python callable ``func(ctx)``; :func:`execute` runs it under a
:class:`LogContext` (the output goes to the step's log file, echoed when verbose) and checks that every declared
output exists afterwards. Commands run with :func:`tool_env`: this process's environment, unbuffered (the project
is installed, so no ``PYTHONPATH`` is needed).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DeferredArg", "Arg", "Step", "LogContext", "tool_env", "execute"]


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


class LogContext:
    """Runs a step's commands with their output in the step's log (and echoed when ``verbose``).

    Args:
        log_path: The step's log file (appended to; its folder is created).
        verbose: Echo every line of the commands' output (otherwise only training progress lines).
        env: The commands' environment (None: :func:`tool_env`).
        cwd: The commands' working directory (None: this process's).
    """

    def __init__(
        self, log_path: Path, verbose: bool, env: dict[str, str] | None = None, cwd: Path | str | None = None
    ) -> None:
        self.log_path = Path(log_path)
        self.verbose = verbose
        self.env = tool_env() if env is None else env
        self.cwd = cwd
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.log_path, "a")

    def log(self, text: str) -> None:
        """Append one line to the log (and print it when verbose)."""
        self.fh.write(text + "\n")
        self.fh.flush()
        if self.verbose:
            print(text, flush=True)

    def run(self, cmd: Sequence[Arg]) -> str:
        """Run a command to completion; returns its output.

        Raises:
            RuntimeError: If it exits non-zero (the message names the log and holds the output's last lines).
        """
        argv = [c.resolve() if isinstance(c, DeferredArg) else str(c) for c in cmd]
        self.log("$ " + " ".join(argv))
        captured: list[str] = []
        proc = subprocess.Popen(
            argv,
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env,
            bufsize=1,
        )
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                captured.append(line)
                self.fh.write(line)
                if self.verbose:
                    sys.stdout.write(line)
                elif "Iter(train)" in line or "Epoch(train)" in line:
                    # training progress, one line per logger interval
                    print("        " + line.split(" - ")[-1].strip()[:150], flush=True)
        except BaseException:  # interrupted (Ctrl-C, SIGTERM): stop the tool too, its checkpoints stay
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
        self.fh.flush()
        rc = proc.wait()
        if rc != 0:
            tail = "".join(captured[-15:])
            raise RuntimeError(f"command failed (exit {rc}); log {self.log_path}\n{tail}")
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
