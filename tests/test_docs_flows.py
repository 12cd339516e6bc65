"""Documentation that runs: every documented command is either executed here or visibly marked as needing more.

The command blocks (```bash fences) of README.md, submissions/README.md, configs/*/README.md and
tools/*/README.md hold two kinds of commands:

* **runnable** ones, which :func:`test_documented_commands_run` (part of `make test`, about 2-3 min) executes exactly as written, in
  document order (README.md first), on a small synthetic data set, each tool's ``main`` called in-process with
  the documented arguments. The scratch folder stands in for the repository root: ``configs/`` and ``tools/``
  are links to the repository's, and the README's own synthetic stand-in command writes ``data/sartorius/``.
  The only changes to a command, all for time: ``tools/train.py`` gets
  ``--cfg-options train_cfg.max_iters=2 train_cfg.val_begin=3 default_hooks.checkpoint.interval=2`` (2 iterations,
  no validation pass), a checkpoint named ``iter_<N>.pth`` becomes ``iter_2.pth``, and in ``run_recipe``
  commands ``data/sartorius`` and ``work_dirs/...`` become the scratch folder's absolute paths (a recipe resolves
  relative paths against the repository root). A command already run (the config READMEs repeat the README's
  demo lines) runs once.
* **marked** ones: a block whose first line is ``# needs: <what>`` or a command ending in ``# needs: <what>``,
  ``<what>`` starting with one of :data:`NEEDS` (a GPU, the real data, Kaggle, downloaded weights, or a long run).
  They are checked statically: the tool exists and its parser accepts the documented options.

Runnable commands hold no placeholders (``CONFIG``, ``<name>``, ``...``). Every ``.npz`` prediction file named in
the docs, the ensemble YAMLs and the tools' ``--help`` examples follows the one naming scheme
``<member>_<split>.npz`` (split ``val`` or ``test``; ``fused_boxes_<split>.npz`` for box-first step 1), the one
the recipes write (``predictions/oof/<member>_val.npz``, ``predictions/test/<member>_test.npz``).

The ``--help`` examples of every tool name paths that exist (repository files), that the demo recipe writes
(``work_dirs/demo/...``), or that the Kaggle/prepared layout holds (``data/sartorius/...``); placeholders are
upper case. Every command-line output (``--out``, ``--report``, ``--work-dir``, ...) naming the wrong kind of
path is refused before any work with one line and exit code 2 (:func:`celldata.fileio.check_output_path`).
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import io
import os
import re
import shlex
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
NEEDS = ("GPU", "real data", "Kaggle", "weights", "time", "LIVECell")
SHORT_TRAINING = ["train_cfg.max_iters=2", "train_cfg.val_begin=3", "default_hooks.checkpoint.interval=2"]
MARKER = re.compile(r"#\s*needs:\s*(.*)$")
PLACEHOLDER = re.compile(r"(?<![\w{-])[A-Z][A-Z0-9_]{2,}(?![\w}])|<[^>]*>|\.\.\.")
PREDICTION_NAME = re.compile(r"^(?P<member>[a-z][a-z0-9_]*?)_(?P<split>val|test)\.npz$")
ENSEMBLE_TOOLS = ("ensemble.run", "ensemble.tune", "ensemble.score", "ensemble.fuse_boxes")


def doc_files() -> list[Path]:
    """The documents whose command blocks are checked, in the order their commands run."""
    return [
        REPO / "README.md",
        *sorted((REPO / "configs").glob("*/README.md")),
        *sorted((REPO / "tools").glob("*/README.md")),
        REPO / "submissions" / "README.md",
    ]


@dataclass
class Command:
    """One documented command line (continuations joined)."""

    doc: str
    line: int
    text: str
    needs: str | None
    argv: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {self.text}"


def _blocks(text: str) -> Iterator[tuple[int, str, str]]:
    """``(first line number, language, body)`` of every fenced block."""
    for m in re.finditer(r"^[ \t]*```(\w*)[ \t]*\n(.*?)^[ \t]*```", text, re.S | re.M):
        yield text[: m.start(2)].count("\n") + 1, m.group(1), m.group(2)


def commands(doc: Path) -> list[Command]:
    """Every command of the doc's ``bash`` / ``sh`` / ``console`` blocks."""
    rel = doc.relative_to(REPO).as_posix()
    out = []
    for first, lang, body in _blocks(doc.read_text()):
        if lang not in ("bash", "sh", "console"):
            continue
        lines = body.splitlines()
        head = next((ln.strip() for ln in lines if ln.strip()), "")
        block_needs = MARKER.match(head).group(1).strip() if MARKER.match(head) else None
        k = 0
        while k < len(lines):
            start, text = k, lines[k].strip()
            while text.endswith("\\") and k + 1 < len(lines):
                k += 1
                text = text[:-1].rstrip() + " " + lines[k].strip()
            k += 1
            if not text or text.startswith("#"):
                continue
            m = MARKER.search(text)
            needs = block_needs or (m.group(1).strip() if m else None)
            argv = shlex.split(text, comments=True)
            out.append(Command(rel, first + start, text, needs, argv))
    return out


def all_commands() -> list[Command]:
    return [c for d in doc_files() for c in commands(d)]


def _module_of(argv: list[str]) -> tuple[str, list[str]] | None:
    """``(module, arguments)`` of a ``python tools/X.py`` / ``python -m pkg.mod`` command, else ``None``."""
    if not argv or argv[0] not in ("python", "python3", ".venv/bin/python"):
        return None
    if len(argv) > 2 and argv[1] == "-m":
        return argv[2], argv[3:]
    if len(argv) > 1 and argv[1].startswith("tools/") and argv[1].endswith(".py"):
        return f"workflow.cli.{Path(argv[1]).stem}", argv[2:]
    return None


def _parse(module: str, args: list[str]) -> None:
    """Parse ``args`` with the tool's own parser (raises SystemExit on an unknown option or bad value)."""
    mod = importlib.import_module(module)
    with contextlib.redirect_stderr(io.StringIO()) as err:
        try:
            if hasattr(mod, "build_parser"):
                mod.build_parser().parse_args(args)
            elif module == "workflow.cli.demo":
                importlib.import_module("workflow.cli.run_recipe").parse_args(args, recipe="x.yaml")
            else:
                mod.parse_args(args)
        except SystemExit as e:
            raise AssertionError(f"{module} rejects {args}: {err.getvalue().strip()}") from e


# ---------------------------------------------------------------------------------------------------- fast checks


@pytest.mark.parametrize("doc", doc_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_command_runs_here_or_is_marked(doc: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unmarked commands are tool commands without placeholders; every marker names a known need; every tool
    command (marked or not) parses with its tool's own parser."""
    monkeypatch.setenv("LOCAL_RANK", "0")
    bad = []
    for c in commands(doc):
        if c.needs is not None:
            if not c.needs.startswith(NEEDS):
                bad.append(f"{c}: marker '# needs: {c.needs}' does not start with one of {NEEDS}")
        else:
            if _module_of(c.argv) is None:
                bad.append(f"{c}: not a python tool command and not marked '# needs: ...'")
            if PLACEHOLDER.search(shlex.join(c.argv)):
                bad.append(f"{c}: a placeholder in a runnable command (mark it or make it concrete)")
        target = _module_of(c.argv)
        if target is not None and not PLACEHOLDER.search(shlex.join(c.argv)):
            try:
                _parse(*target)
            except AssertionError as e:
                bad.append(f"{c}: {e}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("doc", doc_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_plain_blocks_hold_no_commands(doc: Path) -> None:
    """A block without a language (a diagram, a file tree) never hides a command from the checks."""
    bad = [
        f"{doc.name}:{first}"
        for first, lang, body in _blocks(doc.read_text())
        if lang == ""
        and any(re.match(r"\s*(python|bash|make|\.venv/bin/python)\s", ln) for ln in body.splitlines())
    ]
    assert not bad, f"blocks with commands need ```bash: {bad}"


def _npz_names(text: str) -> list[str]:
    """Concrete ``.npz`` file names of a text (patterns such as ``{name}_val.npz`` or ``<member>_val.npz`` left out)."""
    names = [Path(t).name for t in re.findall(r"[\w./{}<>-]+\.npz\b", text)]
    return [n for n in names if not re.search(r"[{}<>]", n)]


def test_one_prediction_file_naming_scheme() -> None:
    """Docs, ensemble YAMLs and --help examples name prediction files ``<member>_<split>.npz`` (or
    ``fused_boxes_<split>.npz``); every YAML member reads ``<its name>_test.npz``; the recipe writes the same."""
    texts = {str(d.relative_to(REPO)): d.read_text() for d in doc_files()}
    texts |= {str(p.relative_to(REPO)): p.read_text() for p in (REPO / "configs" / "ensemble").glob("*.yaml")}
    texts |= {m: _docstring(m) for m in _tool_modules()}
    bad = [(w, n) for w, t in texts.items() for n in _npz_names(t) if not PREDICTION_NAME.match(n)]
    assert not bad, f"prediction files outside the <member>_<split>.npz scheme: {bad}"
    for p in (REPO / "configs" / "ensemble").glob("*.yaml"):
        for m in yaml.safe_load(p.read_text())["models"]:
            assert m["predictions"] == f"work_dirs/preds/{m['name']}_test.npz", (p.name, m)
    from workflow.recipe.config import load_recipe
    from workflow.recipe.plan import build_plan

    plan = build_plan(load_recipe(REPO / "configs" / "recipes" / "demo_cpu.yaml"))
    finals = [
        o for s in plan.steps for o in s.outputs if o.parent.name in ("oof", "test") and o.suffix == ".npz"
    ]
    assert finals and all(PREDICTION_NAME.match(o.name) for o in finals), finals


def _tool_modules() -> list[str]:
    cli = sorted(p.stem for p in (REPO / "workflow" / "cli").glob("*.py") if not p.stem.startswith("_"))
    return [f"workflow.cli.{n}" for n in cli] + list(ENSEMBLE_TOOLS)


def _docstring(module: str) -> str:
    return ast.get_docstring(ast.parse((REPO / (module.replace(".", "/") + ".py")).read_text())) or ""


def _examples(module: str) -> list[list[str]]:
    """The command lines of a tool's module docstring (its --help examples), continuations joined."""
    lines, out, k = _docstring(module).splitlines(), [], 0
    while k < len(lines):
        text = lines[k].strip()
        k += 1
        if not re.match(r"\s{4,}(python|bash)\s", lines[k - 1]):  # examples are indented; prose is not
            continue
        while text.endswith("\\") and k < len(lines):
            text = text[:-1].rstrip() + " " + lines[k].strip()
            k += 1
        out.append(shlex.split(text, comments=True))
    return out


_DEMO_OUTPUTS: list[str] = []


def _demo_outputs() -> list[str]:
    """Every output path of the demo recipe's plan, relative to the repository (``work_dirs/demo/...``)."""
    if not _DEMO_OUTPUTS:
        from workflow.recipe.config import load_recipe
        from workflow.recipe.plan import build_plan

        plan = build_plan(load_recipe(REPO / "configs" / "recipes" / "demo_cpu.yaml"))
        _DEMO_OUTPUTS.extend(
            os.path.relpath(o, REPO) for s in plan.steps for o in s.outputs if str(o).startswith(str(REPO))
        )
    return _DEMO_OUTPUTS


DATA_LAYOUT = re.compile(
    r"^data/sartorius/?(train\.csv|sample_submission\.csv|train/?|test/?|train_semi_supervised/?|"
    r"annotations/(fold\d+_(train|val)|train_all|test|semi_supervised)\.json|semantic/\w+/?|splits/\S+)?$"
)


def _path_problem(token: str) -> str | None:
    """Why a path of an example is wrong (``None``: fine)."""
    path = token.split("=", 1)[-1].rstrip("/")
    if "/" not in path or PLACEHOLDER.search(path) or "*" in path or "{" in path or path.startswith("/"):
        return None
    root = path.split("/")[0]
    if root in ("configs", "tools", "celldata", "ensemble", "custom_modules", "workflow", "docs", "studies"):
        return None if (REPO / path).exists() else "does not exist"
    if path.startswith("work_dirs/demo/"):
        for o in _demo_outputs():
            if o == path or o.startswith(path + "/"):
                return None
            if Path(o).parent == Path(path).parent and re.match(r"(iter|epoch)_\d+\.pth$", Path(path).name):
                return None
        return "is not written by the demo recipe (configs/recipes/demo_cpu.yaml)"
    if root == "data" and path.startswith("data/sartorius"):
        return None if DATA_LAYOUT.match(path) else "is not part of the Kaggle / prepared layout"
    if root in ("work_dirs", "submissions"):
        return None
    if root in ("predictions", "preds"):
        return "outputs go under work_dirs/ (inputs: data/sartorius/...)"
    return None


@pytest.mark.parametrize("module", _tool_modules())
def test_help_examples_name_real_paths_and_options(module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every example of a tool's --help text parses with the tool's own parser and names paths that exist, that
    the demo recipe writes, that the data layout holds, or placeholders (upper case)."""
    monkeypatch.setenv("LOCAL_RANK", "0")
    bad = []
    for argv in _examples(module):
        target = _module_of(argv)
        if target is None:
            continue
        bad += [f"{shlex.join(argv)}: {t} {why}" for t in argv if (why := _path_problem(t))]
        if not PLACEHOLDER.search(shlex.join(target[1])):
            try:
                _parse(*target)
            except AssertionError as e:
                bad.append(str(e))
    assert not bad, "\n".join(bad)


def test_demo_help_shows_no_recipe_argument(capsys: pytest.CaptureFixture[str]) -> None:
    """``tools/demo.py --help`` shows the options it accepts, no ``recipe`` positional it would then reject."""
    from workflow.cli.demo import main

    with pytest.raises(SystemExit) as e:
        main(["--help"])
    usage = capsys.readouterr().out
    assert e.value.code == 0 and usage.startswith("usage:") and "recipe" not in usage.split("\n\n")[0]
    assert main(["--dry-run", "--work-dir", str(REPO / "work_dirs" / "docs_demo_dry")]) == 0
    assert not (REPO / "work_dirs" / "docs_demo_dry").exists()


def test_recipe_with_missing_data_root_fails_its_dry_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from workflow.cli.run_recipe import main

    recipe = REPO / "configs" / "recipes" / "sartorius_gpu.yaml"
    assert main([str(recipe), "--data-root", str(tmp_path / "none"), "--dry-run"]) == 2
    cap = capsys.readouterr()
    assert cap.out == "" and cap.err.count("\n") == 1 and "no train.csv" in cap.err
    if not (REPO / "data" / "sartorius" / "train.csv").is_file():
        assert main([str(recipe), "--dry-run"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "data.root" in err and "--data-root" in err


def _output_cases(tmp: Path) -> list[tuple[str, list[str], str]]:
    """``(module, argv, option)``: every CLI with its output option naming the wrong kind of path."""
    folder, file = tmp / "a_folder", tmp / "a_file"
    folder.mkdir()
    file.write_text("x")
    cfg = "configs/mask_rcnn/mask-rcnn_r18_fpn_demo-cpu_sartorius.py"
    seg = "configs/unet/se-unet-fre_c8-s4_1xb2-500iter_sartorius-demo-256x256.py"
    ens = "configs/ensemble/sartorius_ensemble.yaml"
    f, d = str(folder), str(file)
    return [
        ("ensemble.tune", ["--config", ens, "--truth", "t.json", "--out", f], "--out"),
        ("ensemble.run", ["--config", ens, "--out", f], "--out"),
        ("ensemble.score", ["--truth", "t.csv", "--submission", "s.csv", "--report", f], "--report"),
        (
            "ensemble.fuse_boxes",
            ["--config", "configs/ensemble/sartorius_box_first_boxes.yaml", "--out", f],
            "--out",
        ),
        ("workflow.cli.infer", [cfg, str(file), "--images", "x", "--out", f], "--out"),
        ("workflow.cli.test", [cfg, str(file), "--out", f], "--out"),
        ("workflow.cli.train", [cfg, "--work-dir", d], "--work-dir"),
        ("workflow.cli.prepare_sartorius", ["--data-root", d], "--data-root"),
        ("workflow.cli.make_synthetic", ["--out", d], "--out"),
        ("workflow.cli.dataset_report", ["--data-root", "x", "--out", d], "--out"),
        ("workflow.cli.analyze_boxes", ["--data-root", "x", "--out", d], "--out"),
        ("workflow.cli.prepare_livecell", ["--ann", "a.json", "--images-dir", "x", "--out", d], "--out"),
        ("workflow.cli.classify_images", [cfg, str(file), "--images", "x", "--out", f], "--out"),
        ("workflow.cli.cross_validate", [cfg, "--work-dir", d], "--work-dir"),
        ("workflow.cli.search", [seg, "--space", "s.yaml", "--trials", "1", "--study-dir", d], "--study-dir"),
        ("workflow.cli.compress", ["ptq", seg, str(file), "--work-dir", d], "--work-dir"),
        ("workflow.cli.make_bundle", ["--ensemble", ens, "--out", d], "--out"),
        (
            "workflow.cli.run_recipe",
            ["configs/recipes/demo_cpu.yaml", "--work-dir", d, "--dry-run"],
            "--work-dir",
        ),
    ]


def test_every_output_option_is_checked_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An output naming a folder where a file is written (or a file where a folder is): exit 2, one line naming
    the option, nothing written, no traceback."""
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("LOCAL_RANK", "0")
    bad = []
    for module, argv, option in _output_cases(tmp_path):
        before = sorted(p.name for p in tmp_path.rglob("*"))
        try:
            code = importlib.import_module(module).main(argv)
        except SystemExit as e:  # an argparse rejection would be a broken case
            code = f"SystemExit({e.code})"
        cap = capsys.readouterr()
        ok = code == 2 and cap.err.count("\n") == 1 and option in cap.err and "Traceback" not in cap.err
        if not ok or sorted(p.name for p in tmp_path.rglob("*")) != before:
            bad.append(f"{module} {shlex.join(argv)}: exit {code}, stderr {cap.err.strip()!r}")
    assert not bad, "\n".join(bad)


# ------------------------------------------------------------------------------------------------- the flow (~2-3 min)


@dataclass
class Ran:
    command: Command
    argv: list[str]
    code: int | str
    seconds: float
    output: str


def _runnable_argv(c: Command, scratch: Path) -> tuple[str, list[str]]:
    """The module and arguments a runnable command is executed with (the documented changes applied)."""
    module, args = _module_of(c.argv)  # type: ignore[misc]
    args = [re.sub(r"\biter_\d+\.pth$", "iter_2.pth", a) for a in args]
    if module == "workflow.cli.train":
        args += ["--cfg-options", *SHORT_TRAINING]
    if module == "workflow.cli.run_recipe":
        args = [str(scratch / a) if re.match(r"(data/sartorius|work_dirs/)", a) else a for a in args]
    return module, args


def _run(module: str, args: list[str]) -> tuple[int | str, str]:
    import signal

    main: Callable[[list[str]], int] = importlib.import_module(module).main
    buf = io.StringIO()
    # run_recipe installs its own SIGTERM handler; the test process keeps the one it had
    handler = signal.getsignal(signal.SIGTERM)
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            code = main(args)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else str(e.code)
    except Exception as e:  # noqa: BLE001 - the report names the command and its traceback
        import traceback

        code = f"{type(e).__name__}: {e}"
        buf.write(traceback.format_exc())
    finally:
        signal.signal(signal.SIGTERM, handler)
    return code, buf.getvalue()


@pytest.fixture(scope="module")
def flow(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Ran], float]:
    """Every runnable documented command, run once in document order in one scratch folder (the tiny trained
    models are shared by every later step)."""
    pytest.importorskip("mmdet")
    pytest.importorskip("mmseg")
    scratch = tmp_path_factory.mktemp("docs_flow")
    for name in ("configs", "tools"):
        (scratch / name).symlink_to(REPO / name, target_is_directory=True)
    old = Path.cwd()
    os.chdir(scratch)
    ran: list[Ran] = []
    seen: set[str] = set()
    t0 = time.perf_counter()
    try:
        for c in all_commands():
            if c.needs is not None or shlex.join(c.argv) in seen:
                continue
            seen.add(shlex.join(c.argv))
            module, args = _runnable_argv(c, scratch)
            t = time.perf_counter()
            code, output = _run(module, args)
            ran.append(Ran(c, args, code, time.perf_counter() - t, output))
            if code != 0:
                break
    finally:
        os.chdir(old)
    return scratch, ran, time.perf_counter() - t0


def test_documented_commands_run(flow: tuple[Path, list[Ran], float]) -> None:
    scratch, ran, total = flow
    failed = [r for r in ran if r.code != 0]
    assert not failed, f"{failed[0].command}\nexit {failed[0].code}\n{failed[0].output[-3000:]}"
    expected = [c for c in all_commands() if c.needs is None]
    assert len(ran) == len({shlex.join(c.argv) for c in expected})
    timings = "\n".join(f"{r.seconds:6.1f} s  {r.command}" for r in ran)
    print(f"\n{len(ran)} documented commands in {total:.0f} s:\n{timings}")


def test_documented_outputs_exist_with_the_documented_names(flow: tuple[Path, list[Ran], float]) -> None:
    """Every ``--out`` of a command exists, and the files the ensemble YAMLs read are the ones infer wrote."""
    scratch, ran, _ = flow
    missing = []
    for r in ran:
        for opt in ("--out", "--work-dir"):
            if opt in r.argv and not (scratch / r.argv[r.argv.index(opt) + 1]).exists():
                missing.append(f"{r.command}: {opt} {r.argv[r.argv.index(opt) + 1]}")
    assert not missing, missing
    for p in (REPO / "configs" / "ensemble").glob("*.yaml"):
        for m in yaml.safe_load(p.read_text())["models"]:
            assert (scratch / m["predictions"]).is_file(), (p.name, m["predictions"])
    for name in ("sartorius_ensemble_tuned.csv", "sartorius_box_first.csv", "val.csv"):
        assert (scratch / "submissions" / name).is_file(), name
    assert (scratch / "work_dirs" / "bundle" / "bundle.json").is_file()


def test_scoring_the_validation_fold_two_ways_agrees(flow: tuple[Path, list[Ran], float]) -> None:
    """The validation submission scored against its fold's truth and against train.csv with --images-from
    submission gives the same score; a test submission against train.csv is refused with one line."""
    scratch, ran, _ = flow
    scores = {}
    for r in ran:
        if r.argv and r.command.argv[:3] == ["python", "-m", "ensemble.score"]:
            m = re.search(r"\bscore\"?:?\s+([0-9.]+)", r.output)
            assert m, r.output
            scores[r.argv[r.argv.index("--truth") + 1]] = round(float(m.group(1)), 4)
    assert set(scores) >= {"data/sartorius/annotations/fold0_val.json", "data/sartorius/train.csv"}
    assert len(set(scores.values())) == 1, scores
    old = Path.cwd()
    os.chdir(scratch)
    try:
        code, out = _run(
            "ensemble.score",
            [
                "--truth",
                "data/sartorius/train.csv",
                "--submission",
                "submissions/sartorius_ensemble_tuned.csv",
            ],
        )
    finally:
        os.chdir(old)
    assert code == 2 and out.count("\n") == 1 and "not in the truth" in out
