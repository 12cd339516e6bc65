"""The Kaggle offline path end to end (slow): wheelhouse -> fresh venv (--no-index) -> bundle -> notebook, headless.

Also the stack on Python 3.12 (Kaggle's): the framework-free tests in a fresh 3.12 venv installed from a 3.12
wheelhouse, and a model smoke test there when a cp312 torch wheel (with its dependencies) is at hand.

Set ``KAGGLE_TEST_REPORT=<file.json>`` to keep the measured times and sizes. The shared prebuilt onedl-mmcv wheel
(``../shared/wheels``) stands in for the mmcv compile when present (``WHEELHOUSE``); without it the wheelhouse
build compiles onedl-mmcv (10-30 min on 2 cores).
"""

from __future__ import annotations

import json
import os
import re
import runpy
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_WHEELS = REPO.parent / "shared" / "wheels"
NOTEBOOK = REPO / "tools" / "kaggle" / "inference.ipynb"
MRCNN_DEMO = REPO / "configs/mask_rcnn/mask-rcnn_r18_fpn_demo-cpu_sartorius.py"
YOLOX_DEMO = REPO / "configs/yolox/yolox_tiny_demo-cpu_sartorius.py"
SEG_DEMO = REPO / "configs/upernet/upernet_r18_1xb2-250iter_sartorius-demo-256x256.py"
FRAMEWORK = re.compile(r"\b(torch|mmdet|mmseg|mmengine|mmcv|custom_modules)\b")

pytestmark = pytest.mark.slow


def _report(key: str, value: dict) -> None:
    path = os.environ.get("KAGGLE_TEST_REPORT")
    print(f"\n[kaggle offline] {key}: {json.dumps(value, indent=1)}")
    if path:
        data = json.loads(Path(path).read_text()) if Path(path).is_file() else {}
        data[key] = value
        Path(path).write_text(json.dumps(data, indent=1))


def _run(cmd: list[str], timeout: int, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    return r


def _offline_env() -> dict[str, str]:
    """This process's environment without any pip configuration (no find-links, indexes or constraints)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


def _train(config: Path, root: Path, work: Path, iters: int) -> Path:
    from custom_modules.runner_utils import build_runner

    opts = {
        "data_root": str(root),
        "train_cfg.max_iters": iters,
        "train_cfg.val_interval": iters,
        "train_dataloader.num_workers": 0,
        "default_hooks.checkpoint.interval": iters,
        "val_cfg": None,
        "val_dataloader": None,
        "val_evaluator": None,
    }
    build_runner(config, work_dir=work, cfg_options=opts).train()
    ckpt = work / f"iter_{iters}.pth"
    assert ckpt.is_file()
    return ckpt


def test_notebook_runs_offline_from_wheelhouse_and_bundle(
    tiny_sartorius: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("mmdet")
    papermill = pytest.importorskip("papermill")
    times: dict[str, float] = {}
    kaggle_input = tmp_path / "kaggle" / "input"
    wheels = kaggle_input / "datasets" / "someone" / "sartorius-stack-wheels"
    bundle_dir = kaggle_input / "datasets" / "someone" / "sartorius-cell-bundle"
    test_dir = kaggle_input / "competitions" / "sartorius-cell-instance-segmentation" / "test"
    working = tmp_path / "kaggle" / "working"
    working.mkdir(parents=True)

    # 1. wheelhouse for this interpreter; torch and ipykernel included because the fresh venv has neither
    t0 = time.perf_counter()
    env = dict(os.environ, PYTHON=sys.executable)
    if SHARED_WHEELS.is_dir():
        env["WHEELHOUSE"] = str(SHARED_WHEELS)
    wheels.parent.mkdir(parents=True)
    _run(
        ["bash", REPO / "tools/kaggle/build_wheelhouse.sh", wheels, "--with-torch", "--extra", "ipykernel"],
        3600,
        env=env,
    )
    times["build_wheelhouse_s"] = time.perf_counter() - t0
    manifest = json.loads((wheels / "manifest.json").read_text())
    import torch

    assert (
        manifest["torch"] == torch.__version__
        and manifest["onedl_mmcv"]["built_against_torch"] == torch.__version__
    )
    assert manifest["python_tag"] == f"cp{sys.version_info.major}{sys.version_info.minor}"
    names = {f.get("name") for f in manifest["files"]}
    for dist in (
        "onedl-mmcv",
        "onedl-mmengine",
        "onedl-mmdetection",
        "onedl-mmsegmentation",
        "sartorius-cellseg-stack",
    ):
        assert dist in names, f"{dist} missing from the wheelhouse"
    from workflow.bundle import sha256_file

    for f in manifest["files"]:
        assert sha256_file(wheels / f["file"]) == f["sha256"]

    # 2. briefly trained demo checkpoints -> validation prediction files -> an ensemble -> the bundle
    t0 = time.perf_counter()
    torch.manual_seed(0)
    infer = runpy.run_path(str(REPO / "tools/infer.py"), run_name="tool_under_test")["main"]
    val = tiny_sartorius / "annotations" / "fold0_val.json"
    models = [
        ("mask_rcnn", MRCNN_DEMO, 2, ["--tta"]),
        ("yolox", YOLOX_DEMO, 2, []),
        ("upernet", SEG_DEMO, 1, []),
    ]
    entries = []
    for name, config, iters, extra in models:
        ckpt = _train(config, tiny_sartorius, tmp_path / "train" / name, iters)
        pred = tmp_path / "preds" / f"{name}_val.npz"
        args = [str(config), str(ckpt), "--ann-file", str(val), "--out", str(pred), "--name", name]
        assert (
            infer(
                [
                    *args,
                    "--score-thr",
                    "0.001",
                    "--max-per-img",
                    "50",
                    "--device",
                    "cpu",
                    "--no-progress",
                    *extra,
                ]
            )
            == 0
        )
        entries.append({"name": name, "predictions": str(pred), "weight": 1.0})
    import yaml

    tuned = tmp_path / "tuned.yaml"
    tuned.write_text(yaml.safe_dump({"name": "kaggle_test", "models": entries, "truth": str(val)}))
    times["train_and_predict_val_s"] = time.perf_counter() - t0
    from workflow.bundle import load_bundle, make_bundle

    bundle = make_bundle(tuned, bundle_dir)
    assert load_bundle(bundle_dir) == bundle
    assert [(m["name"], m["role"], m["tta"]) for m in bundle["models"]] == [
        ("mask_rcnn", "instance", True), ("yolox", "boxes", False), ("upernet", "semantic", False),
    ]  # fmt: skip
    ema = {m["name"]: m["folds"][0]["ema_weights"] for m in bundle["models"]}
    assert ema["yolox"] is True  # the YOLOX config keeps EMA weights
    for m in bundle["models"]:
        (fold,) = m["folds"]
        assert fold["checkpoint_bytes"] < fold["source"]["checkpoint_bytes"]

    # 3. the competition's test images where Kaggle's new layout mounts them
    test_dir.mkdir(parents=True)
    for p in sorted((tiny_sartorius / "test").glob("*.png")):
        shutil.copy(p, test_dir / p.name)
    test_ids = {p.stem for p in test_dir.glob("*.png")}
    assert test_ids

    # 4. a fresh venv with only what Kaggle's image has (torch, a kernel), from the wheelhouse, no index
    t0 = time.perf_counter()
    venv = tmp_path / "venv"
    offline = _offline_env()
    _run([Path(sys.base_prefix) / "bin" / "python3", "-m", "venv", venv], 300)
    vpy = venv / "bin" / "python"
    _run(
        [
            vpy,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--find-links",
            wheels,
            f"torch=={torch.__version__}",
            "ipykernel",
        ],
        1200,
        env=offline,
    )
    r = _run(
        [
            vpy,
            "-c",
            "import importlib.util as u; print(u.find_spec('mmdet') is None, u.find_spec('ensemble') is None)",
        ],
        60,
        cwd=tmp_path,
    )
    assert r.stdout.split() == ["True", "True"], (
        "the fresh venv must not see the stack before the notebook installs it"
    )
    jupyter = tmp_path / "jupyter"
    _run(
        [vpy, "-m", "ipykernel", "install", "--prefix", jupyter, "--name", "kaggle-offline-test"],
        300,
        env=offline,
    )
    times["fresh_venv_s"] = time.perf_counter() - t0

    # 5. the notebook, headless, kernel from that venv, its parameters pointed at the temporary /kaggle tree
    for k in list(os.environ):
        if k.startswith("PIP_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("JUPYTER_PATH", str(jupyter / "share" / "jupyter"))
    out_csv = working / "submission.csv"
    t0 = time.perf_counter()
    nb = papermill.execute_notebook(
        str(NOTEBOOK),
        str(tmp_path / "inference.out.ipynb"),
        parameters={
            "KAGGLE_INPUT": str(kaggle_input),
            "OUT": str(out_csv),
            "WORK_DIR": str(working / "predictions"),
            "DEVICE": "cpu",
        },
        kernel_name="kaggle-offline-test",
        cwd=str(working),
        progress_bar=False,
    )
    times["notebook_s"] = time.perf_counter() - t0
    text = "\n".join(
        o.get("text", "")
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if "text" in o
    )
    assert (
        f"WHEELS   = {wheels}" in text
        and f"BUNDLE   = {bundle_dir}" in text
        and f"TEST_DIR = {test_dir}" in text
    )
    assert "install: " in text and "validate" in text  # the install cell's and the last cell's time lines
    # the notebook's install went into the fresh venv (no index: its pip had no configuration either)
    code = (
        "import mmcv.ops, mmdet, ensemble, custom_modules; print(mmcv.ops.__file__, custom_modules.__file__)"
    )
    r = _run([vpy, "-c", code], 300, cwd=tmp_path)
    assert r.stdout.count(str(venv)) == 2, r.stdout

    # 6. the submission: every test image, RLE decodable, no overlaps (the project's reader)
    from ensemble.submission import read_submission

    masks = read_submission(out_csv, expected_ids=test_ids)
    assert set(masks) == test_ids
    n_inst = sum(len(m) for m in masks.values())
    for name in ("mask_rcnn", "yolox", "upernet"):
        assert (working / "predictions" / f"{name}.npz").is_file()
    wheel_bytes = {f["name"]: f["bytes"] for f in manifest["files"] if f.get("name")}
    _report(
        "notebook_offline",
        {
            **{k: round(v, 1) for k, v in times.items()},
            "wheelhouse_mb": round(manifest["total_bytes"] / 2**20, 1),
            "wheelhouse_without_torch_mb": round(
                (manifest["total_bytes"] - wheel_bytes.get("torch", 0)) / 2**20, 1
            ),
            "onedl_mmcv_wheel_mb": round(wheel_bytes["onedl-mmcv"] / 2**20, 2),
            "wheel_files": len([f for f in manifest["files"] if f.get("name")]),
            "bundle_mb": round(bundle["total_bytes"] / 2**20, 1),
            "bundle_models": {
                m["name"]: {
                    "role": m["role"],
                    "checkpoint_mb": round(m["folds"][0]["checkpoint_bytes"] / 2**20, 1),
                    "training_checkpoint_mb": round(m["folds"][0]["source"]["checkpoint_bytes"] / 2**20, 1),
                }
                for m in bundle["models"]
            },
            "test_images": len(test_ids),
            "submission_instances": n_inst,
        },
    )


def _python312() -> str:
    """A working Python 3.12 (pyenv's shims answer 'command not found' for a version not selected: try each)."""
    cands = [*sorted(Path("/root/.pyenv/versions").glob("3.12*/bin/python3.12")), shutil.which("python3.12")]
    for cand in cands:
        if cand and subprocess.run([str(cand), "-c", "import venv"], capture_output=True).returncode == 0:
            return str(cand)
    pytest.skip("no working Python 3.12 interpreter on this machine (python3.12 / pyenv)")


def _requirements(*files: str, drop: tuple[str, ...] = ()) -> list[str]:
    from packaging.requirements import Requirement

    out = []
    for f in files:
        for line in (REPO / f).read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line and not Requirement(line).name.lower().startswith(drop):
                out.append(line)
    return out


def test_python312_framework_free_stack_and_model_smoke(tmp_path: Path) -> None:
    """Kaggle runs Python 3.12: the project wheel installs there from a wheelhouse (--no-index) and passes."""
    py312 = _python312()
    t0 = time.perf_counter()
    venv = tmp_path / "venv312"
    _run([py312, "-m", "venv", venv], 300)
    vpy = venv / "bin" / "python"
    wh = tmp_path / "wheels312"
    # a cp312 wheelhouse of the framework-free runtime + test tools and the project wheel (no deps: torch and the
    # OpenMMLab forks need a cp312 torch, below)
    reqs = _requirements("requirements.txt", "requirements-dev.txt", drop=("torch", "onedl-"))
    _run([vpy, "-m", "pip", "wheel", "-q", "--prefer-binary", "-w", wh, *reqs], 2400)
    _run([vpy, "-m", "pip", "wheel", "-q", "--no-deps", "-w", wh, REPO], 600)
    offline = _offline_env()
    _run([vpy, "-m", "pip", "install", "-q", "--no-index", "--find-links", wh, *reqs], 1200, env=offline)
    _run(
        [
            vpy,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            "--find-links",
            wh,
            "sartorius-cellseg-stack",
        ],
        600,
        env=offline,
    )
    no_path = {k: v for k, v in offline.items() if k != "PYTHONPATH"}
    code = "import sys, ensemble, celldata; print(sys.version_info[:2], ensemble.__file__)"
    r = _run([vpy, "-c", code], 120, cwd=tmp_path, env=no_path)
    assert "(3, 12)" in r.stdout and str(venv) in r.stdout  # the installed wheel, not the checkout
    setup_s = time.perf_counter() - t0
    # the framework-free tests (ensemble, celldata: every test file that imports no torch/OpenMMLab)
    files = sorted(
        str(p.relative_to(REPO))
        for p in (REPO / "tests").glob("test_*.py")
        if not FRAMEWORK.search(p.read_text())
    )
    assert any("test_masks" in f for f in files) and any("test_metrics" in f for f in files)
    t0 = time.perf_counter()
    # the venv's pytest script (not `python -m pytest`, which would put the checkout on sys.path): the tests import
    # the installed wheel
    r = subprocess.run(
        [str(venv / "bin" / "pytest"), "-q", "-m", "not slow and not gpu", "-p", "no:cacheprovider", *files],
        cwd=REPO, capture_output=True, text=True, timeout=3600, env=no_path,
    )  # fmt: skip
    tail = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr[-2000:]
    assert r.returncode == 0, f"framework-free tests failed on 3.12:\n{r.stdout[-6000:]}\n{r.stderr[-2000:]}"
    report = {"python": "3.12", "setup_s": round(setup_s, 1), "tests_s": round(time.perf_counter() - t0, 1)}
    report.update({"test_files": len(files), "result": tail})
    # one model smoke test needs torch for cp312: a folder with its wheel and dependencies (PyPI's is a CUDA
    # build, which runs on the CPU; never downloaded by the test)
    torch_wheels = sorted(
        p
        for d in (os.environ.get("TORCH312_WHEELS", ""), str(SHARED_WHEELS))
        if d and Path(d).is_dir()
        for p in Path(d).glob("torch-*-cp312-*.whl")
    )
    if not torch_wheels:
        report["model_smoke"] = "skipped: no cp312 torch wheel (set TORCH312_WHEELS=<dir>)"
        _report("python312", report)
        pytest.skip("framework-free tests passed on 3.12; the model smoke test needs a folder with a cp312 torch "
                    "wheel and its dependencies (TORCH312_WHEELS=<dir>)")  # fmt: skip
    _run(
        [
            vpy,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--find-links",
            torch_wheels[0].parent,
            torch_wheels[0],
        ],
        1200,
        env=offline,
    )
    full = tmp_path / "wheels312_full"
    env = dict(os.environ, PYTHON=str(vpy))
    if SHARED_WHEELS.is_dir():
        env["WHEELHOUSE"] = str(SHARED_WHEELS)
    _run(["bash", REPO / "tools/kaggle/build_wheelhouse.sh", full], 3600, env=env)
    _run(["bash", full / "install_offline.sh", full], 1200, env=dict(offline, PYTHON=str(vpy)))
    smoke = (
        "from custom_modules.inference import load_model; import numpy as np\n"
        f"m = load_model({str(YOLOX_DEMO)!r}, None, 'cpu')\n"
        "p = m.predict(np.zeros((520, 704, 3), np.uint8), 'x'); print('smoke ok', len(p))\n"
    )
    r = _run([vpy, "-c", smoke], 600, cwd=tmp_path, env=no_path)
    assert "smoke ok" in r.stdout
    report["model_smoke"] = "passed"
    _report("python312", report)
