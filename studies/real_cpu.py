"""Learning curves on the real labelled Sartorius images on one CPU core (issue 22): where does each model family
stop being budget-bound, and does it overfit?

For every run (a model config on fold 0 of the 3-fold split grouped by sample): one training with a checkpoint
every 100 iterations, then every budget's checkpoint predicted (``workflow.cli.infer``) on the fold's TRAINING
images (in-sample) and on its held-out images, and scored with the competition metric (``ensemble.run``, the
code behind ``ensemble.score``; truth = the fold's COCO json):

- ``untuned``: the CPU demo recipe's starting thresholds (score 0.1, min_area 10 for every class);
- a score-threshold sweep (0.05, 0.1..0.7, min_area 10) on both splits;
- ``tuned``: per class, the score threshold that is best on the fold's training images (by true cell type),
  applied to the held-out images (a held-out number: nothing is fitted on them).

A boxes run (YOLOX) is scored with the mask head of an instance run (``infer --mask-head-on``: its last
checkpoint's masks on YOLOX's boxes), as the demo recipe's ``yolox_masks`` member.

Resumable: a finished training (its last checkpoint) is not rerun (an interrupted one resumes with
``train --resume``); an existing prediction file or score file is reused. ``--report`` rewrites the generated
block of ``docs/results/real_cpu.md`` and the plots from the score files alone.

    OMP_NUM_THREADS=1 python studies/real_cpu.py --source /path/to/kaggle_train_dir            # everything
    OMP_NUM_THREADS=1 python studies/real_cpu.py --runs mask_rcnn_1x --no-train                # evaluate only
    python studies/real_cpu.py --report                                                        # tables + plots

``--source`` is a Kaggle-layout folder (train.csv, train/); the study links it into ``<work-dir>/data`` and
prepares 3 folds there (``prepare_sartorius --folds 3 --seed 0``), never writing into the source.
Each training / inference runs pinned to ``--core`` (taskset) with ``OMP_NUM_THREADS=1``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("shsy5y", "astro", "cort")
GRID = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)  # 0.05 = infer's own cut (YOLOX scores run low early)
UNTUNED = 0.1
MIN_AREA = 10
MARK_BEGIN, MARK_END = (
    "<!-- real_cpu tables: begin (studies/real_cpu.py --report) -->",
    "<!-- real_cpu tables: end -->",
)

RUNS: dict[str, dict[str, Any]] = {
    "mask_rcnn_1x": {
        "config": "configs/mask_rcnn/mask-rcnn_r18_fpn_real-cpu_sartorius.py",
        "budgets": [100, 200, 400, 800],
        "family": "mask_rcnn",
    },
    "mask_rcnn_2x": {
        "config": "configs/mask_rcnn/mask-rcnn_r18_fpn_real-cpu-2x_sartorius.py",
        "budgets": [100, 200, 400, 800],
        "family": "mask_rcnn",
    },
    "mask_rcnn_1x_noaug": {
        "config": "configs/mask_rcnn/mask-rcnn_r18_fpn_real-cpu-noaug_sartorius.py",
        "budgets": [100, 200, 400, 800],
        "family": "mask_rcnn",
    },
    "yolox": {
        "config": "configs/yolox/yolox_tiny_real-cpu_sartorius.py",
        "budgets": [200, 400, 800, 1200, 1600],
        "family": "yolox",
        "masks_from": ("mask_rcnn_1x", 800),  # that run's checkpoint at 800 iterations gives the masks
    },
}


def _load() -> str:
    la = os.getloadavg()
    return f"{la[0]:.2f} {la[1]:.2f} {la[2]:.2f}"


def _run(cmd: list[str], log: Path, core: int | None) -> float:
    """Run a tool (module form) pinned to ``core`` with one OpenMP thread; returns its wall seconds."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    full = (["taskset", "-c", str(core)] if core is not None else []) + cmd
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with log.open("a") as f:
        f.write(f"$ {' '.join(full)}\n")
        f.flush()
        rc = subprocess.call(full, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
    if rc != 0:
        raise RuntimeError(f"failed ({rc}): {' '.join(full)}; see {log}")
    return time.time() - t0


def prepare(source: Path | None, data: Path, core: int | None) -> None:
    """Link the Kaggle-layout source into ``data`` and prepare 3 folds grouped by sample (seed 0)."""
    if (data / "annotations" / "fold0_val.json").exists():
        return
    if source is None:
        raise SystemExit(f"{data} is not prepared: pass --source KAGGLE_DIR (train.csv, train/)")
    data.mkdir(parents=True, exist_ok=True)
    for name in ("train.csv", "train"):
        link = data / name
        if not link.exists():
            link.symlink_to(source.resolve() / name)
    _run([sys.executable, "-m", "workflow.cli.prepare_sartorius", "--data-root", str(data), "--folds", "3",
          "--seed", "0"], data / "prepare.log", core)  # fmt: skip


def _ckpt(run_dir: Path, it: int) -> Path:
    return run_dir / f"iter_{it}.pth"


def train(name: str, work: Path, data: Path, fold: int, core: int | None) -> None:
    """One training to the run's largest budget = its config's max_iters (a checkpoint every 100 iterations;
    resumes when interrupted)."""
    spec = RUNS[name]
    run_dir = work / "models" / name / f"fold{fold}"
    last = max(spec["budgets"])
    if _ckpt(run_dir, last).exists():
        return
    resume = ["--resume"] if list(run_dir.glob("iter_*.pth")) else []
    cmd = [sys.executable, "-m", "workflow.cli.train", spec["config"], "--work-dir", str(run_dir), *resume,
           "--cfg-options", f"data_root={data}/", f"fold={fold}"]  # fmt: skip
    meta = {"load_before": _load(), "start": time.strftime("%Y-%m-%d %H:%M:%S")}
    meta["wall_s"] = _run(cmd, run_dir / "study_train.log", core)
    meta["load_after"] = _load()
    (run_dir / "study_train.json").write_text(json.dumps(meta, indent=2))


def train_timing(run_dir: Path) -> dict[str, Any]:
    """Seconds per 100 iterations from the checkpoints' times (and the logged mean iteration time)."""
    ckpts = sorted(
        ((int(m.group(1)), p.stat().st_mtime) for p in run_dir.glob("iter_*.pth")
         if (m := re.fullmatch(r"iter_(\d+)\.pth", p.name))),
    )  # fmt: skip
    out: dict[str, Any] = {}
    if len(ckpts) >= 2:
        (i0, t0), (i1, t1) = ckpts[0], ckpts[-1]
        out["s_per_100"] = round((t1 - t0) / (i1 - i0) * 100, 1)
    times = []
    for log in run_dir.glob("*/*.log"):
        times += [float(x) for x in re.findall(r"Iter\(train\).*?\stime: ([0-9.]+)", log.read_text())]
    if times:
        out["logged_s_per_iter"] = round(sum(times) / len(times), 3)
    meta = run_dir / "study_train.json"
    if meta.exists():
        out.update(json.loads(meta.read_text()))
    return out


def _ann(data: Path, fold: int, split: str) -> Path:
    return data / "annotations" / f"fold{fold}_{split}.json"


def predict(
    name: str, it: int, split: str, work: Path, data: Path, fold: int, core: int | None
) -> dict[str, Any]:
    """Prediction file of run ``name`` at budget ``it`` on ``split`` (train / val); returns its path + seconds."""
    spec = RUNS[name]
    run_dir = work / "models" / name / f"fold{fold}"
    preds = work / "preds" / name / f"fold{fold}"
    out = preds / f"iter{it}_{split}.npz"
    info: dict[str, Any] = {"file": str(out)}
    src = ["--ann-file", str(_ann(data, fold, split)), "--data-root", str(data)]
    common = ["--device", "cpu", "--no-progress", "--cfg-options", f"data_root={data}/", f"fold={fold}"]
    log = preds / "infer.log"
    if not out.exists():
        boxes = out if "masks_from" not in spec else preds / f"iter{it}_{split}_boxes.npz"
        if not boxes.exists():
            info["infer_s"] = _run([sys.executable, "-m", "workflow.cli.infer", spec["config"],
                                    str(_ckpt(run_dir, it)), *src, "--out", str(boxes), *common], log, core)  # fmt: skip
        if "masks_from" in spec:
            m_name, m_iter = spec["masks_from"]
            m = RUNS[m_name]
            m_ckpt = _ckpt(work / "models" / m_name / f"fold{fold}", m_iter)
            info["mask_head_s"] = _run([sys.executable, "-m", "workflow.cli.infer", m["config"], str(m_ckpt), *src,
                                        "--mask-head-on", str(boxes), "--out", str(out), "--name", f"{name}_masks",
                                        *common], log, core)  # fmt: skip
    return info


def _small(report: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "score",
        "n_images",
        "n_true",
        "n_pred",
        "per_class",
        "per_class_n_images",
        "per_threshold",
        "per_image",
    )
    return {k: report[k] for k in keys}


def _score(pred: Path, truth: Path, thr: dict[str, float], scratch: Path, tag: str) -> dict[str, Any]:
    import yaml

    from ensemble.config import EnsembleConfig
    from ensemble.run import run_ensemble

    start = yaml.safe_load((REPO / "configs/ensemble/sartorius_ensemble.yaml").read_text())
    fusion = dict(start["fusion"])
    data = {
        "name": tag,
        "models": [{"name": "m", "predictions": str(pred), "weight": 1.0}],
        "fusion": fusion,
        "class_thresholds": {c: {"score": float(thr[c]), "min_area": MIN_AREA} for c in CLASSES},
    }
    config = EnsembleConfig.from_dict(data, source=tag)
    scratch.mkdir(parents=True, exist_ok=True)
    summary = run_ensemble(config, out_csv=scratch / f"{tag}.csv", truth_path=truth, overlays=0, progress=False,
                           workers=1)  # fmt: skip
    return _small(summary["report"].to_dict())


def evaluate(name: str, it: int, work: Path, data: Path, fold: int, core: int | None) -> dict[str, Any]:
    """Score file of one budget: threshold sweep on both splits, untuned, tuned-on-train applied to held-out."""
    out = work / "scores" / name / f"fold{fold}" / f"iter{it}.json"
    if out.exists():
        return json.loads(out.read_text())
    res: dict[str, Any] = {"run": name, "iters": it, "fold": fold, "load_before": _load()}
    scratch = out.parent / f"iter{it}_csv"
    for split in ("train", "val"):
        info = predict(name, it, split, work, data, fold, core)
        res[f"predict_{split}"] = info
        res[split] = {
            f"{s:g}": _score(
                Path(info["file"]),
                _ann(data, fold, split),
                dict.fromkeys(CLASSES, s),
                scratch,
                f"{split}_thr{s:g}",
            )  # fmt: skip
            for s in GRID
        }
    best = {}
    for c in CLASSES:
        cand = [(r["per_class"].get(c), float(s)) for s, r in res["train"].items() if c in r["per_class"]]
        best[c] = max(cand)[1] if cand else UNTUNED
    res["tuned_thresholds"] = best
    res["tuned_val"] = _score(
        Path(res["predict_val"]["file"]), _ann(data, fold, "val"), best, scratch, "val_tuned"
    )
    res["tuned_train"] = _score(Path(res["predict_train"]["file"]), _ann(data, fold, "train"), best, scratch,
                                "train_tuned")  # fmt: skip
    res["load_after"] = _load()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    return res


# ----------------------------------------------------------------------------------------------------------- report
def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _rows(name: str, work: Path, fold: int) -> list[dict[str, Any]]:
    folder = work / "scores" / name / f"fold{fold}"
    rows = [json.loads(p.read_text()) for p in folder.glob("iter*.json")] if folder.exists() else []
    return sorted(rows, key=lambda r: r["iters"])


def _table(name: str, rows: list[dict[str, Any]], timing: dict[str, Any]) -> str:
    u = f"{UNTUNED:g}"
    r0 = rows[0]
    n_tr, n_va = r0["train"][u]["per_class_n_images"], r0["val"][u]["per_class_n_images"]
    lines = [
        f"### `{name}` (`{RUNS[name]['config']}`)",
        "",
        f"Fold {r0['fold']}: {r0['train'][u]['n_images']} training images "
        f"({', '.join(f'{c} {n_tr.get(c, 0)}' for c in CLASSES)}; {r0['train'][u]['n_true']} cells), "
        f"{r0['val'][u]['n_images']} held-out images ({', '.join(f'{c} {n_va.get(c, 0)}' for c in CLASSES)}; "
        f"{r0['val'][u]['n_true']} cells). Training: seed 0, one core, "
        f"{timing.get('s_per_100', '-')} s per 100 iterations (checkpoint times; logged mean iteration "
        f"{timing.get('logged_s_per_iter', '-')} s); load average at start {timing.get('load_before', '-')}, "
        f"at end {timing.get('load_after', '-')}.",
        "",
        "| iterations | in-sample untuned | held-out untuned | in-sample tuned | held-out tuned | tuned score thr "
        "(shsy5y/astro/cort) | held-out at the one thr best in-sample (thr) | held-out untuned shsy5y / astro / cort | held-out tuned shsy5y / astro / cort "
        "| in-sample tuned shsy5y / astro / cort | held-out IoU 0.5 / 0.75 / 0.85 (tuned) | predicted / true "
        "cells held-out (tuned) |",
        "|---:|---:|---:|---:|---:|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        tr, va, tv, tt = r["train"][u], r["val"][u], r["tuned_val"], r["tuned_train"]
        pc = lambda d: " / ".join(_fmt(d["per_class"].get(c)) for c in CLASSES)  # noqa: E731
        pt = tv["per_threshold"]
        thr = "/".join(f"{r['tuned_thresholds'][c]:g}" for c in CLASSES)
        g = max((rep["score"], -float(k), k) for k, rep in r["train"].items())[2]  # ties: the lower threshold
        lines.append(
            f"| {r['iters']} | {_fmt(tr['score'])} | {_fmt(va['score'])} | {_fmt(tt['score'])} | "
            f"**{_fmt(tv['score'])}** | {thr} | {_fmt(r['val'][g]['score'])} ({g}) | {pc(va)} | {pc(tv)} | {pc(tt)} | "
            f"{_fmt(pt.get('0.50'))} / {_fmt(pt.get('0.75'))} / {_fmt(pt.get('0.85'))} | {tv['n_pred']} / {tv['n_true']} |"
        )
    infer = [
        (r["iters"], r["predict_val"].get("infer_s"), r["predict_val"].get("mask_head_s"))
        for r in rows if r["predict_val"].get("infer_s")
    ]  # fmt: skip
    if infer:
        n = r0["val"][u]["n_images"]
        lines += ["", "Inference on the held-out images (one core, s per image): " + ", ".join(
            f"{it}: {s / n:.1f}" + (f" + mask head {m / n:.1f}" if m else "") for it, s, m in infer)]  # fmt: skip
    return "\n".join(lines)


def _plot(name: str, rows: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    u = f"{UNTUNED:g}"
    its = [r["iters"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    ax.plot(
        its, [r["tuned_train"]["score"] for r in rows], "o--", color="C0", label="training images (tuned)"
    )
    ax.plot(its, [r["tuned_val"]["score"] for r in rows], "o-", color="C0", label="held-out (tuned on train)")
    ax.plot(its, [r["train"][u]["score"] for r in rows], "s--", color="C1", label="training images (untuned)")
    ax.plot(its, [r["val"][u]["score"] for r in rows], "s-", color="C1", label="held-out (untuned)")
    ax.set(
        xscale="log", xlabel="training iterations (batch 2)", ylabel="competition score", title=f"{name}: all"
    )
    ax.set_xticks(its, [str(i) for i in its])
    ax.legend(fontsize=8)
    ax = axes[1]
    for k, c in enumerate(CLASSES):
        ax.plot(
            its,
            [r["tuned_train"]["per_class"].get(c) for r in rows],
            "o--",
            color=f"C{k}",
            label=f"{c} train",
        )
        ax.plot(
            its,
            [r["tuned_val"]["per_class"].get(c) for r in rows],
            "o-",
            color=f"C{k}",
            label=f"{c} held-out",
        )
    ax.set(xscale="log", xlabel="training iterations (batch 2)", title=f"{name}: per class (tuned)")
    ax.set_xticks(its, [str(i) for i in its])
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)


def _family_plot(family: str, runs: dict[str, list[dict[str, Any]]], out: Path) -> None:
    """Training images vs held-out (tuned on train) vs iterations, every run of one family on one plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for k, (name, rows) in enumerate(runs.items()):
        its = [r["iters"] for r in rows]
        ax.plot(
            its,
            [r["tuned_train"]["score"] for r in rows],
            "o--",
            color=f"C{k}",
            label=f"{name} training images",
        )
        ax.plot(its, [r["tuned_val"]["score"] for r in rows], "o-", color=f"C{k}", label=f"{name} held-out")
    ax.set(xscale="log", xlabel="training iterations (batch 2)", ylabel="competition score (tuned on train)",
           title=f"{family}: fold 0, 26 real images")  # fmt: skip
    its = sorted({r["iters"] for rows in runs.values() for r in rows})
    ax.set_xticks(its, [str(i) for i in its])
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def report(work: Path, fold: int, doc: Path) -> None:
    """Rewrite the generated block of ``doc`` (tables) and the plots from the score files."""
    blocks = []
    for name in RUNS:
        rows = _rows(name, work, fold)
        if not rows:
            continue
        timing = train_timing(work / "models" / name / f"fold{fold}")
        blocks.append(_table(name, rows, timing))
        png = doc.parent / f"real_cpu_{name}.png"
        _plot(name, rows, png)
        blocks.append(f"\n![{name}]({png.name})\n")
    families: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for name, spec in RUNS.items():
        rows = _rows(name, work, fold)
        if rows:
            families.setdefault(spec["family"], {})[name] = rows
    for family, runs in families.items():
        png = doc.parent / f"real_cpu_family_{family}.png"
        _family_plot(family, runs, png)
        blocks.append(f"\n![{family}]({png.name})\n")
    block = "\n".join([MARK_BEGIN, "", *blocks, "", MARK_END])
    text = doc.read_text() if doc.exists() else f"# Real images on a CPU\n\n{MARK_BEGIN}\n{MARK_END}\n"
    if MARK_BEGIN in text:
        head, rest = text.split(MARK_BEGIN, 1)
        tail = rest.split(MARK_END, 1)[1] if MARK_END in rest else ""
        text = head + block + tail
    else:
        text += "\n" + block + "\n"
    doc.write_text(text)
    print(f"wrote {doc}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", type=Path, help="Kaggle-layout folder (train.csv, train/) to link and prepare")
    p.add_argument("--work-dir", type=Path, default=Path("work_dirs/real_cpu"))
    p.add_argument("--data-root", type=Path, help="prepared data root (default <work-dir>/data)")
    p.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    p.add_argument("--budgets", nargs="+", type=int, help="override every run's budgets (iterations)")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--core", type=int, default=1, help="CPU core for training and inference (-1: no pinning)")
    p.add_argument(
        "--no-train", action="store_true", help="evaluate the checkpoints that exist; train nothing"
    )
    p.add_argument("--train-only", action="store_true", help="train the runs; evaluate nothing")
    p.add_argument("--report", action="store_true", help="only rewrite the tables and plots")
    p.add_argument("--doc", type=Path, default=REPO / "docs/results/real_cpu.md")
    a = p.parse_args(argv)
    work = a.work_dir if a.work_dir.is_absolute() else REPO / a.work_dir
    data = a.data_root or work / "data"
    data = data if data.is_absolute() else REPO / data
    core = None if a.core < 0 else a.core
    if a.budgets:
        for name in a.runs:
            RUNS[name]["budgets"] = sorted(a.budgets)
    if not a.report:
        prepare(a.source, data, core)
        for name in a.runs:
            if not a.no_train:
                train(name, work, data, a.fold, core)
            run_dir = work / "models" / name / f"fold{a.fold}"
            for it in [] if a.train_only else RUNS[name]["budgets"]:
                if not _ckpt(run_dir, it).exists():
                    print(f"{name}: no checkpoint for {it} iterations, skipped")
                    continue
                t0 = time.time()
                r = evaluate(name, it, work, data, a.fold, core)
                print(f"{name} {it:5d} it: held-out tuned {r['tuned_val']['score']:.3f} untuned "
                      f"{r['val'][f'{UNTUNED:g}']['score']:.3f}, in-sample tuned {r['tuned_train']['score']:.3f} "
                      f"({time.time() - t0:.0f} s)", flush=True)  # fmt: skip
    if not a.train_only:
        report(work, a.fold, a.doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
