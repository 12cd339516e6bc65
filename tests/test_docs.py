"""The docs stay true: every path, command-line option and file the README (and configs/*/README.md) names exists.

(That the documented commands also run, and the --help examples name real paths: tests/test_docs_flows.py.)

Checked mechanically:
* the README's code tree lists every tracked source file of the project (one line per file, or a glob line such
  as ``configs/yolox/*.py``), and every path it lists exists;
* every repository path in backticks in the README and the configs' READMEs exists (outputs such as
  ``work_dirs/...``, ``data/...`` and ``submissions/...`` are made by the tools, so they are not checked);
* every ``--option`` of a ``python tools/X.py`` / ``python -m pkg.mod`` / ``bash tools/X.sh`` command line in a
  README code block is defined by that tool (its file, or the library module it imports its options from; a
  ``tools/X.py`` shim is read as the module it runs, ``workflow.cli.X``);
* every documented script ``tools/X.py`` is a shim over ``workflow.cli.X`` (``python -m workflow.cli.X`` runs the
  same ``main``).
"""

from __future__ import annotations

import fnmatch
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
CHECKED_ROOTS = (
    "celldata",
    "ensemble",
    "custom_modules",
    "workflow",
    "tools",
    "configs",
    "benchmarks",
    "studies",
    "tests",
    ".ci",
)
GENERATED = ("work_dirs/", "data/", "submissions/", "/kaggle/", "~", "$")


def _tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return [
        f
        for f in out.splitlines()
        if f.split("/")[0] in CHECKED_ROOTS and (REPO / f).is_file() and not f.endswith("__init__.py")
    ]


def _code_tree() -> list[str]:
    text = README.read_text()
    m = re.search(r"^## Code tree\n(.*?)^```\n(.*?)^```", text, re.S | re.M)
    assert m, "README.md has no '## Code tree' section with a code block"
    return [line.split()[0] for line in m.group(2).splitlines() if line.strip()]


def test_code_tree_paths_exist() -> None:
    missing = [p for p in _code_tree() if not list(REPO.glob(p.rstrip("/"))) and not (REPO / p).exists()]
    assert not missing, f"README code tree names paths that do not exist: {missing}"


def test_code_tree_lists_every_source_file() -> None:
    entries = _code_tree()
    unlisted = []
    for f in _tracked_files():
        covered = any(
            f == e or fnmatch.fnmatch(f, e) or (e.endswith("/") and f.startswith(e))
            for e in entries
            if e != "README.md"
        )
        if not covered:
            unlisted.append(f)
    assert not unlisted, f"files missing from the README code tree: {unlisted}"


def _doc_files() -> list[Path]:
    return [
        README,
        *sorted((REPO / "configs").glob("*/README.md")),
        *sorted((REPO / "tools").glob("*/README.md")),
        REPO / "submissions" / "README.md",
    ]


@pytest.mark.parametrize("doc", _doc_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_backticked_repository_paths_exist(doc: Path) -> None:
    bad = []
    for token in re.findall(r"`([^`\s]+)`", doc.read_text()):
        path = token.split("::")[0].rstrip(".,:;)")
        if not re.match(rf"^({'|'.join(re.escape(r) for r in CHECKED_ROOTS)})/[\w./*{{}},-]+$", path):
            continue
        if any(g in path for g in GENERATED) or "<" in path or "{" in path:
            continue
        if not (list(REPO.glob(path)) or (REPO / path).exists()):
            bad.append(path)
    assert not bad, f"{doc.relative_to(REPO)} names paths that do not exist: {bad}"


_CMD = re.compile(
    r"(?:python(?:3(?:\.\d+)?)?|\.venv/bin/python)\s+(-m\s+[\w.]+|tools/[\w/]+\.py)|bash\s+(tools/[\w/]+\.sh)"
)


def _option_sources(target: str) -> str:
    """The text where a tool's options are defined: its file plus the project modules it imports from."""
    if target.startswith("-m"):
        mod = target.split()[1]
        path = REPO / (mod.replace(".", "/") + ".py")
        if not path.exists():
            path = REPO / mod.replace(".", "/") / "__main__.py"
    else:
        path = REPO / target
        shim = (
            re.search(r"^from (workflow\.cli\.\w+) import main$", path.read_text(), re.M)
            if path.is_file()
            else None
        )
        if shim:  # tools/X.py runs workflow.cli.X
            return _option_sources(f"-m {shim.group(1)}")
    assert path.exists(), f"README runs {target}, which does not exist"
    text = path.read_text()
    if path.suffix == ".sh":  # a launcher passes its options on to the Python tools it runs
        tools = set(re.findall(r"\b(\w+)\.py\b", text)) | set(re.findall(r"workflow\.cli\.(\w+)", text))
        tools = {t for t in tools if (REPO / "workflow" / "cli" / f"{t}.py").is_file()}
        return "\n".join([text] + [_option_sources(f"-m workflow.cli.{t}") for t in sorted(tools)])
    sources = [text]
    for mod in re.findall(r"^\s*(?:from|import)\s+((?:celldata|ensemble|custom_modules)[\w.]*)", text, re.M):
        p = REPO / (mod.replace(".", "/") + ".py")
        if not p.exists():
            p = REPO / mod.replace(".", "/") / "__init__.py"
        if p.exists():
            sources.append(p.read_text())
        pkg = REPO / mod.replace(".", "/")
        if pkg.is_dir():
            sources += [q.read_text() for q in pkg.rglob("*.py")]
    return "\n".join(sources)


@pytest.mark.parametrize("doc", _doc_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_documented_command_options_exist(doc: Path) -> None:
    blocks = re.findall(r"```(?:bash|sh|console)?\n(.*?)```", doc.read_text(), re.S)
    bad = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#")[0]
            for m in _CMD.finditer(line):
                target = m.group(1) or m.group(2)
                rest = line[m.end() :]
                nxt = _CMD.search(rest)
                rest = rest[: nxt.start()] if nxt else rest
                options = set(re.findall(r"(?<![\w-])(--[a-z][\w-]*)", rest))
                if not options:
                    continue
                sources = _option_sources(target)
                bad += [
                    f"{target} {o}"
                    for o in sorted(options)
                    if f'"{o}"' not in sources and f"'{o}'" not in sources
                ]
    assert not bad, f"{doc.relative_to(REPO)} documents options the tools do not define: {bad}"


def _shims() -> list[Path]:
    return sorted((REPO / "tools").glob("*.py"))


@pytest.mark.parametrize("shim", _shims(), ids=lambda p: p.name)
def test_tools_are_shims_over_workflow_cli(shim: Path) -> None:
    """``tools/X.py`` only runs ``workflow.cli.X.main``; the module has ``main(argv)`` and runs under ``-m``."""
    import ast

    tree = ast.parse(shim.read_text())
    imports = [n for n in tree.body if isinstance(n, ast.ImportFrom)]
    assert [(n.module, [a.name for a in n.names]) for n in imports] == [
        (f"workflow.cli.{shim.stem}", ["main"])
    ]
    assert not [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.Assign))], shim.name
    module = (REPO / "workflow" / "cli" / shim.name).read_text()
    assert re.search(r"def main\(\s*argv: list\[str\] \| None = None", module)
    assert 'if __name__ == "__main__":' in module or "if __name__ == '__main__':" in module


def test_module_entry_point_runs(tmp_path: Path) -> None:
    """``python -m workflow.cli.X`` and ``python tools/X.py`` give the same help and the same bad-input exit code,
    from any working directory (the project is installed; no PYTHONPATH)."""
    import os
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    runs = [
        [sys.executable, "-m", "workflow.cli.prepare_sartorius"],
        [sys.executable, str(REPO / "tools" / "prepare_sartorius.py")],
    ]
    helps = [
        subprocess.run([*r, "--help"], cwd=tmp_path, capture_output=True, text=True, env=env) for r in runs
    ]
    assert [h.returncode for h in helps] == [0, 0] and helps[0].stdout == helps[1].stdout
    assert helps[0].stdout.startswith("usage: prepare_sartorius.py")
    bad = [
        subprocess.run([*r, "--folds", "x"], cwd=tmp_path, capture_output=True, text=True, env=env)
        for r in runs
    ]
    assert [b.returncode for b in bad] == [2, 2]
