"""A recipe as an ordered list of steps: what each runs, what it depends on, what it writes.

Stages, in order (:data:`STAGES`)::

    prepare     synthetic data (when asked) -> tools/prepare_sartorius.py -> dataset report -> box-size report
    pretrain    tools/prepare_livecell.py -> train each pretrain config (its checkpoint is the fine-tuning
                step's load_from)
    train       tools/train.py (tools/dist_train.sh when gpus > 1) for every model x fold
    oof         tools/infer.py on each fold's validation images with that fold's checkpoint (+ mask heads on
                box models' boxes, or box-first: fused boxes -> mask heads), then the folds joined into one
                out-of-fold prediction file per ensemble member
    score       every member alone on the out-of-fold predictions (competition score; fgIoU for semantic maps)
    tune        python -m ensemble.tune on the out-of-fold predictions (held-out --cv report when available),
                the tuned ensemble scored there
    test        tools/infer.py on the test images with every fold's checkpoint, folds merged per member
    submission  the tuned ensemble applied to the test predictions -> the submission CSV
    bundle      tools/kaggle/make_bundle.py (when the recipe asks for one and the tool exists)
    summary     summary.md / summary.json + plots

Every step has an id (``train/yolox/fold0``), a fingerprint of its inputs (parameters, config files with their
``_base_`` chain, input files' size and mtime, and the fingerprints of the steps it depends on) and its outputs;
:mod:`workflow.recipe.runner` uses them to skip finished work and to redo what changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celldata.images import list_image_files
from workflow.execution import Arg, DeferredArg, Step
from workflow.recipe.config import REPO, Recipe

__all__ = ["STAGES", "Checkpoint", "Step", "Plan", "build_plan", "config_files", "file_fingerprint"]

STAGES = ("prepare", "pretrain", "train", "oof", "score", "tune", "test", "submission", "bundle", "summary")


class Checkpoint(DeferredArg):
    """The final checkpoint of a training work dir, resolved when a later step runs (mmengine's
    ``last_checkpoint`` marker)."""

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = Path(work_dir)

    def resolve(self) -> str:
        """Path of the last checkpoint.

        Raises:
            RuntimeError: If the run recorded none.
        """
        marker = self.work_dir / "last_checkpoint"
        if not marker.is_file():
            raise RuntimeError(f"no checkpoint recorded in {self.work_dir} (missing {marker.name})")
        ckpt = Path(marker.read_text().strip())
        ckpt = ckpt if ckpt.is_absolute() else REPO / ckpt
        if not ckpt.is_file():
            raise RuntimeError(f"{marker}: recorded checkpoint {ckpt} does not exist")
        return str(ckpt)

    def __str__(self) -> str:
        return f"<last checkpoint of {_rel(self.work_dir)}>"


@dataclass
class Plan:
    """The steps of a recipe in execution order and the paths they share."""

    recipe: Recipe
    work_dir: Path
    data_root: Path
    steps: list[Step]
    notes: list[str] = field(default_factory=list)

    def step(self, step_id: str) -> Step:
        """The step with id ``step_id``."""
        for s in self.steps:
            if s.id == step_id:
                return s
        raise KeyError(step_id)


def _rel(p: Path | str) -> str:
    p = Path(p)
    try:
        return str(p.resolve().relative_to(REPO))
    except ValueError:
        return str(p)


def file_fingerprint(path: Path) -> dict[str, Any]:
    """Size and mtime of a file (or, for a folder, of the files directly in it), ``missing`` when absent."""
    path = Path(path)
    if path.is_file():
        st = path.stat()
        return {"path": _rel(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if path.is_dir():
        entries = sorted(p for p in path.iterdir() if p.is_file())
        h = hashlib.sha256()
        for p in entries:
            st = p.stat()
            h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        return {"path": _rel(path), "files": len(entries), "digest": h.hexdigest()[:16]}
    return {"path": _rel(path), "missing": True}


def config_files(config: str | Path) -> list[Path]:
    """A config file and every ``_base_`` file it inherits from (recursively), in a stable order."""
    from mmengine.config import Config

    seen: list[Path] = []

    def visit(p: Path) -> None:
        p = p.resolve()
        if p in seen or not p.is_file():
            return
        seen.append(p)
        for b in Config._get_base_files(str(p)):
            if "::" in b:  # package base (mmdet::...), part of the installed library
                continue
            visit(p.parent / b)

    visit(Path(config) if Path(config).is_absolute() else REPO / config)
    return seen


def _config_digest(config: str) -> str:
    """Digest of a config as resolved by mmengine (with its whole ``_base_`` chain): edits of comments or layout
    leave it unchanged, any changed value changes it."""
    import json as _json

    from custom_modules.config import load_config

    path = Path(config) if Path(config).is_absolute() else REPO / config
    cfg = load_config(path, import_custom_modules=False)
    text = _json.dumps(cfg.to_dict(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _cfg_opts(opts: dict[str, Any]) -> list[str]:
    """``--cfg-options`` arguments (values as mmengine's DictAction parses them)."""
    out = []
    for k, v in opts.items():
        if isinstance(v, bool):
            v = str(v)
        elif isinstance(v, (list, tuple)):
            v = "[" + ",".join(str(x) for x in v) + "]"
        elif v is None:
            v = "None"
        out.append(f"{k}={v}")
    return out


def build_plan(
    recipe: Recipe,
    work_dir: str | Path | None = None,
    data_root: str | Path | None = None,
    python: str = sys.executable,
) -> Plan:
    """Turn a recipe into its steps.

    Args:
        recipe: The parsed recipe.
        work_dir: Output folder (default: the recipe's ``work_dir``).
        data_root: Kaggle-layout data root overriding the recipe's data (``--data-root``).
        python: Interpreter for the tools.

    Returns:
        The plan.
    """
    from workflow.recipe import steps as S  # Python-call steps (framework-free)

    W = Path(work_dir or recipe.work_dir)
    W = W if W.is_absolute() else REPO / W
    synthetic = data_root is None and recipe.data.root is None
    if data_root is not None:
        R = Path(data_root)
    elif recipe.data.root is not None:
        R = Path(recipe.data.root)
    else:
        R = W / "data"
    R = R if R.is_absolute() else REPO / R
    py = python
    steps: list[Step] = []
    notes: list[str] = []
    logs_quiet = ["--no-progress"]

    def add(step: Step) -> Step:
        steps.append(step)
        return step

    # ---------------------------------------------------------------- prepare
    data_deps: list[str] = []
    if synthetic:
        syn = dict(recipe.data.synthetic or {})
        cmd = [py, "tools/make_synthetic.py", "--out", str(R), "--no-progress"]
        for key in ("n_images", "n_test", "density", "seed", "from_coco"):
            if syn.get(key) is not None:
                cmd += [f"--{key.replace('_', '-')}", str(syn[key])]
        add(
            Step(
                "prepare/synthetic",
                "prepare",
                f"synthetic dataset -> {_rel(R)}",
                cmd=cmd,
                params={"synthetic": syn},
                outputs=[R / "train.csv", R / "train"],
            )
        )
        data_deps = ["prepare/synthetic"]
        data_params: dict[str, Any] = {}
    else:
        data_params = {"train_csv": file_fingerprint(R / "train.csv"), "train": file_fingerprint(R / "train")}
    folds = recipe.data.folds
    add(
        Step(
            "prepare/folds",
            "prepare",
            f"COCO folds ({folds}), semantic labels, split lists in {_rel(R)}",
            cmd=[
                py,
                "tools/prepare_sartorius.py",
                "--data-root",
                str(R),
                "--folds",
                str(folds),
                "--seed",
                str(recipe.data.fold_seed),
                *logs_quiet,
            ],  # fmt: skip
            params={"folds": folds, "seed": recipe.data.fold_seed, **data_params},
            deps=data_deps,
            outputs=[R / "annotations" / f"fold{k}_val.json" for k in range(folds)]
            + [R / "annotations" / "train_all.json"],
        )
    )
    add(
        Step(
            "prepare/report",
            "prepare",
            "dataset report (counts, sizes, overlays)",
            cmd=[
                py,
                "tools/dataset_report.py",
                "--data-root",
                str(R),
                "--out",
                str(W / "dataset_report"),
                *logs_quiet,
            ],  # fmt: skip
            deps=["prepare/folds"],
            outputs=[W / "dataset_report" / "report.json"],
        )
    )
    box_cfgs = [m for m in recipe.models if m.role in ("boxes", "instance")]
    if box_cfgs:
        cmd = [py, "tools/analyze_boxes.py", "--data-root", str(R), "--out", str(W / "box_report")]
        for m in box_cfgs:
            cmd += ["--config", m.config]
        add(
            Step(
                "prepare/boxes",
                "prepare",
                "box sizes per class and anchor coverage of the detector configs",
                cmd=cmd,
                params={"configs": {m.config: _config_digest(m.config) for m in box_cfgs}},
                deps=["prepare/folds"],
                outputs=[W / "box_report" / "box_report.json"],
            )
        )

    # ---------------------------------------------------------------- pretrain
    pre_ckpt: dict[str, Checkpoint] = {}
    if recipe.pretrain is not None:
        lc = recipe.pretrain.livecell
        L = Path(lc.get("out") or W / "livecell")
        L = L if L.is_absolute() else REPO / L
        anns = lc["ann"] if isinstance(lc["ann"], list) else [lc["ann"]]
        cmd = [py, "tools/prepare_livecell.py", "--ann", *anns, "--images-dir", lc["images_dir"], "--out", str(L),
               *logs_quiet]  # fmt: skip
        if lc.get("categories"):
            cmd += ["--categories", lc["categories"]]
        if lc.get("class_map"):
            cmd += ["--class-map", lc["class_map"]]
        add(
            Step(
                "pretrain/livecell",
                "pretrain",
                f"LIVECell -> {_rel(L)}",
                cmd=cmd,
                params={"livecell": lc, "anns": [file_fingerprint(REPO / a) for a in anns]},
                outputs=[L / "annotations"],
            )
        )
        for pname, spec in recipe.pretrain.models.items():
            tdir = W / "pretrain" / pname
            opts = {"data_root": str(L), **(spec.get("cfg_options") or {})}
            add(
                Step(
                    f"pretrain/{pname}",
                    "pretrain",
                    f"pretrain {pname} on LIVECell ({spec['config']})",
                    cmd=_train_cmd(py, spec["config"], tdir, opts, int(spec.get("gpus", 1))),
                    params={"config": spec["config"], "digest": _config_digest(spec["config"]), "opts": opts},
                    deps=["pretrain/livecell"],
                    outputs=[tdir / "last_checkpoint"],
                    train_dir=tdir,
                )
            )
            pre_ckpt[pname] = Checkpoint(tdir)

    # ---------------------------------------------------------------- train
    ckpts: dict[tuple[str, int], Checkpoint] = {}
    for m in recipe.models:
        for k in recipe.folds_of(m):
            tdir = W / "models" / m.name / f"fold{k}"
            opts: dict[str, Any] = {"data_root": str(R), "fold": k}
            deps = ["prepare/folds"]
            params: dict[str, Any] = {"config": m.config, "digest": _config_digest(m.config)}
            load_from: Arg | None = None
            if m.pretrain is not None:
                load_from = pre_ckpt[m.pretrain]
                deps.append(f"pretrain/{m.pretrain}")
            elif m.load_from is not None:
                load_from = m.load_from
                params["load_from"] = file_fingerprint(REPO / m.load_from)
            if m.pretrained is not None:
                opts["pretrained"] = m.pretrained
                if "://" not in m.pretrained:
                    params["pretrained"] = file_fingerprint(REPO / m.pretrained)
            opts.update(m.cfg_options)
            params["opts"] = opts
            cmd = _train_cmd(py, m.config, tdir, opts, m.gpus)
            if load_from is not None:
                cmd += (
                    [_LoadFrom(load_from)]
                    if isinstance(load_from, Checkpoint)
                    else [f"load_from={load_from}"]
                )
            add(
                Step(
                    f"train/{m.name}/fold{k}",
                    "train",
                    f"train {m.name} fold {k} ({m.config}" + (f", {m.gpus} GPUs)" if m.gpus > 1 else ")"),
                    cmd=cmd,
                    params=params,
                    deps=deps,
                    outputs=[tdir / "last_checkpoint"],
                    train_dir=tdir,
                )
            )
            ckpts[(m.name, k)] = Checkpoint(tdir)

    # ---------------------------------------------------------------- oof
    P = W / "predictions"
    member_names = [n for n, _, _ in recipe.members()]
    trained = recipe.trained_folds()

    def infer_cmd(
        m, ckpt: Checkpoint, src: list[str], out: Path, extra: list[str] | None = None
    ) -> list[Arg]:
        c: list[Arg] = [py, "tools/infer.py", m.config, ckpt, *src, "--out", str(out), "--no-progress"]
        if m.tta:
            c.append("--tta")
        opts = {k: v for k, v in m.cfg_options.items() if not k.startswith(("train_", "optim", "param_sch"))}
        if opts:
            c += ["--cfg-options", *_cfg_opts(opts)]
        return c + (extra or [])

    def prediction_steps(
        split: str,
        k: int,
        src: list[str],
        folder: Path,
        stage: str,
        dep0: list[str],
        raw: bool = True,
        derived: bool = True,
        shared_fused: Path | None = None,
    ) -> None:
        """Per fold k: every model's raw predictions, then the derived members (box-first: on ``shared_fused``,
        the boxes fused over all folds, when given)."""
        for m in recipe.models:
            if not raw or k not in recipe.folds_of(m):
                continue
            add(
                Step(
                    f"{stage}/{m.name}/fold{k}",
                    stage,
                    f"predict {m.name} fold {k} on {split}",
                    cmd=infer_cmd(m, ckpts[(m.name, k)], src, folder / f"{m.name}.npz"),
                    params={"tta": m.tta, "src": src},
                    deps=[f"train/{m.name}/fold{k}", *dep0],
                    outputs=[folder / f"{m.name}.npz"],
                )
            )
        if not derived:
            return
        if recipe.ensemble.mode == "vote":
            for m in recipe.models:
                if m.masks_from is None or k not in recipe.folds_of(m):
                    continue
                mm = recipe.model(m.masks_from)
                add(
                    Step(
                        f"{stage}/{m.name}_masks/fold{k}",
                        stage,
                        f"{mm.name} mask head on {m.name}'s boxes, fold {k}, {split}",
                        cmd=infer_cmd(
                            mm,
                            ckpts[(mm.name, k)],
                            src,
                            folder / f"{m.name}_masks.npz",
                            ["--mask-head-on", str(folder / f"{m.name}.npz"), "--name", f"{m.name}_masks"],
                        ),  # fmt: skip
                        params={"src": src},
                        deps=[f"{stage}/{m.name}/fold{k}", f"train/{mm.name}/fold{k}"],
                        outputs=[folder / f"{m.name}_masks.npz"],
                    )
                )
        else:
            box_models = [
                m for m in recipe.models if m.role in ("boxes", "instance") and k in recipe.folds_of(m)
            ]
            fused = folder / "fused_boxes.npz"
            fused_dep = f"{stage}/fused_boxes/fold{k}"
            if shared_fused is not None:
                fused, fused_dep = shared_fused, f"{stage}/fused_boxes"
            else:
                add(
                    Step(
                        fused_dep,
                        stage,
                        f"fuse the boxes of {', '.join(m.name for m in box_models)} (fold {k}, {split})",
                        func=S.FuseBoxes(
                            recipe,
                            {m.name: folder / f"{m.name}.npz" for m in box_models},
                            {m.name: m.weight for m in box_models},
                            fused,
                            folder / "fuse_boxes.yaml",
                            py,
                        ),  # fmt: skip
                        params={"fusion": recipe.ensemble.fusion},
                        deps=[f"{stage}/{m.name}/fold{k}" for m in box_models],
                        outputs=[fused],
                    )
                )
            for m in recipe.models:
                if m.role != "instance" or k not in recipe.folds_of(m):
                    continue
                add(
                    Step(
                        f"{stage}/{m.name}_on_boxes/fold{k}",
                        stage,
                        f"{m.name} mask head on the fused boxes, fold {k}, {split}",
                        cmd=infer_cmd(
                            m,
                            ckpts[(m.name, k)],
                            src,
                            folder / f"{m.name}_on_boxes.npz",
                            ["--mask-head-on", str(fused), "--name", f"{m.name}_on_boxes"],
                        ),  # fmt: skip
                        params={"src": src},
                        deps=[fused_dep, f"train/{m.name}/fold{k}"],
                        outputs=[folder / f"{m.name}_on_boxes.npz"],
                    )
                )

    for k in trained:
        ann = R / "annotations" / f"fold{k}_val.json"
        prediction_steps(
            "validation", k, ["--ann-file", str(ann), "--data-root", str(R)], P / f"val_fold{k}", "oof",
            ["prepare/folds"],
        )  # fmt: skip
    oof_files = {n: P / "oof" / f"{n}_val.npz" for n in member_names}
    ids_so_far = {s.id for s in steps}
    for n in member_names:
        parts = {k: P / f"val_fold{k}" / f"{n}.npz" for k in trained if f"oof/{n}/fold{k}" in ids_so_far}
        deps = [f"oof/{n}/fold{k}" for k in parts]
        add(
            Step(
                f"oof/{n}/join",
                "oof",
                f"out-of-fold predictions of {n} (folds {sorted(parts)})",
                func=S.JoinFolds(list(parts.values()), oof_files[n]),
                deps=deps,
                outputs=[oof_files[n]],
            )
        )

    # ---------------------------------------------------------------- score
    truth = R / "train.csv"
    E = W / "ensemble"
    for n, kind, _ in recipe.members():
        if kind == "semantic":
            add(
                Step(
                    f"score/{n}",
                    "score",
                    f"foreground IoU of {n} on the out-of-fold images",
                    func=S.SemanticScore(oof_files[n], R, W / "scores" / f"{n}_fgiou.json"),
                    deps=[f"oof/{n}/join"],
                    outputs=[W / "scores" / f"{n}_fgiou.json"],
                )
            )
        elif kind == "instance":
            cfg = W / "scores" / f"{n}.yaml"
            add(
                Step(
                    f"score/{n}",
                    "score",
                    f"{n} alone on the out-of-fold images (starting parameters)",
                    func=S.ScoreSingle(recipe, n, oof_files[n], truth, R, cfg, W / "scores", py),
                    params={"fusion": recipe.ensemble.fusion, "thr": recipe.ensemble.class_thresholds},
                    deps=[f"oof/{n}/join", "prepare/folds"],
                    outputs=[W / "scores" / f"{n}_score.json"],
                )
            )

    # ---------------------------------------------------------------- tune
    tune_runs: list[tuple[str, dict[str, Path]]] = []
    if recipe.ensemble.tune.singles:
        tune_runs += [
            (f"single_{n}", {n: oof_files[n]}) for n, kind, _ in recipe.members() if kind == "instance"
        ]
    tune_runs.append(("ensemble", oof_files))
    tune_opts = recipe.ensemble.tune
    for run_name, files in tune_runs:
        add(
            Step(
                f"tune/{run_name}",
                "tune",
                f"tune {run_name} on the out-of-fold predictions"
                + (f" ({tune_opts.cv}-fold held-out report)" if tune_opts.cv else ""),
                func=S.Tune(recipe, run_name, files, truth, R, E, py),
                params={
                    "tune": vars(tune_opts),
                    "fusion": recipe.ensemble.fusion,
                    "thr": recipe.ensemble.class_thresholds,
                    "mode": recipe.ensemble.mode,
                },  # fmt: skip
                deps=[f"oof/{n}/join" for n in files],
                outputs=[E / f"{run_name}_tuned.yaml", E / f"{run_name}_tuned_score.json"],
            )
        )

    # ---------------------------------------------------------------- test
    test_dir = R / recipe.data.test_dir
    test_images = list_image_files(test_dir)
    test_ready = bool(test_images) or synthetic  # synthetic data writes its test images in prepare
    test_files = {n: P / "test" / f"{n}_test.npz" for n in member_names}
    if test_ready:
        tsrc = ["--images", str(test_dir)]
        if recipe.ensemble.mode == "box_first" and len(trained) > 1:
            # the test images are predicted by every fold model: fuse all their boxes once, so that every mask
            # model of every fold predicts on the same boxes (box-first needs one box set per image)
            for k in trained:
                prediction_steps(
                    "test images", k, tsrc, P / f"test_fold{k}", "test", ["prepare/folds"], derived=False
                )
            box_parts = {
                f"{m.name}_fold{k}": (
                    P / f"test_fold{k}" / f"{m.name}.npz",
                    m.weight / len(recipe.folds_of(m)),
                )
                for m in recipe.models
                if m.role in ("boxes", "instance")
                for k in recipe.folds_of(m)
            }
            shared = P / "test" / "fused_boxes.npz"
            add(
                Step(
                    "test/fused_boxes",
                    "test",
                    f"fuse the boxes of every box model of every fold ({len(box_parts)} files) on the test images",
                    func=S.FuseBoxes(
                        recipe,
                        {n: p for n, (p, _) in box_parts.items()},
                        {n: w for n, (_, w) in box_parts.items()},
                        shared,
                        P / "test" / "fuse_boxes.yaml",
                        py,
                    ),  # fmt: skip
                    params={"fusion": recipe.ensemble.fusion},
                    deps=[f"test/{n.rsplit('_fold', 1)[0]}/fold{n.rsplit('_fold', 1)[1]}" for n in box_parts],
                    outputs=[shared],
                )
            )
            for k in trained:
                prediction_steps("test images", k, tsrc, P / f"test_fold{k}", "test", ["prepare/folds"], raw=False,
                                 shared_fused=shared)  # fmt: skip
        else:
            for k in trained:
                prediction_steps("test images", k, tsrc, P / f"test_fold{k}", "test", ["prepare/folds"])
        for n in member_names:
            deps = [f"test/{n}/fold{k}" for k in trained if any(s.id == f"test/{n}/fold{k}" for s in steps)]
            parts = [P / f"test_fold{d.rsplit('fold', 1)[1]}" / f"{n}.npz" for d in deps]
            add(
                Step(
                    f"test/{n}/merge",
                    "test",
                    f"test predictions of {n}"
                    + (f" (merging {len(parts)} fold models)" if len(parts) > 1 else ""),
                    func=S.MergeFolds(parts, test_files[n]),
                    deps=deps,
                    outputs=[test_files[n]],
                )
            )
        sub = Path(recipe.outputs.submission or W / "submission.csv")
        sub = sub if sub.is_absolute() else REPO / sub
        add(
            Step(
                "submission",
                "submission",
                f"tuned ensemble on the test images -> {_rel(sub)}",
                func=S.Submission(E / "ensemble_tuned.yaml", P / "test", E / "ensemble_test.yaml", sub, py),
                deps=["tune/ensemble", *[f"test/{n}/merge" for n in member_names]],
                outputs=[sub, E / "ensemble_test.yaml"],
            )
        )
        if recipe.outputs.bundle:
            bundle = Path(recipe.outputs.bundle)
            bundle = bundle if bundle.is_absolute() else REPO / bundle
            if (REPO / "tools/kaggle/make_bundle.py").is_file():
                add(
                    Step(
                        "bundle",
                        "bundle",
                        f"Kaggle bundle -> {_rel(bundle)}",
                        func=S.Bundle(E / "ensemble_test.yaml", bundle, py),
                        deps=["submission"],
                        outputs=[bundle / "bundle.json"],
                    )
                )
            else:
                notes.append("bundle: tools/kaggle/make_bundle.py does not exist; no bundle step")
    else:
        notes.append(f"test: no images in {_rel(test_dir)}; no test predictions, submission or bundle")

    # ---------------------------------------------------------------- summary
    add(
        Step(
            "summary",
            "summary",
            "summary.md / summary.json + plots",
            func=S.Summary(recipe, W, R),
            deps=[s.id for s in steps if s.stage in ("score", "tune", "submission")],
            outputs=[W / "summary.md", W / "summary.json"],
        )
    )
    return Plan(recipe=recipe, work_dir=W, data_root=R, steps=steps, notes=notes)


class _LoadFrom(Checkpoint):
    """``load_from=<checkpoint>`` as one ``--cfg-options`` entry, resolved at run time."""

    def __init__(self, ckpt: Checkpoint) -> None:
        super().__init__(ckpt.work_dir)

    def resolve(self) -> str:
        return f"load_from={super().resolve()}"

    def __str__(self) -> str:
        return f"load_from={super().__str__()}"


def _train_cmd(py: str, config: str, work_dir: Path, opts: dict[str, Any], gpus: int) -> list[Arg]:
    if gpus > 1:
        head: list[Arg] = ["bash", "tools/dist_train.sh", config, str(gpus)]
    else:
        head = [py, "tools/train.py", config]
    return [*head, "--work-dir", str(work_dir), "--cfg-options", *_cfg_opts(opts)]


def step_fingerprint(step: Step, dep_fingerprints: list[str]) -> str:
    """Fingerprint of a step: its command/parameters and its dependencies' fingerprints."""
    payload = {
        "id": step.id,
        "cmd": None if step.cmd is None else [str(a) for a in step.cmd[1:]],  # interpreter path excluded
        "func": None if step.func is None else type(step.func).__name__,
        "outputs": [str(o) for o in step.outputs],
        "params": step.params,
        "deps": dep_fingerprints,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]


def ensure_dir(p: Path) -> None:
    """``mkdir -p``."""
    os.makedirs(p, exist_ok=True)
