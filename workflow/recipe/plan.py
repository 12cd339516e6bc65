"""A recipe as an ordered list of steps: what each runs, what it depends on, what it writes.

Stages, in order (:data:`STAGES`)::

    prepare     synthetic data (when asked) -> prepare_sartorius -> dataset report -> box-size report
    pretrain    prepare_livecell -> train each pretrain config (its checkpoint is the fine-tuning step's
                load_from)
    train       train (under torch.distributed.run when gpus > 1) for every model x fold
    oof         infer on each fold's validation images with that fold's checkpoint (+ mask heads on
                box models' boxes, or box-first: fused boxes -> mask heads), then the folds joined into one
                out-of-fold prediction file per ensemble member
    score       every member alone on the out-of-fold predictions (competition score; fgIoU for semantic maps)
    tune        python -m ensemble.tune on the out-of-fold predictions (held-out --cv report when available),
                the tuned ensemble scored there
    test        infer on the test images with every fold's checkpoint, folds merged per member
    submission  the tuned ensemble applied to the test predictions -> the submission CSV
    bundle      make_bundle (when the recipe asks for one)
    summary     summary.md / summary.json + plots

Every step has an id (``train/yolox/fold0``), a fingerprint of its inputs (parameters, config files with
their ``_base_`` chain, input files' size and mtime, and the fingerprints of the steps it depends on) and its
outputs; :mod:`workflow.recipe.runner` uses them to skip finished work and to redo what changed.

Every tool (the names above) runs as a module, ``python -m workflow.cli.<tool>`` (DDP training: ``python -m
torch.distributed.run ... -m workflow.cli.train ... --launcher pytorch``), never as a script path.
:func:`build_plan` hands a small builder (the recipe, the folders, the step list) to one function per stage.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celldata.images import list_image_files
from workflow.checkpoint_integrity import named_checkpoint
from workflow.execution import Arg, DeferredArg, Step
from workflow.recipe import steps as S
from workflow.recipe.config import REPO, ModelSpec, Recipe

__all__ = ["STAGES", "Checkpoint", "Step", "Plan", "build_plan", "file_fingerprint", "step_fingerprint"]

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
        ckpt = named_checkpoint(marker, REPO)
        if ckpt is None:
            raise RuntimeError(f"{marker}: names no checkpoint (empty or unreadable)")
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


def _config_digest(config: str) -> str:
    """Digest of a config as resolved by mmengine (with its whole ``_base_`` chain): edits of comments or
    layout leave it unchanged, any changed value changes it."""
    from custom_modules.config import load_config

    path = Path(config) if Path(config).is_absolute() else REPO / config
    cfg = load_config(path, import_custom_modules=False)
    text = json.dumps(cfg.to_dict(), sort_keys=True, default=str)
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


class _EnvOption(DeferredArg):
    """``OPTION=VALUE`` with VALUE read from an environment variable when the step runs (``default`` when
    unset): the rendezvous options that ``tools/dist_launch.sh`` takes from ``NNODES``, ``NODE_RANK``,
    ``MASTER_ADDR`` and ``PORT``, so that a DDP step honours them the same way (and its fingerprint does not
    depend on them)."""

    def __init__(self, option: str, var: str, default: str) -> None:
        self.option, self.var, self.default = option, var, default

    def resolve(self) -> str:
        """``OPTION=$VAR`` (or the default)."""
        return f"{self.option}={os.environ.get(self.var) or self.default}"

    def __str__(self) -> str:
        return f"{self.option}=${{{self.var}:-{self.default}}}"


_RENDEZVOUS: tuple[DeferredArg, ...] = (
    _EnvOption("--nnodes", "NNODES", "1"),
    _EnvOption("--node_rank", "NODE_RANK", "0"),
    _EnvOption("--master_addr", "MASTER_ADDR", "127.0.0.1"),
)
_PORT = _EnvOption("--master_port", "PORT", "29500")


@dataclass
class _Builder:
    """What the stage functions share: the recipe, the folders, the interpreter and the steps added so far.

    Attributes:
        recipe: The parsed recipe.
        work: The work dir (absolute).
        data: The Kaggle-layout data root (absolute).
        python: Interpreter of the tools.
        synthetic: The data is generated by the plan (``prepare/synthetic``).
        steps: The steps so far, in execution order.
        notes: Lines the dry run prints above the steps.
        pretrained: Final checkpoint of every pretrain model, by name.
        ckpts: Final checkpoint of every trained model, by ``(name, fold)``.
    """

    recipe: Recipe
    work: Path
    data: Path
    python: str
    synthetic: bool
    steps: list[Step] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    pretrained: dict[str, Checkpoint] = field(default_factory=dict)
    ckpts: dict[tuple[str, int], Checkpoint] = field(default_factory=dict)

    @classmethod
    def create(
        cls, recipe: Recipe, work_dir: str | Path | None, data_root: str | Path | None, python: str
    ) -> _Builder:
        """The builder of ``recipe`` with its work dir and data root resolved (see :func:`build_plan`)."""
        work = _abs(work_dir or recipe.work_dir)
        synthetic = data_root is None and recipe.data.root is None
        if data_root is not None:
            data = _abs(data_root)
        elif recipe.data.root is not None:
            data = _abs(recipe.data.root)
        else:
            data = work / "data"
        return cls(recipe=recipe, work=work, data=data, python=python, synthetic=synthetic)

    def add(self, step: Step) -> Step:
        """Append ``step``."""
        self.steps.append(step)
        return step

    def has(self, step_id: str) -> bool:
        """Whether a step ``step_id`` was added."""
        return any(s.id == step_id for s in self.steps)

    def tool(self, name: str, *args: Arg) -> list[Arg]:
        """The command line of a project tool: ``python -m workflow.cli.<name> ARGS``."""
        return [self.python, "-m", f"workflow.cli.{name}", *args]

    @property
    def predictions(self) -> Path:
        """Folder of the prediction files."""
        return self.work / "predictions"

    @property
    def ensemble_dir(self) -> Path:
        """Folder of the ensemble configs and scores."""
        return self.work / "ensemble"

    def member_names(self) -> list[str]:
        """Names of the ensemble members, in order."""
        return [n for n, _, _ in self.recipe.members()]

    def oof_file(self, member: str) -> Path:
        """The out-of-fold prediction file of ``member``."""
        return self.predictions / "oof" / f"{member}_val.npz"

    def test_file(self, member: str) -> Path:
        """The (fold-merged) test prediction file of ``member``."""
        return self.predictions / "test" / f"{member}_test.npz"

    @property
    def test_dir(self) -> Path:
        """Folder of the test images."""
        return self.data / self.recipe.data.test_dir

    def test_ready(self) -> bool:
        """Whether there are test images (synthetic data writes them in ``prepare``)."""
        return self.synthetic or bool(list_image_files(self.test_dir))


def _abs(p: str | Path) -> Path:
    p = Path(p)
    return p if p.is_absolute() else REPO / p


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
    b = _Builder.create(recipe, work_dir, data_root, python)
    test_ready = b.test_ready()
    for stage in (_prepare, _pretrain, _train, _oof, _score, _tune):
        stage(b)
    if test_ready:
        _test(b)
        _submission(b)
        _bundle(b)
    else:
        b.notes.append(f"test: no images in {_rel(b.test_dir)}; no test predictions, submission or bundle")
    _summary(b)
    return Plan(recipe=recipe, work_dir=b.work, data_root=b.data, steps=b.steps, notes=b.notes)


def _prepare(b: _Builder) -> None:
    """Synthetic data (when asked), the COCO folds, the dataset report, the box-size report."""
    recipe, R, W = b.recipe, b.data, b.work
    data_deps: list[str] = []
    data_params: dict[str, Any] = {}
    if b.synthetic:
        syn = dict(recipe.data.synthetic or {})
        cmd = b.tool("make_synthetic", "--out", str(R), "--no-progress")
        for key in ("n_images", "n_test", "density", "seed", "from_coco"):
            if syn.get(key) is not None:
                cmd += [f"--{key.replace('_', '-')}", str(syn[key])]
        b.add(Step("prepare/synthetic", "prepare", f"synthetic dataset -> {_rel(R)}", cmd=cmd,
                   params={"synthetic": syn}, outputs=[R / "train.csv", R / "train"]))  # fmt: skip
        data_deps = ["prepare/synthetic"]
    else:
        data_params = {"train_csv": file_fingerprint(R / "train.csv"), "train": file_fingerprint(R / "train")}
    folds, seed = recipe.data.folds, recipe.data.fold_seed
    b.add(
        Step(
            "prepare/folds",
            "prepare",
            f"COCO folds ({folds}), semantic labels, split lists in {_rel(R)}",
            cmd=b.tool(
                "prepare_sartorius",
                "--data-root",
                str(R),
                "--folds",
                str(folds),
                "--seed",
                str(seed),
                "--no-progress",
            ),  # fmt: skip
            params={"folds": folds, "seed": seed, **data_params},
            deps=data_deps,
            outputs=[R / "annotations" / f"fold{k}_val.json" for k in range(folds)]
            + [R / "annotations" / "train_all.json"],
        )
    )
    b.add(
        Step(
            "prepare/report",
            "prepare",
            "dataset report (counts, sizes, overlays)",
            cmd=b.tool(
                "dataset_report", "--data-root", str(R), "--out", str(W / "dataset_report"), "--no-progress"
            ),
            deps=["prepare/folds"],
            outputs=[W / "dataset_report" / "report.json"],
        )
    )
    box_cfgs = [m for m in recipe.models if m.role in ("boxes", "instance") and not _is_flow_config(m.config)]
    if box_cfgs:
        cmd = b.tool("analyze_boxes", "--data-root", str(R), "--out", str(W / "box_report"))
        for m in box_cfgs:
            cmd += ["--config", m.config]
        b.add(
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


def _pretrain(b: _Builder) -> None:
    """LIVECell conversion and one training per pretrain model (their checkpoints feed ``train``)."""
    if b.recipe.pretrain is None:
        return
    lc = b.recipe.pretrain.livecell
    L = _abs(lc.get("out") or b.work / "livecell")
    anns = lc["ann"] if isinstance(lc["ann"], list) else [lc["ann"]]
    cmd = b.tool("prepare_livecell", "--ann", *anns, "--images-dir", lc["images_dir"], "--out", str(L),
                 "--no-progress")  # fmt: skip
    if lc.get("categories"):
        cmd += ["--categories", lc["categories"]]
    if lc.get("class_map"):
        cmd += ["--class-map", lc["class_map"]]
    b.add(
        Step(
            "pretrain/livecell",
            "pretrain",
            f"LIVECell -> {_rel(L)}",
            cmd=cmd,
            params={"livecell": lc, "anns": [file_fingerprint(REPO / a) for a in anns]},
            outputs=[L / "annotations"],
        )
    )
    for pname, spec in b.recipe.pretrain.models.items():
        tdir = b.work / "pretrain" / pname
        opts = {"data_root": str(L), **(spec.get("cfg_options") or {})}
        b.add(
            Step(
                f"pretrain/{pname}",
                "pretrain",
                f"pretrain {pname} on LIVECell ({spec['config']})",
                cmd=_train_cmd(b, spec["config"], tdir, opts, int(spec.get("gpus", 1))),
                params={"config": spec["config"], "digest": _config_digest(spec["config"]), "opts": opts},
                deps=["pretrain/livecell"],
                outputs=[tdir / "last_checkpoint"],
                train_dir=tdir,
            )
        )
        b.pretrained[pname] = Checkpoint(tdir)


def _train_cmd(
    b: _Builder, config: str, work_dir: Path, opts: dict[str, Any], gpus: int, load_from: Arg | None = None
) -> list[Arg]:
    """``python -m workflow.cli.train`` (``gpus > 1``: under ``torch.distributed.run`` with the rendezvous
    options of ``tools/dist_launch.sh`` and ``--launcher pytorch``); ``load_from`` joins the
    ``--cfg-options``."""
    if gpus > 1:
        torchrun = [*_RENDEZVOUS, f"--nproc_per_node={gpus}", _PORT]
        head: list[Arg] = [b.python, "-m", "torch.distributed.run", *torchrun, "-m", "workflow.cli.train"]
        tail = ["--launcher", "pytorch"]
    else:
        head, tail = b.tool("train"), []
    cmd = [*head, config, "--work-dir", str(work_dir), "--cfg-options", *_cfg_opts(opts)]
    if isinstance(load_from, Checkpoint):
        cmd.append(_LoadFrom(load_from))
    elif load_from is not None:
        cmd.append(f"load_from={load_from}")
    return cmd + tail


PRETRAINED_START_HOOK = "custom_modules.checkpoints.PretrainedStartHook"


def _pretrained_start_opts(config: str, pretrained: str | None) -> dict[str, Any]:
    """Options of a training that starts from a whole checkpoint (``load_from``: COCO, ADE20K, LIVECell):
    :class:`custom_modules.checkpoints.PretrainedStartHook` (class-dependent layers re-initialized, every key not
    loaded listed in the log and ``pretrained_start.json``), and no separate backbone file unless the recipe names
    one (a ``*_pretrained`` leaf's default ``pretrained`` file is not needed: the checkpoint holds the backbone)."""
    from custom_modules.config import load_config

    opts: dict[str, Any] = {"default_hooks.pretrained_start.type": PRETRAINED_START_HOOK}
    path = Path(config) if Path(config).is_absolute() else REPO / config
    if pretrained is None and load_config(path, import_custom_modules=False).get("pretrained") is not None:
        opts["pretrained"] = None
    return opts


def _train(b: _Builder) -> None:
    """Every model x fold (``--cfg-options data_root=... fold=K``, starting weights from the recipe)."""
    for m in b.recipe.models:
        for k in b.recipe.folds_of(m):
            tdir = b.work / "models" / m.name / f"fold{k}"
            opts: dict[str, Any] = {"data_root": str(b.data), "fold": k}
            deps = ["prepare/folds"]
            params: dict[str, Any] = {"config": m.config, "digest": _config_digest(m.config)}
            load_from: Arg | None = None
            if m.pretrain is not None:
                load_from = b.pretrained[m.pretrain]
                deps.append(f"pretrain/{m.pretrain}")
            elif m.load_from is not None:
                load_from = m.load_from
                params["load_from"] = (
                    m.load_from if "://" in m.load_from else file_fingerprint(REPO / m.load_from)
                )
            if m.pretrained is not None:
                opts["pretrained"] = m.pretrained
                if "://" not in m.pretrained:
                    params["pretrained"] = file_fingerprint(REPO / m.pretrained)
            if load_from is not None:
                opts.update(_pretrained_start_opts(m.config, m.pretrained))
            opts.update(m.cfg_options)
            params["opts"] = opts
            b.add(
                Step(
                    f"train/{m.name}/fold{k}",
                    "train",
                    f"train {m.name} fold {k} ({m.config}" + (f", {m.gpus} GPUs)" if m.gpus > 1 else ")"),
                    cmd=_train_cmd(b, m.config, tdir, opts, m.gpus, load_from),
                    params=params,
                    deps=deps,
                    outputs=[tdir / "last_checkpoint"],
                    train_dir=tdir,
                )
            )
            b.ckpts[(m.name, k)] = Checkpoint(tdir)


def _infer_cmd(
    b: _Builder, m: ModelSpec, k: int, src: list[str], out: Path, extra: list[str] | None = None
) -> list[Arg]:
    """``python -m workflow.cli.infer`` of model ``m``'s fold-``k`` checkpoint (its inference-relevant
    ``cfg_options``)."""
    c = b.tool("infer", m.config, b.ckpts[(m.name, k)], *src, "--out", str(out), "--no-progress")
    if m.tta:
        c.append("--tta")
    opts = {
        key: v for key, v in m.cfg_options.items() if not key.startswith(("train_", "optim", "param_sch"))
    }
    if opts:
        c += ["--cfg-options", *_cfg_opts(opts)]
    return c + (extra or [])


@functools.cache
def _is_flow_config(config: str) -> bool:
    """Whether a model config is a Cellpose-style flow model (``celldata.flows.is_flow_model_config``)."""
    from celldata.flows import is_flow_model_config
    from custom_modules.config import load_config

    path = Path(config) if Path(config).is_absolute() else REPO / config
    return is_flow_model_config(load_config(path, import_custom_modules=False).get("model") or {})


def _image_class_source(
    b: _Builder, m: ModelSpec, k: int, folder: Path, stage: str
) -> tuple[list[str], list[str]]:
    """A flow model's ``--image-class-from`` (the first other box/instance model of fold ``k``: its file of the
    same images gives each image's class; flow models predict none) and that step's id; nothing for others."""
    if not _is_flow_config(m.config):
        return [], []
    for o in b.recipe.models:
        if o.role in ("boxes", "instance") and k in b.recipe.folds_of(o) and not _is_flow_config(o.config):
            return ["--image-class-from", str(folder / f"{o.name}.npz")], [f"{stage}/{o.name}/fold{k}"]
    note = f"{m.name}: no box model gives the image class; its instances are labelled 0 (shsy5y)"
    if note not in b.notes:
        b.notes.append(note)
    return [], []


def _raw_predictions(b: _Builder, split: str, k: int, src: list[str], folder: Path, stage: str) -> None:
    """Fold ``k``: every model trained on it predicts ``src`` into ``folder/<model>.npz`` (flow models last: they
    take the image class from another model's file)."""
    for m in sorted(b.recipe.models, key=lambda m: _is_flow_config(m.config)):
        if k not in b.recipe.folds_of(m):
            continue
        extra, class_deps = _image_class_source(b, m, k, folder, stage)
        b.add(
            Step(
                f"{stage}/{m.name}/fold{k}",
                stage,
                f"predict {m.name} fold {k} on {split}",
                cmd=_infer_cmd(b, m, k, src, folder / f"{m.name}.npz", extra),
                params={"tta": m.tta, "src": src},
                deps=[f"train/{m.name}/fold{k}", "prepare/folds", *class_deps],
                outputs=[folder / f"{m.name}.npz"],
            )
        )


def _derived_predictions(
    b: _Builder,
    split: str,
    k: int,
    src: list[str],
    folder: Path,
    stage: str,
    shared_fused: Path | None = None,
) -> None:
    """Fold ``k``: the derived members (vote: mask heads on box models' boxes; box-first: the fused boxes, on
    ``shared_fused`` when given, and every instance model's mask head on them)."""
    if b.recipe.ensemble.mode == "vote":
        for m in b.recipe.models:
            if m.masks_from is None or k not in b.recipe.folds_of(m):
                continue
            mm, out = b.recipe.model(m.masks_from), folder / f"{m.name}_masks.npz"
            extra = ["--mask-head-on", str(folder / f"{m.name}.npz"), "--name", f"{m.name}_masks"]
            b.add(
                Step(
                    f"{stage}/{m.name}_masks/fold{k}",
                    stage,
                    f"{mm.name} mask head on {m.name}'s boxes, fold {k}, {split}",
                    cmd=_infer_cmd(b, mm, k, src, out, extra),
                    params={"src": src},
                    deps=[f"{stage}/{m.name}/fold{k}", f"train/{mm.name}/fold{k}"],
                    outputs=[out],
                )
            )
        return
    fused, fused_dep = folder / "fused_boxes.npz", f"{stage}/fused_boxes/fold{k}"
    if shared_fused is not None:
        fused, fused_dep = shared_fused, f"{stage}/fused_boxes"
    else:
        box_models = [
            m for m in b.recipe.models if m.role in ("boxes", "instance") and k in b.recipe.folds_of(m)
        ]
        b.add(
            Step(
                fused_dep,
                stage,
                f"fuse the boxes of {', '.join(m.name for m in box_models)} (fold {k}, {split})",
                func=S.FuseBoxes(
                    b.recipe,
                    {m.name: folder / f"{m.name}.npz" for m in box_models},
                    {m.name: m.weight for m in box_models},
                    fused,
                    folder / "fuse_boxes.yaml",
                    b.python,
                ),  # fmt: skip
                params={"fusion": b.recipe.ensemble.fusion},
                deps=[f"{stage}/{m.name}/fold{k}" for m in box_models],
                outputs=[fused],
            )
        )
    for m in b.recipe.models:
        if m.role != "instance" or k not in b.recipe.folds_of(m):
            continue
        out, extra = (
            folder / f"{m.name}_on_boxes.npz",
            ["--mask-head-on", str(fused), "--name", f"{m.name}_on_boxes"],
        )
        b.add(
            Step(
                f"{stage}/{m.name}_on_boxes/fold{k}",
                stage,
                f"{m.name} mask head on the fused boxes, fold {k}, {split}",
                cmd=_infer_cmd(b, m, k, src, out, extra),
                params={"src": src},
                deps=[fused_dep, f"train/{m.name}/fold{k}"],
                outputs=[out],
            )
        )


def _oof(b: _Builder) -> None:
    """Every fold's models on its validation images, then one out-of-fold file per member."""
    trained = b.recipe.trained_folds()
    for k in trained:
        ann = b.data / "annotations" / f"fold{k}_val.json"
        src, folder = ["--ann-file", str(ann), "--data-root", str(b.data)], b.predictions / f"val_fold{k}"
        _raw_predictions(b, "validation", k, src, folder, "oof")
        _derived_predictions(b, "validation", k, src, folder, "oof")
    for n in b.member_names():
        parts = {k: b.predictions / f"val_fold{k}" / f"{n}.npz" for k in trained if b.has(f"oof/{n}/fold{k}")}
        b.add(
            Step(
                f"oof/{n}/join",
                "oof",
                f"out-of-fold predictions of {n} (folds {sorted(parts)})",
                func=S.JoinFolds(list(parts.values()), b.oof_file(n)),
                deps=[f"oof/{n}/fold{k}" for k in parts],
                outputs=[b.oof_file(n)],
            )
        )


def _score(b: _Builder) -> None:
    """Every member alone on the out-of-fold predictions (fgIoU for a semantic map)."""
    R, scores = b.data, b.work / "scores"
    for n, kind, _ in b.recipe.members():
        if kind == "semantic":
            b.add(
                Step(
                    f"score/{n}",
                    "score",
                    f"foreground IoU of {n} on the out-of-fold images",
                    func=S.SemanticScore(b.oof_file(n), R, scores / f"{n}_fgiou.json"),
                    deps=[f"oof/{n}/join"],
                    outputs=[scores / f"{n}_fgiou.json"],
                )
            )
        elif kind == "instance":
            b.add(
                Step(
                    f"score/{n}",
                    "score",
                    f"{n} alone on the out-of-fold images (starting parameters)",
                    func=S.ScoreSingle(
                        b.recipe, n, b.oof_file(n), R / "train.csv", R, scores / f"{n}.yaml", scores, b.python
                    ),
                    params={"fusion": b.recipe.ensemble.fusion, "thr": b.recipe.ensemble.class_thresholds},
                    deps=[f"oof/{n}/join", "prepare/folds"],
                    outputs=[scores / f"{n}_score.json"],
                )
            )


def _tune(b: _Builder) -> None:
    """``ensemble.tune`` of every single instance member (when asked) and of the whole ensemble."""
    recipe, E = b.recipe, b.ensemble_dir
    oof_files = {n: b.oof_file(n) for n in b.member_names()}
    tune_runs: list[tuple[str, dict[str, Path]]] = []
    if recipe.ensemble.tune.singles:
        tune_runs += [
            (f"single_{n}", {n: oof_files[n]}) for n, kind, _ in recipe.members() if kind == "instance"
        ]
    tune_runs.append(("ensemble", oof_files))
    tune_opts = recipe.ensemble.tune
    for run_name, files in tune_runs:
        b.add(
            Step(
                f"tune/{run_name}",
                "tune",
                f"tune {run_name} on the out-of-fold predictions"
                + (f" ({tune_opts.cv}-fold held-out report)" if tune_opts.cv else ""),
                func=S.Tune(recipe, run_name, files, b.data / "train.csv", b.data, E, b.python),
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


def _test(b: _Builder) -> None:
    """Every fold model on the test images, then the folds merged per member."""
    trained, P = b.recipe.trained_folds(), b.predictions
    tsrc = ["--images", str(b.test_dir)]
    if b.recipe.ensemble.mode == "box_first" and len(trained) > 1:
        # the test images are predicted by every fold model: fuse all their boxes once, so that every mask
        # model of every fold predicts on the same boxes (box-first needs one box set per image)
        for k in trained:
            _raw_predictions(b, "test images", k, tsrc, P / f"test_fold{k}", "test")
        shared = _test_fused_boxes(b)
        for k in trained:
            _derived_predictions(b, "test images", k, tsrc, P / f"test_fold{k}", "test", shared_fused=shared)
    else:
        for k in trained:
            _raw_predictions(b, "test images", k, tsrc, P / f"test_fold{k}", "test")
            _derived_predictions(b, "test images", k, tsrc, P / f"test_fold{k}", "test")
    for n in b.member_names():
        deps = [f"test/{n}/fold{k}" for k in trained if b.has(f"test/{n}/fold{k}")]
        parts = [P / f"test_fold{d.rsplit('fold', 1)[1]}" / f"{n}.npz" for d in deps]
        b.add(
            Step(
                f"test/{n}/merge",
                "test",
                f"test predictions of {n}"
                + (f" (merging {len(parts)} fold models)" if len(parts) > 1 else ""),
                func=S.MergeFolds(parts, b.test_file(n)),
                deps=deps,
                outputs=[b.test_file(n)],
            )
        )


def _test_fused_boxes(b: _Builder) -> Path:
    """Box-first over several folds: one WBF of every fold's box models on the test images; returns the
    fused file."""
    P = b.predictions
    box_parts = {
        f"{m.name}_fold{k}": (P / f"test_fold{k}" / f"{m.name}.npz", m.weight / len(b.recipe.folds_of(m)))
        for m in b.recipe.models
        if m.role in ("boxes", "instance")
        for k in b.recipe.folds_of(m)
    }
    shared = P / "test" / "fused_boxes.npz"
    b.add(
        Step(
            "test/fused_boxes",
            "test",
            f"fuse the boxes of every box model of every fold ({len(box_parts)} files) on the test images",
            func=S.FuseBoxes(
                b.recipe,
                {n: p for n, (p, _) in box_parts.items()},
                {n: w for n, (_, w) in box_parts.items()},
                shared,
                P / "test" / "fuse_boxes.yaml",
                b.python,
            ),  # fmt: skip
            params={"fusion": b.recipe.ensemble.fusion},
            deps=[f"test/{n.rsplit('_fold', 1)[0]}/fold{n.rsplit('_fold', 1)[1]}" for n in box_parts],
            outputs=[shared],
        )
    )
    return shared


def _submission_path(b: _Builder) -> Path:
    return _abs(b.recipe.outputs.submission or b.work / "submission.csv")


def _submission(b: _Builder) -> None:
    """The tuned ensemble on the test predictions -> the submission CSV."""
    E, sub = b.ensemble_dir, _submission_path(b)
    b.add(
        Step(
            "submission",
            "submission",
            f"tuned ensemble on the test images -> {_rel(sub)}",
            func=S.Submission(
                E / "ensemble_tuned.yaml", b.predictions / "test", E / "ensemble_test.yaml", sub, b.python
            ),  # fmt: skip
            deps=["tune/ensemble", *[f"test/{n}/merge" for n in b.member_names()]],
            outputs=[sub, E / "ensemble_test.yaml"],
        )
    )


def _bundle(b: _Builder) -> None:
    """The Kaggle bundle of the test-retargeted ensemble (when ``outputs.bundle`` is set)."""
    if not b.recipe.outputs.bundle:
        return
    bundle = _abs(b.recipe.outputs.bundle)
    b.add(
        Step(
            "bundle",
            "bundle",
            f"Kaggle bundle -> {_rel(bundle)}",
            func=S.Bundle(b.ensemble_dir / "ensemble_test.yaml", bundle, b.python),
            deps=["submission"],
            outputs=[bundle / "bundle.json"],
        )
    )


def _summary(b: _Builder) -> None:
    """summary.md / summary.json + plots, after every score, tuning and submission step."""
    W = b.work
    b.add(
        Step(
            "summary",
            "summary",
            "summary.md / summary.json + plots",
            func=S.Summary(b.recipe, W, b.data),
            deps=[s.id for s in b.steps if s.stage in ("score", "tune", "submission")],
            outputs=[W / "summary.md", W / "summary.json"],
        )
    )


class _LoadFrom(Checkpoint):
    """``load_from=<checkpoint>`` as one ``--cfg-options`` entry, resolved at run time."""

    def __init__(self, ckpt: Checkpoint) -> None:
        super().__init__(ckpt.work_dir)

    def resolve(self) -> str:
        return f"load_from={super().resolve()}"

    def __str__(self) -> str:
        return f"load_from={super().__str__()}"


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
