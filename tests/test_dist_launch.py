"""tools/dist_train.sh and tools/dist_test.sh share one torchrun body (tools/dist_launch.sh), which runs the module
``workflow.cli.train`` / ``workflow.cli.test`` in every process (no script path).

The launch line is checked with a stand-in interpreter (``PYTHON``) that prints its arguments, so no process
group is started here; the real two-process CPU run is ``test_train_tools.py::test_dist_train_two_cpu_processes``
(slow).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _launch(tmp_path: Path, script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    fake = tmp_path / "python"
    fake.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    return subprocess.run(
        ["bash", f"tools/{script}", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHON=str(fake), **env),
        timeout=60,
    )


def test_dist_train_passes_config_nproc_and_options(tmp_path: Path) -> None:
    r = _launch(tmp_path, "dist_train.sh", "cfg.py", "4", "--work-dir", "w", "--cfg-options", "a=1")
    assert r.returncode == 0, r.stderr
    argv = r.stdout.split("\n")
    assert argv[:2] == ["-m", "torch.distributed.run"]
    assert "--nproc_per_node=4" in argv and "--nnodes=1" in argv and "--master_port=29500" in argv
    tool = argv.index("workflow.cli.train")
    assert argv[tool - 1] == "-m" and not any(a.endswith(".py") and "/" in a for a in argv)
    assert argv[tool + 1 :] == [
        "cfg.py",
        "--work-dir",
        "w",
        "--cfg-options",
        "a=1",
        "--launcher",
        "pytorch",
        "",
    ]


def test_dist_test_passes_config_checkpoint_nproc(tmp_path: Path) -> None:
    r = _launch(
        tmp_path, "dist_test.sh", "cfg.py", "ckpt.pth", "2", "--out", "m.json", PORT="29999", NNODES="2"
    )
    assert r.returncode == 0, r.stderr
    argv = r.stdout.split("\n")
    assert "--nproc_per_node=2" in argv and "--master_port=29999" in argv and "--nnodes=2" in argv
    tool = argv.index("workflow.cli.test")
    assert argv[tool - 1] == "-m"
    assert argv[tool + 1 :] == ["cfg.py", "ckpt.pth", "--out", "m.json", "--launcher", "pytorch", ""]


def test_unknown_tool_is_refused(tmp_path: Path) -> None:
    r = _launch(tmp_path, "dist_launch.sh", "nope.py", "2")
    assert r.returncode == 2 and "no tool workflow.cli.nope" in r.stderr
    r = _launch(tmp_path, "dist_launch.sh", "../x", "2")
    assert r.returncode == 2 and r.stderr.count("\n") == 1


def test_dist_launch_accepts_module_name(tmp_path: Path) -> None:
    r = _launch(tmp_path, "dist_launch.sh", "train", "2", "cfg.py")
    assert r.returncode == 0, r.stderr
    argv = r.stdout.split("\n")
    assert argv[argv.index("workflow.cli.train") + 1 :] == ["cfg.py", "--launcher", "pytorch", ""]
