"""tools/kaggle: the inference notebook's shape and the offline install script's refusals (fast, no install)."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
KAGGLE = REPO / "tools" / "kaggle"
NOTEBOOK = KAGGLE / "inference.ipynb"
INSTALL = KAGGLE / "install_offline.sh"
PARAMETERS = ("KAGGLE_INPUT", "WHEELS", "BUNDLE", "TEST_DIR", "OUT", "WORK_DIR", "DEVICE")
# what the notebook may import: the standard library it needs before the install, and the project
ALLOWED_IMPORTS = {
    "glob",
    "os",
    "subprocess",
    "sys",
    "time",
    "importlib",
    "workflow.bundle",
    "workflow.execution",
}


def _code_cells() -> list:
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    return [c for c in nb.cells if c.cell_type == "code"]


def test_notebook_is_valid_nbformat_with_a_parameters_cell() -> None:
    cells = _code_cells()
    tagged = [c for c in cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0] is cells[0], "exactly one parameters cell, the first code cell"
    values = {}
    for node in ast.parse(tagged[0].source).body:
        assert isinstance(node, ast.Assign), "the parameters cell only assigns values"
        values[node.targets[0].id] = ast.literal_eval(node.value)
    assert tuple(values) == PARAMETERS
    assert values["OUT"] == "/kaggle/working/submission.csv" and values["KAGGLE_INPUT"] == "/kaggle/input"
    assert all(values[k] is None for k in ("WHEELS", "BUNDLE", "TEST_DIR", "DEVICE"))  # found by glob
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in cells), (
        "committed with outputs"
    )


def test_notebook_cells_only_call_the_projects_tools() -> None:
    """No logic lives only in the notebook: no functions, classes or loops; imports are stdlib + the project."""
    cells = _code_cells()
    calls: set[str] = set()
    for cell in cells:
        tree = ast.parse(cell.source)
        for node in ast.walk(tree):
            assert not isinstance(
                node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda | ast.For | ast.While
            ), f"logic in the notebook: {ast.unparse(node)[:80]}"
            if isinstance(node, ast.Import):
                assert {a.name for a in node.names} <= ALLOWED_IMPORTS
            if isinstance(node, ast.ImportFrom):
                assert node.module in ALLOWED_IMPORTS
            if isinstance(node, ast.Call):
                calls.add(ast.unparse(node.func))
    for needed in ("inference_plan", "LogContext", "execute", "validate_submission", "subprocess.run"):
        assert needed in calls, f"the notebook does not call {needed}"
    source = "\n".join(c.source for c in cells)
    assert '"install_offline.sh"' in source and "workflow.cli.infer" in source
    # the defaults are found under KAGGLE_INPUT by glob, for both mount layouts
    assert "**/sartorius-cell-instance-segmentation/test" in source and "recursive=True" in source


def _fake_wheelhouse(tmp_path: Path, **over) -> Path:
    wh = tmp_path / "wh"
    wh.mkdir()
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    manifest = {
        "format": "sartorius-wheelhouse/1",
        "python_tag": tag,
        "torch": "2.10.0+cu128",
        "cuda": "12.8",
        "with_torch": False,
        "project": {"name": "sartorius-cellseg-stack", "version": "0.1.0"},
        "onedl_mmcv": {"built_against_torch": "2.10.0+cu128", "built_against_cuda": "12.8"},
        "files": [],
    }
    for k, v in over.items():
        manifest[k] = v
    (wh / "manifest.json").write_text(json.dumps(manifest))
    return wh


def _install(wh: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable)
    return subprocess.run(
        ["bash", str(INSTALL), str(wh)], capture_output=True, text=True, env=env, timeout=120
    )


def test_install_offline_refuses_a_torch_mismatch(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    r = _install(_fake_wheelhouse(tmp_path))
    assert r.returncode != 0
    assert "differs from torch 2.10.0+cu128 (CUDA 12.8)" in r.stderr and "nothing was changed" in r.stderr
    assert "installing" not in r.stdout  # refused before pip ran


def test_install_offline_refuses_another_python(tmp_path: Path) -> None:
    r = _install(_fake_wheelhouse(tmp_path, python_tag="cp39"))
    assert r.returncode != 0 and "built for cp39" in r.stderr


def test_install_offline_refuses_a_folder_without_manifest(tmp_path: Path) -> None:
    r = _install(tmp_path)
    assert r.returncode != 0 and "manifest.json not found" in r.stderr
    (tmp_path / "manifest.json").write_text("{not json")
    r = _install(tmp_path)
    assert r.returncode != 0 and "not a valid wheelhouse manifest" in r.stderr


def test_install_offline_never_contacts_an_index() -> None:
    """Every pip install of the script goes through one command that carries --no-index."""
    text = INSTALL.read_text()
    pip_defs = re.findall(r"^PIP=\((.*)\)$", text, flags=re.M)
    assert len(pip_defs) == 1 and "--no-index --find-links" in pip_defs[0]
    code = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    installs = [ln for ln in code if re.search(r"pip\b.*\binstall\b", ln) and not ln.startswith("PIP=(")]
    assert installs == [], f"pip install outside the --no-index command: {installs}"
    assert text.count('"${PIP[@]}"') >= 2


def test_build_wheelhouse_usage_errors(tmp_path: Path) -> None:
    script = KAGGLE / "build_wheelhouse.sh"
    r = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "usage:" in r.stderr
    r = subprocess.run(
        ["bash", str(script), str(tmp_path), "--bogus"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode != 0 and "unknown option --bogus" in r.stderr
    (tmp_path / "x").write_text("")
    r = subprocess.run(["bash", str(script), str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "exists and is not empty" in r.stderr
