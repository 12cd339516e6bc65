"""Smoke run of a recipe (``tools/run_recipe.py RECIPE --smoke``): every step with the recipe's own configs on a
tiny subset, in a separate work dir, with each step's time and peak memory.

The recipe is transformed, not the steps: :func:`smoke_recipe` returns a copy of the recipe whose models and
pretrain models carry extra ``cfg_options`` (one training epoch of ``iterations`` batches, or ``iterations``
iterations for an iteration-based loop; batches of at most ``max_batch``; validation and test dataloaders on 2
images; no dataloader workers; a logger line per iteration), with one process per model (``gpus: 1``), tuning with
one round, and outputs under the smoke work dir. The data is a subset written into the smoke work dir
(``images_per_fold`` training images per fold, chosen with distinct sample ids and mixed cell types, and
``n_test`` test images; symlinks to the source images), or the recipe's synthetic data with that many images; a
LIVECell pretraining step gets a small generated LIVECell-format set (made from the subset's own images and cells).
Config values only a GPU can serve are adapted and listed: several GPUs (DDP over nccl) -> 1 process, large
batches -> ``max_batch``, fp16 (``AmpOptimWrapper``) -> fp32, ``cudnn_benchmark`` -> off.

The smoke work dir is ``<work_dir>_smoke``: the real work dir is never written, and nothing of the smoke run is
reused by the real run (stamps, data, checkpoints and outputs all live under the smoke dir). After the plan's
``bundle`` step a ``bundle/load`` step loads the bundle back (every model's weights into its config).

:func:`run_smoke` runs every step with ``keep_going`` (all failures are listed), measuring each step's peak
resident memory (the step's whole process tree, sampled) and reading the per-iteration training time from its
log; ``smoke_report.md`` / ``smoke_report.json`` in the smoke dir hold the table.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celldata.fileio import atomic_write_json, atomic_write_text
from celldata.images import list_image_files
from workflow.execution import Step
from workflow.recipe.config import REPO, ModelSpec, Recipe, TuneSpec
from workflow.recipe.plan import Plan, build_plan

__all__ = [
    "SMOKE_SUFFIX",
    "SmokeOptions",
    "SmokePlan",
    "smoke_work_dir",
    "smoke_config_options",
    "smoke_recipe",
    "build_smoke_plan",
    "run_smoke",
    "format_report",
]

SMOKE_SUFFIX = "_smoke"
REPORT_MD = "smoke_report.md"
REPORT_JSON = "smoke_report.json"


@dataclass
class SmokeOptions:
    """Sizes of a smoke run.

    Attributes:
        images_per_fold: Training images per fold (each fold's validation part; the rest trains).
        n_test: Test images.
        iterations: Training iterations per model.
        max_batch: Largest training batch per process.
        eval_images: Images of the validation / test dataloaders inside training.
        tune_rounds: Rounds of the ensemble tuning.
        tune_trials: Most trials of a TPE tuning.
        tune_cv: Most parts of the held-out report.
        livecell_images: Images of the generated LIVECell-format set.
    """

    images_per_fold: int = 2
    n_test: int = 2
    iterations: int = 2
    max_batch: int = 2
    eval_images: int = 2
    tune_rounds: int = 1
    tune_trials: int = 4
    tune_cv: int = 2
    livecell_images: int = 4


@dataclass
class SmokePlan:
    """A smoke plan: the plan of the transformed recipe and what was adapted.

    Attributes:
        plan: The plan (work dir ``<work_dir>_smoke``).
        adaptations: One line per config value changed because only a GPU can serve it.
        reductions: One line per size reduced for the smoke run.
        options: The sizes.
    """

    plan: Plan
    adaptations: list[str]
    reductions: list[str]
    options: SmokeOptions = field(default_factory=SmokeOptions)


def _abs(p: str | Path) -> Path:
    p = Path(p)
    return p if p.is_absolute() else REPO / p


def smoke_work_dir(recipe: Recipe, work_dir: str | Path | None = None) -> Path:
    """``<work_dir>_smoke`` of the real run's work dir (``work_dir`` or the recipe's)."""
    real = _abs(work_dir or recipe.work_dir)
    return real.with_name(real.name + SMOKE_SUFFIX)


# ----------------------------------------------------------------------------------------------------------------
# config options
# ----------------------------------------------------------------------------------------------------------------
def _leaf_datasets(node: Any, path: str) -> list[tuple[str, Any]]:
    """Dotted paths of the datasets that read files, below a dataset (wrappers' ``dataset`` / ``datasets``)."""
    if not isinstance(node, dict):
        return []
    if isinstance(node.get("dataset"), dict):
        return _leaf_datasets(node["dataset"], f"{path}.dataset")
    if isinstance(node.get("datasets"), list):
        out = []
        for i, d in enumerate(node["datasets"]):
            out += _leaf_datasets(d, f"{path}.datasets.{i}")
        return out
    return [(path, node)]


def _flatten(d: dict, prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if "." in str(k):
            raise ValueError(f"{prefix}: key {k!r} cannot be given as a --cfg-options entry")
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}.{k}"))
        else:
            out[f"{prefix}.{k}"] = v
    return out


def smoke_config_options(
    config: str, cfg_options: dict[str, Any], opts: SmokeOptions, what: str
) -> tuple[dict[str, Any], list[str], list[str]]:
    """Extra ``--cfg-options`` that make one training run of ``config`` a smoke run.

    Args:
        config: Config file (relative to the repository root or absolute).
        cfg_options: The recipe's own options of this model (applied before the smoke options).
        opts: The smoke sizes.
        what: Name of the model in the adaptation lines.

    Returns:
        ``(options, adaptations, reductions)``: the options, the GPU-only values adapted, the sizes reduced.
    """
    from custom_modules.config import load_config

    base = {k: v for k, v in cfg_options.items() if k not in ("data_root", "fold", "load_from", "pretrained")}
    cfg = load_config(_abs(config), base, import_custom_modules=False).to_dict()
    out: dict[str, Any] = {}
    adapt: list[str] = []
    reduce: list[str] = []
    tc = cfg.get("train_cfg") or {}
    by_epoch = "max_epochs" in tc or tc.get("type") == "EpochBasedTrainLoop"
    if by_epoch:
        out.update(
            {"train_cfg.max_epochs": 1, "train_cfg.val_interval": 1, "default_hooks.checkpoint.interval": 1}
        )
        reduce.append(f"{what}: {tc.get('max_epochs')} epochs -> 1 epoch of {opts.iterations} iterations")
    else:
        out.update(
            {
                "train_cfg.max_iters": opts.iterations,
                "train_cfg.val_interval": opts.iterations,
                "default_hooks.checkpoint.interval": opts.iterations,
            }
        )
        reduce.append(f"{what}: {tc.get('max_iters')} iterations -> {opts.iterations}")
    out["default_hooks.logger.interval"] = 1
    tl = cfg.get("train_dataloader") or {}
    bs = int(tl.get("batch_size") or 1)
    new_bs = min(bs, opts.max_batch)
    if new_bs != bs:
        adapt.append(f"{what}: train batch {bs} -> {new_bs} per process")
    out["train_dataloader.batch_size"] = new_bs
    for path, _ in _leaf_datasets(tl.get("dataset"), "train_dataloader.dataset"):
        out[f"{path}.indices"] = new_bs * opts.iterations
    for name in ("train_dataloader", "val_dataloader", "test_dataloader"):
        dl = cfg.get(name)
        if not isinstance(dl, dict):
            continue
        if int(dl.get("num_workers") or 0) > 0:
            out[f"{name}.num_workers"] = 0
            out[f"{name}.persistent_workers"] = False
        if name != "train_dataloader":
            out[f"{name}.batch_size"] = 1
            for path, _ in _leaf_datasets(dl.get("dataset"), f"{name}.dataset"):
                out[f"{path}.indices"] = opts.eval_images
    reduce.append(f"{what}: dataloader workers -> 0; validation inside training on {opts.eval_images} images")
    env = cfg.get("env_cfg") or {}
    if env.get("cudnn_benchmark"):
        out["env_cfg.cudnn_benchmark"] = False
        adapt.append(f"{what}: env_cfg.cudnn_benchmark True -> False")
    ow = cfg.get("optim_wrapper") or {}
    if "Amp" in str(ow.get("type", "")):
        kept = {k: v for k, v in ow.items() if k not in ("type", "loss_scale", "dtype", "use_fsdp")}
        out["optim_wrapper._delete_"] = True
        out["optim_wrapper.type"] = "OptimWrapper"
        out.update(_flatten(kept, "optim_wrapper"))
        adapt.append(f"{what}: fp16 ({ow.get('type')}) -> fp32 OptimWrapper")
    return out, adapt, reduce


# ----------------------------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------------------------
def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():
        if dst.is_symlink() and Path(os.readlink(dst)) == src:
            return
        dst.unlink()
    os.symlink(src, dst)


def _write_if_changed(path: Path, text: str) -> None:
    if not (path.is_file() and path.read_text() == text):
        atomic_write_text(path, text)


def write_data_subset(
    src: Path, dst: Path, n_images: int, n_test: int, test_dir: str = "test", min_groups: int = 2
) -> list[str]:
    """A Kaggle-layout subset of ``src`` in ``dst``: ``n_images`` training images of distinct sample ids, cell
    types taken in turn, and the first ``n_test`` test images (symlinks); unchanged files are not rewritten.

    Returns:
        The chosen image ids.

    Raises:
        ValueError: If ``src`` has no ``train.csv``, fewer usable images than asked or fewer than ``min_groups``
            sample ids (the folds are grouped by sample id).
    """
    csv_path = src / "train.csv"
    if not csv_path.is_file():
        raise ValueError(f"{src}: no train.csv (Kaggle layout expected)")
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        fields = list(reader.fieldnames or [])
        rows = list(reader)
    by_id: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_id[r["id"]].append(r)
    by_type: dict[str, list[str]] = defaultdict(list)
    for iid in sorted(by_id):
        if (src / "train" / f"{iid}.png").is_file():
            by_type[by_id[iid][0].get("cell_type", "")].append(iid)
    chosen: list[str] = []
    samples: set[str] = set()
    queues = [list(v) for _, v in sorted(by_type.items())]
    while len(chosen) < n_images and any(queues):
        for q in queues:
            while q:
                iid = q.pop(0)
                sample = by_id[iid][0].get("sample_id") or iid
                if sample not in samples:
                    samples.add(sample)
                    chosen.append(iid)
                    break
            if len(chosen) == n_images:
                break
    n_groups = len(chosen)
    if n_groups < min_groups:
        raise ValueError(f"{src}: only {n_groups} distinct sample ids, {min_groups} needed (one per fold)")
    rest = [iid for v in sorted(by_type.values()) for iid in v if iid not in chosen]
    chosen += rest[: n_images - len(chosen)]
    if len(chosen) < n_images:
        raise ValueError(f"{src}: only {len(chosen)} training images, {n_images} needed")
    s = io.StringIO()
    w = csv.DictWriter(s, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for iid in chosen:
        for r in by_id[iid]:
            w.writerow(r)
    _write_if_changed(dst / "train.csv", s.getvalue())
    for iid in chosen:
        _link((src / "train" / f"{iid}.png").resolve(), dst / "train" / f"{iid}.png")
    for p in list_image_files(src / test_dir)[:n_test]:
        p = Path(p)
        _link(p.resolve(), dst / test_dir / p.name)
    return chosen


_LIVECELL_LINE = {"shsy5y": "SHSY5Y", "astro": "A172", "cort": "BV2"}


def write_livecell_standin(data: Path, out: Path, n_images: int) -> tuple[list[str], str]:
    """A small LIVECell-format set (``livecell_coco_train.json`` / ``livecell_coco_val.json`` with RLE cells and
    ``images/<LINE>_Phase_..._<k>.tif``) made from the first ``n_images`` images of a Kaggle-layout ``data``.

    Returns:
        ``(annotation files, images dir)``.
    """
    import cv2
    import numpy as np
    from pycocotools import mask as mask_utils

    from celldata.rle import kaggle_rle_decode

    with open(data / "train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    by_id: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_id[r["id"]].append(r)
    ids = sorted(by_id)[:n_images]
    (out / "images").mkdir(parents=True, exist_ok=True)
    cats = [{"id": i + 1, "name": n.lower()} for i, n in enumerate(_LIVECELL_LINE.values())]
    cat_of = {n.lower(): i + 1 for i, n in enumerate(_LIVECELL_LINE.values())}
    splits: dict[str, dict] = {
        "train": {"images": [], "annotations": {}, "categories": cats},
        "val": {"images": [], "annotations": {}, "categories": cats},
    }
    aid = 1
    for k, iid in enumerate(ids):
        split = "val" if k % 2 else "train"
        line = _LIVECELL_LINE.get(by_id[iid][0].get("cell_type", ""), "SHSY5Y")
        name = f"{line}_Phase_A{k + 1}_1_00d00h00m_{k + 1}.tif"
        img = cv2.imread(str(data / "train" / f"{iid}.png"), cv2.IMREAD_GRAYSCALE)
        if img is None:
            raise ValueError(f"cannot read {data / 'train' / f'{iid}.png'}")
        h, w = img.shape
        if not (out / "images" / name).is_file():
            cv2.imwrite(str(out / "images" / name), img)
        splits[split]["images"].append({"id": k + 1, "file_name": name, "width": w, "height": h})
        for r in by_id[iid]:
            m = kaggle_rle_decode(r["annotation"], h, w)
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            x, y, bw, bh = (float(v) for v in mask_utils.toBbox(rle))
            splits[split]["annotations"][str(aid)] = {
                "id": aid,
                "image_id": k + 1,
                "category_id": cat_of[line.lower()],
                "segmentation": {"size": [h, w], "counts": rle["counts"].decode()},
                "bbox": [x, y, bw, bh],
                "area": float(m.sum()),
                "iscrowd": 0,
            }
            aid += 1
    anns = []
    for split, d in splits.items():
        p = out / f"livecell_coco_{split}.json"
        _write_if_changed(p, json.dumps(d))
        anns.append(str(p))
    return anns, str(out / "images")


# ----------------------------------------------------------------------------------------------------------------
# the recipe and the plan
# ----------------------------------------------------------------------------------------------------------------
def smoke_recipe(
    recipe: Recipe,
    work_dir: str | Path | None = None,
    options: SmokeOptions | None = None,
) -> tuple[Recipe, list[str], list[str]]:
    """The recipe transformed for a smoke run (see the module docstring); no file is written.

    Args:
        recipe: The real recipe.
        work_dir: The real run's work dir (default: the recipe's); the smoke dir is ``<work_dir>_smoke``.
        options: The smoke sizes.

    Returns:
        ``(recipe, adaptations, reductions)``.
    """
    o = options or SmokeOptions()
    W = smoke_work_dir(recipe, work_dir)
    adapt: list[str] = []
    reduce: list[str] = []
    models: list[ModelSpec] = []
    for m in recipe.models:
        extra, a, r = smoke_config_options(m.config, m.cfg_options, o, m.name)
        if m.gpus > 1:
            a.insert(0, f"{m.name}: {m.gpus} GPUs (DDP, torch.distributed.run) -> 1 process")
        adapt += a
        reduce += r
        models.append(dataclasses.replace(m, gpus=1, cfg_options={**m.cfg_options, **extra}))
    pretrain = recipe.pretrain
    if pretrain is not None:
        pm = {}
        for name, spec in pretrain.models.items():
            extra, a, r = smoke_config_options(
                spec["config"], spec.get("cfg_options") or {}, o, f"pretrain {name}"
            )
            gpus = int(spec.get("gpus", 1))
            if gpus > 1:
                a.insert(0, f"pretrain {name}: {gpus} GPUs (DDP, torch.distributed.run) -> 1 process")
            adapt += a
            reduce += r
            pm[name] = {**spec, "gpus": 1, "cfg_options": {**(spec.get("cfg_options") or {}), **extra}}
        lc = dict(pretrain.livecell)
        lc.update(
            ann=[
                str(W / "livecell_raw" / "livecell_coco_train.json"),
                str(W / "livecell_raw" / "livecell_coco_val.json"),
            ],
            images_dir=str(W / "livecell_raw" / "images"),
            out=str(W / "livecell"),
        )
        reduce.append(
            f"LIVECell: a generated LIVECell-format set of {o.livecell_images} images (the smoke data's own)"
        )
        pretrain = dataclasses.replace(pretrain, livecell=lc, models=pm)
    data = recipe.data
    n_images = data.folds * o.images_per_fold
    if data.synthetic is not None and data.root is None:
        data = dataclasses.replace(
            data, synthetic={**data.synthetic, "n_images": n_images, "n_test": o.n_test}
        )
    t = recipe.ensemble.tune
    tune = TuneSpec(
        method=t.method,
        rounds=min(t.rounds, o.tune_rounds),
        trials=min(t.trials, o.tune_trials),
        cv=min(t.cv, o.tune_cv) if t.cv else 0,
        workers=1,
        seed=t.seed,
        singles=t.singles,
    )
    reduce.append(
        f"data: {o.images_per_fold} training images per fold x {data.folds} folds, {o.n_test} test images; "
        f"tuning: {tune.rounds} round, cv {tune.cv}"
    )
    outputs = dataclasses.replace(
        recipe.outputs,
        submission=str(W / "submission.csv"),
        bundle=str(W / "bundle") if recipe.outputs.bundle else None,
        overlays=min(recipe.outputs.overlays, 1),
    )
    out = dataclasses.replace(
        recipe,
        work_dir=str(W),
        data=data,
        models=models,
        pretrain=pretrain,
        ensemble=dataclasses.replace(recipe.ensemble, tune=tune),
        outputs=outputs,
    )
    return out, adapt, reduce


@dataclass
class LoadBundle:
    """Smoke step ``bundle/load``: the bundle loads back (``load_bundle``, every model's weights into its
    config through the fit check)."""

    bundle: Path
    out: Path

    def __call__(self, ctx: Any) -> None:
        from custom_modules.inference import load_model
        from workflow.bundle import load_bundle

        b = load_bundle(self.bundle)
        loaded = []
        for m in b["models"]:
            for f in m["folds"]:
                load_model(self.bundle / f["config"], self.bundle / f["checkpoint"], device="cpu")
                loaded.append(f["checkpoint"])
                ctx.log(f"loaded {m['name']}: {f['checkpoint']}")
        atomic_write_json(self.out, {"bundle": str(self.bundle), "loaded": loaded}, indent=1)


def build_smoke_plan(
    recipe: Recipe,
    work_dir: str | Path | None = None,
    data_root: str | Path | None = None,
    python: str = sys.executable,
    options: SmokeOptions | None = None,
) -> SmokePlan:
    """The smoke plan of ``recipe``: the transformed recipe's plan in ``<work_dir>_smoke``, on a data subset
    written there now (symlinks; unchanged files are left alone), with ``bundle/load`` after the bundle and every
    step measured (time, peak memory of its process tree).

    Args:
        recipe: The real recipe.
        work_dir: The real run's work dir (``--work-dir``).
        data_root: Kaggle-layout data root (``--data-root``; default: the recipe's).
        python: Interpreter of the tools.
        options: The smoke sizes.

    Raises:
        ValueError: If the data root has no ``train.csv`` or too few images.
    """
    o = options or SmokeOptions()
    sr, adapt, reduce = smoke_recipe(recipe, work_dir, o)
    W = Path(sr.work_dir)
    plan_root: Path | None = None
    if data_root is not None or recipe.data.root is not None:
        src = _abs(data_root if data_root is not None else recipe.data.root)  # type: ignore[arg-type]
        plan_root = W / "data"
        n = recipe.data.folds * o.images_per_fold
        write_data_subset(src, plan_root, n, o.n_test, recipe.data.test_dir, min_groups=recipe.data.folds)
    if sr.pretrain is not None:
        if plan_root is None:
            raise ValueError(
                "--smoke of a LIVECell recipe needs a data root (--data-root) for its stand-in set"
            )
        write_livecell_standin(plan_root, W / "livecell_raw", o.livecell_images)
    plan = build_plan(sr, work_dir=W, data_root=plan_root, python=python)
    steps = list(plan.steps)
    if sr.outputs.bundle and any(s.id == "bundle" for s in steps):
        i = next(i for i, s in enumerate(steps) if s.id == "bundle")
        steps.insert(
            i + 1,
            Step(
                "bundle/load",
                "bundle",
                "load the bundle back (every model's weights into its config)",
                func=LoadBundle(Path(sr.outputs.bundle), W / "bundle_loaded.json"),
                deps=["bundle"],
                outputs=[W / "bundle_loaded.json"],
            ),
        )
    measures = W / "measures"
    plan.steps = [_measured(s, measures, python) for s in steps]
    plan.notes.insert(0, f"SMOKE run of {recipe.source} in {W} (the real work dir is not touched)")
    return SmokePlan(plan=plan, adaptations=adapt, reductions=reduce, options=o)


# ----------------------------------------------------------------------------------------------------------------
# measuring
# ----------------------------------------------------------------------------------------------------------------
def _measure_file(measures: Path, step_id: str) -> Path:
    return measures / (step_id.replace("/", "__") + ".json")


def _measured(step: Step, measures: Path, python: str) -> Step:
    """``step`` with its peak memory recorded in ``measures/<id>.json`` (commands run under the ``--measure``
    wrapper of this module; Python steps are sampled in this process and its children)."""
    out = _measure_file(measures, step.id)
    if step.cmd is not None:
        cmd = [python, "-m", "workflow.recipe.smoke", "--measure", str(out), "--", *step.cmd]
        return dataclasses.replace(step, cmd=cmd)
    return dataclasses.replace(step, func=_MeasuredCall(step.func, out))


class _Sampler:
    """Peak resident memory of a process tree (``/proc``; the supervisor's tree walk), sampled every
    ``interval`` seconds in a thread."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        from workflow.supervisor import tree_pids

        total = sum(_rss_bytes(p) for p in [self.pid, *tree_pids(self.pid)])
        self.peak = max(self.peak, total)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _rss_bytes(pid: int) -> int:
    """Resident memory of one process (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


@dataclass
class _MeasuredCall:
    """A Python step sampled with its children (peak RSS of this process tree while it runs)."""

    func: Any
    out: Path

    def __call__(self, ctx: Any) -> None:
        with _Sampler(os.getpid()) as s:
            self.func(ctx)
        atomic_write_json(self.out, {"peak_rss_bytes": s.peak, "process": "runner + children"})


def _measure_main(argv: list[str]) -> int:
    """``python -m workflow.recipe.smoke --measure OUT -- CMD...``: run CMD, record its tree's peak RSS."""
    import resource
    import signal

    out, cmd = Path(argv[1]), argv[3:]
    proc = subprocess.Popen(cmd)
    signal.signal(signal.SIGTERM, lambda *_: proc.terminate())
    with _Sampler(proc.pid) as s:
        rc = proc.wait()
    ru = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        out, {"peak_rss_bytes": max(s.peak, ru), "sampled_tree_bytes": s.peak, "ru_maxrss_children": ru}
    )
    return rc


_ITER_TIME = re.compile(r"\((?:train|pretrain)\).*?\stime: ([0-9.]+)")


def _iteration_seconds(log: Path) -> list[float]:
    """Per-iteration times (mmengine logger ``time:``) of the training lines of a step log."""
    if not log.is_file():
        return []
    return [
        float(m.group(1))
        for line in log.read_text(errors="replace").splitlines()
        if (m := _ITER_TIME.search(line))
    ]


def run_smoke(sp: SmokePlan, verbose: bool = False) -> dict[str, Any]:
    """Run every step of a smoke plan (failures do not stop it), then write and return the report.

    Returns:
        ``{"recipe", "work_dir", "steps": [{"id", "state", "seconds", "peak_rss_mb", "iter_seconds"}],
        "failed", "adaptations", "reductions", "total_seconds"}``; also ``smoke_report.json`` / ``.md`` in the
        smoke dir.
    """
    from workflow.recipe.runner import read_stamp, run_plan

    plan = sp.plan
    t0 = time.perf_counter()
    result = run_plan(plan, keep_going=True, verbose=verbose)
    total = time.perf_counter() - t0
    rows = []
    for s in plan.steps:
        if s.id in result["failed"]:
            state = "FAILED"
        elif s.id in result["ran"]:
            state = "ok"
        elif s.id in result["skipped"]:
            state = "done before"
        else:
            state = "not run (a dependency failed)"
        m = _measure_file(plan.work_dir / "measures", s.id)
        meas = json.loads(m.read_text()) if m.is_file() and state != "not run (a dependency failed)" else {}
        secs = result["seconds"].get(s.id)
        if secs is None and state == "done before":
            secs = (read_stamp(plan.work_dir, s.id) or {}).get("seconds")
        its = (
            _iteration_seconds(plan.work_dir / "logs" / (s.id.replace("/", "__") + ".log"))
            if s.train_dir
            else []
        )
        rows.append(
            {
                "id": s.id,
                "state": state,
                "seconds": secs,
                "peak_rss_mb": round(meas["peak_rss_bytes"] / 2**20) if meas.get("peak_rss_bytes") else None,
                "iter_seconds": its,
            }
        )
    failed = [r["id"] for r in rows if r["state"] != "ok" and r["state"] != "done before"]
    report = {
        "recipe": plan.recipe.source,
        "work_dir": str(plan.work_dir),
        "total_seconds": round(total, 1),
        "steps": rows,
        "failed": failed,
        "adaptations": sp.adaptations,
        "reductions": sp.reductions,
        "cpu_count": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }
    atomic_write_json(plan.work_dir / REPORT_JSON, report, indent=1)
    atomic_write_text(plan.work_dir / REPORT_MD, format_report(report))
    return report


def format_report(report: dict[str, Any]) -> str:
    """The smoke report as Markdown: the steps (time, peak memory, training s/iteration), failures, adaptations."""
    lines = [
        f"# Smoke run of {report['recipe']}",
        "",
        f"Work dir `{report['work_dir']}`; {report['total_seconds']:.0f} s in all; "
        f"{report.get('cpu_count')} CPU(s), OMP_NUM_THREADS={report.get('omp_num_threads')}.",
        "",
        "| step | state | seconds | peak RSS (MB) | train s/iter (logged iterations) |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    for r in report["steps"]:
        its = ", ".join(f"{x:.2f}" for x in r["iter_seconds"]) if r["iter_seconds"] else ""
        secs = "" if r["seconds"] is None else f"{r['seconds']:.1f}"
        mem = "" if r["peak_rss_mb"] is None else str(r["peak_rss_mb"])
        lines.append(f"| {r['id']} | {r['state']} | {secs} | {mem} | {its} |")
    lines += ["", f"**Failed: {', '.join(report['failed'])}**" if report["failed"] else "No step failed.", ""]
    lines += ["GPU-only values adapted:", *[f"- {a}" for a in report["adaptations"] or ["(none)"]], ""]
    lines += ["Reduced for the smoke run:", *[f"- {a}" for a in report["reductions"]], ""]
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 3 and sys.argv[1] == "--measure" and sys.argv[3] == "--":
        sys.exit(_measure_main(sys.argv[1:]))
    print("usage: python -m workflow.recipe.smoke --measure OUT.json -- CMD ...", file=sys.stderr)
    sys.exit(2)
