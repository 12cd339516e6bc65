"""A step's process tree dies with its runner: the tiny supervisor every step command runs under.

:class:`workflow.execution.LogContext` starts ``python -m workflow.supervisor RUNNER_PID GRACE_S -- CMD...`` in a
new session (``start_new_session``), so the supervisor leads its own process group and Ctrl-C in the runner's
terminal reaches only the runner. The supervisor:

* becomes a *child subreaper* (``PR_SET_CHILD_SUBREAPER``): a descendant whose parent dies (a data-loader worker
  of a killed training, a torchrun rank, which torchrun starts in a session of its own) is re-parented to the
  supervisor instead of init, so the supervisor always finds the whole tree by walking ``/proc``;
* asks for ``SIGTERM`` when the runner dies (``PR_SET_PDEATHSIG``; also checked once against ``RUNNER_PID``
  for the race before the call), so even ``kill -9`` of the runner stops the step;
* starts ``CMD`` with ``PR_SET_PDEATHSIG = SIGKILL`` (the step dies if the supervisor is killed outright);
* on ``SIGTERM`` / ``SIGINT`` / ``SIGHUP`` sends ``SIGTERM`` to every process of the tree, waits up to
  ``GRACE_S`` seconds, then ``SIGKILL`` to what remains, and exits ``128 + signal``;
* when ``CMD`` exits by itself, stops whatever it left behind (orphaned workers) the same way and exits with
  ``CMD``'s status (``128 + signal`` when a signal ended it).

On systems without ``prctl`` (not Linux) the supervisor still runs the command and stops its process group, but
a ``kill -9`` of the runner is not noticed. :func:`tree_pids` and :func:`stop_pids` are the process-tree helpers
the runner and the tests share.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence

__all__ = ["tree_pids", "alive", "stop_pids", "supervised_argv", "group_pids", "main"]

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _prctl(option: int, value: int) -> bool:
    """``prctl(option, value)``; returns whether it worked (False off Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _proc_table() -> dict[int, tuple[int, int, str]]:
    """``pid -> (ppid, pgid, state)`` of every process visible in ``/proc`` (empty off Linux)."""
    table: dict[int, tuple[int, int, str]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return table
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()  # after "pid (comm) "
        if len(fields) >= 3:
            table[int(name)] = (int(fields[1]), int(fields[2]), fields[0])
    return table


def tree_pids(root: int) -> list[int]:
    """Live (not zombie) descendants of ``root``, children first, ``root`` itself excluded."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out: list[int] = []
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop(0)
        if table[pid][2] != "Z":
            out.append(pid)
        todo += children.get(pid, [])
    return out


def group_pids(pgid: int) -> list[int]:
    """Live (not zombie) members of process group ``pgid``."""
    return [pid for pid, (_, g, state) in _proc_table().items() if g == pgid and state != "Z"]


def alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
        return stat[stat.rfind(")") + 2 :].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_all(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _reap() -> list[tuple[int, int]]:
    """Reap every exited child; returns ``(pid, wait status)`` pairs."""
    out = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return out
        if pid == 0:
            return out
        out.append((pid, status))


def stop_pids(
    pids: Sequence[int] | None = None,
    grace_s: float = 10.0,
    finder: Callable[[], Iterable[int]] | None = None,
    poll_s: float = 0.1,
) -> bool:
    """``SIGTERM`` the processes, wait up to ``grace_s`` seconds, then ``SIGKILL`` what remains.

    Args:
        pids: The pids to stop (a fixed list), or None with ``finder``.
        grace_s: Seconds between ``SIGTERM`` and ``SIGKILL``.
        finder: Called again while waiting to list the processes still to stop (e.g. a tree that grows
            re-parented orphans); its first answer is what gets ``SIGTERM``.
        poll_s: Polling interval.

    Returns:
        Whether ``SIGKILL`` was needed.
    """

    fixed = list(pids or [])

    def current() -> list[int]:
        return [p for p in (finder() if finder is not None else fixed) if alive(p)]

    sent = current()
    _signal_all(sent, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        _reap()
        left = current()
        if not left:
            return False
        _signal_all([p for p in left if p not in sent], signal.SIGTERM)  # newly found ones
        sent = list(set(sent) | set(left))
        time.sleep(poll_s)
    killed = False
    for _ in range(50):
        left = current()
        if not left:
            break
        killed = True
        _signal_all(left, signal.SIGKILL)
        time.sleep(poll_s)
        _reap()
    return killed


def supervised_argv(argv: Sequence[str], grace_s: float, python: str | None = None) -> list[str]:
    """The command line that runs ``argv`` under the supervisor, with this process as the runner."""
    return [
        python or sys.executable,
        "-m",
        "workflow.supervisor",
        str(os.getpid()),
        str(grace_s),
        "--",
        *argv,
    ]


def _child_setup() -> None:
    """In the step process before exec: default signal mask, die with the supervisor."""
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _status_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def supervise(runner_pid: int, grace_s: float, cmd: Sequence[str]) -> int:
    """Run ``cmd`` as described in the module docstring; returns the exit status to exit with."""
    me = os.getpid()
    watched = {*STOP_SIGNALS, signal.SIGCHLD}
    signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    stop_sig = signal.SIGTERM if os.getppid() != runner_pid else None  # runner gone before prctl
    rc: int | None = None
    child: subprocess.Popen | None = None
    if stop_sig is None:
        try:
            child = subprocess.Popen(list(cmd), preexec_fn=_child_setup)  # noqa: PLW1509 (single-threaded)
        except OSError as e:
            print(f"supervisor: cannot start {cmd[0]}: {e}", file=sys.stderr, flush=True)
            return 127
        while rc is None and stop_sig is None:
            info = signal.sigtimedwait(watched, 1.0)
            for pid, status in _reap():
                if pid == child.pid:
                    rc = _status_code(status)
                    child.returncode = rc
            if info is not None and info.si_signo in STOP_SIGNALS:
                stop_sig = info.si_signo
            elif info is None and os.getppid() != runner_pid and runner_pid != 1:
                stop_sig = signal.SIGTERM  # PDEATHSIG unavailable: the runner is gone all the same
    # the step ended or is to be stopped: nothing of its tree survives (orphaned workers included)
    stop_pids(grace_s=grace_s, finder=lambda: set(tree_pids(me)) | (set(group_pids(me)) - {me}))
    for pid, status in _reap():
        if rc is None and child is not None and pid == child.pid:
            rc = _status_code(status)
    if stop_sig is not None:
        return 128 + int(stop_sig)
    return 0 if rc is None else rc


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m workflow.supervisor RUNNER_PID GRACE_S -- CMD...``; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 4 or args[2] != "--":
        print("usage: python -m workflow.supervisor RUNNER_PID GRACE_S -- CMD...", file=sys.stderr)
        return 2
    try:
        runner_pid, grace_s = int(args[0]), float(args[1])
    except ValueError:
        print(f"supervisor: error: bad RUNNER_PID / GRACE_S {args[0]!r} {args[1]!r}", file=sys.stderr)
        return 2
    return supervise(runner_pid, grace_s, args[3:])


if __name__ == "__main__":
    sys.exit(main())
