"""The whole stack on the embedded synthetic dataset, end to end on a CPU (``make demo``).

Steps (each a real run of the project's own command-line tools, timed):

1. ``tools/make_synthetic.py``: a synthetic dataset in the exact Kaggle layout (``train.csv``, ``train/``,
   ``test/``, ``sample_submission.csv``).
2. ``tools/prepare_sartorius.py``: COCO folds, semantic label PNGs, split lists.
3. ``tools/dataset_report.py``: counts per class, size histograms, overlays.
4. ``tools/train.py`` for each of the four model families (short CPU schedules of the ``*demo*`` configs).
5. ``tools/infer.py`` for each model, on the validation fold and on the test images.
6. ``python -m ensemble.run``: fuses the models on the validation fold (score report + overlays; each instance
   model is scored alone too), ``python -m ensemble.tune`` tunes weights and thresholds there, and the tuned
   ensemble runs on the test images, writing ``submissions/demo.csv``.

Everything lands under ``--work-dir`` (default ``work_dirs/demo``), with ``demo_summary.json`` / ``.md`` holding
each step's time and the scores. The default schedules finish in well under 30 minutes on 2 CPU cores; they are
for showing the path, not for accuracy (the full configs are for GPU users).

Example:
    python tools/demo.py --work-dir work_dirs/demo
    python tools/demo.py --skip-train            # reuse checkpoints of an earlier run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class DemoModel:
    """A model family of the demo: its name in outputs, demo config and ensemble role."""

    name: str
    config: str
    kind: str  # 'instance' (boxes + masks), 'boxes' (boxes only) or 'semantic' (foreground probability)
    weight: float


MODELS: tuple[DemoModel, ...] = (
    DemoModel("mask_rcnn", "configs/mask_rcnn/mask-rcnn_r18_fpn_demo-cpu_sartorius.py", "instance", 1.0),
    DemoModel("yolox", "configs/yolox/yolox_tiny_demo-cpu_sartorius.py", "boxes", 1.0),
    DemoModel(
        "upernet", "configs/upernet/upernet_r18_1xb2-250iter_sartorius-demo-256x256.py", "semantic", 0.5
    ),
    DemoModel(
        "unet", "configs/unet/se-unet-fre_c8-s4_1xb2-500iter_sartorius-demo-256x256.py", "semantic", 0.5
    ),
)


def _run(cmd: list[str], log: Path, step: str, timings: dict[str, float]) -> None:
    """Runs one step, teeing its output to ``log``; raises ``RuntimeError`` naming the step on failure."""
    print(f"\n=== [{step}] {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            fh.write(line)
            sys.stdout.write(line)
        rc = proc.wait()
    timings[step] = round(time.perf_counter() - t0, 1)
    if rc != 0:
        raise RuntimeError(f"demo step '{step}' failed (exit {rc}); its log is {log}")
    print(f"=== [{step}] done in {timings[step]:.1f} s", flush=True)


def _last_checkpoint(work_dir: Path) -> Path:
    """The checkpoint mmengine recorded as the last one of a run."""
    marker = work_dir / "last_checkpoint"
    if not marker.is_file():
        raise RuntimeError(f"no checkpoint recorded in {work_dir} (missing {marker})")
    ckpt = Path(marker.read_text().strip())
    return ckpt if ckpt.is_absolute() else (REPO / ckpt)


def write_ensemble_config(
    path: Path,
    name: str,
    preds: dict[str, Path],
    weights: dict[str, float],
    params_from: Path | None = None,
) -> None:
    """Writes an ensemble YAML for the demo's prediction files.

    Fusion parameters and class thresholds come from ``params_from`` (e.g. a config tuned on the validation
    fold; its model weights are kept too) or else from ``configs/ensemble/sartorius_ensemble.yaml`` with low
    class thresholds, since the briefly trained demo models score low.
    """
    import yaml

    if params_from is not None:
        base = yaml.safe_load(params_from.read_text())
        weights = {**weights, **{m["name"]: m["weight"] for m in base.get("models", [])}}
    else:
        base = yaml.safe_load((REPO / "configs/ensemble/sartorius_ensemble.yaml").read_text())
        base["class_thresholds"] = {c: {"score": 0.1, "min_area": 10} for c in ("shsy5y", "astro", "cort")}
    base["name"] = name
    base["models"] = [
        {"name": m, "predictions": str(p), "weight": float(weights[m])} for m, p in preds.items()
    ]
    base.pop("truth", None)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(base, sort_keys=False))


def run_demo(
    work_dir: Path,
    n_images: int = 24,
    density: float = 0.3,
    folds: int = 3,
    seed: int = 0,
    skip_train: bool = False,
    models: tuple[DemoModel, ...] = MODELS,
) -> dict:
    """Runs the demo; returns the summary dict (also written to ``work_dir/demo_summary.json``)."""
    py = sys.executable
    work_dir = work_dir if work_dir.is_absolute() else REPO / work_dir
    data = work_dir / "sartorius"
    logs = work_dir / "logs"
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    env_note = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}

    _run(
        [py, "tools/make_synthetic.py", "--out", str(data), "--n-images", str(n_images), "--seed", str(seed),
         "--density", str(density), "--n-test", "3"],
        logs / "make_synthetic.log", "make_synthetic", timings,
    )  # fmt: skip
    _run(
        [py, "tools/prepare_sartorius.py", "--data-root", str(data), "--folds", str(folds), "--seed", str(seed)],
        logs / "prepare.log", "prepare", timings,
    )  # fmt: skip
    _run(
        [py, "tools/dataset_report.py", "--data-root", str(data), "--out", str(work_dir / "dataset_report")],
        logs / "dataset_report.log", "dataset_report", timings,
    )  # fmt: skip

    val_ann = data / "annotations" / "fold0_val.json"
    preds_val: dict[str, Path] = {}
    preds_test: dict[str, Path] = {}
    for m in models:
        mdir = work_dir / m.name
        if not skip_train:
            _run(
                [py, "tools/train.py", m.config, "--work-dir", str(mdir), "--cfg-options", f"data_root={data}/"],
                logs / f"train_{m.name}.log", f"train_{m.name}", timings,
            )  # fmt: skip
        ckpt = _last_checkpoint(mdir)
        preds_val[m.name] = work_dir / "predictions" / f"{m.name}_val.npz"
        preds_test[m.name] = work_dir / "predictions" / f"{m.name}_test.npz"
        _run(
            [py, "tools/infer.py", m.config, str(ckpt), "--ann-file", str(val_ann), "--data-root", str(data),
             "--out", str(preds_val[m.name])],
            logs / f"infer_{m.name}_val.log", f"infer_{m.name}_val", timings,
        )  # fmt: skip
        _run(
            [py, "tools/infer.py", m.config, str(ckpt), "--images", str(data / "test"),
             "--out", str(preds_test[m.name])],
            logs / f"infer_{m.name}_test.log", f"infer_{m.name}_test", timings,
        )  # fmt: skip

    weights = {m.name: m.weight for m in models}
    instance_models = [m.name for m in models if m.kind == "instance"]
    by_name = {m.name: m for m in models}
    if "mask_rcnn" in by_name and "yolox" in by_name:
        # YOLOX finds boxes only: Mask R-CNN's mask head predicts a mask for each YOLOX box (as the
        # competition winners did), and that box+mask model joins the ensemble in place of bare boxes
        mr = by_name["mask_rcnn"]
        ckpt = _last_checkpoint(work_dir / mr.name)
        for split, preds in (("val", preds_val), ("test", preds_test)):
            out = work_dir / "predictions" / f"yolox_masks_{split}.npz"
            src = ["--ann-file", str(val_ann), "--data-root", str(data)] if split == "val" else [
                "--images", str(data / "test")]  # fmt: skip
            _run(
                [py, "tools/infer.py", mr.config, str(ckpt), *src, "--mask-head-on", str(preds.pop("yolox")),
                 "--name", "yolox_masks", "--out", str(out)],
                logs / f"infer_yolox_masks_{split}.log", f"infer_yolox_masks_{split}", timings,
            )  # fmt: skip
            preds["yolox_masks"] = out
        weights["yolox_masks"] = by_name["yolox"].weight
        instance_models.append("yolox_masks")

    truth = data / "train.csv"
    scores: dict[str, dict] = {}
    tuned_cfgs: dict[str, Path] = {}
    # each instance model alone, then the ensemble, on the validation fold: with default parameters, then tuned
    # there (adaptive weighting, as the ensemble paper does; in-sample, so each is an optimistic number)
    runs = [(f"val_{m}", {m: preds_val[m]}) for m in instance_models] + [("val_ensemble", preds_val)]
    for run_name, preds in runs:
        cfg = work_dir / "ensemble" / f"{run_name}.yaml"
        write_ensemble_config(cfg, run_name, preds, weights)
        tuned_cfgs[run_name] = work_dir / "ensemble" / f"{run_name}_tuned.yaml"
        _run(
            [py, "-m", "ensemble.tune", "--config", str(cfg), "--truth", str(truth),
             "--out", str(tuned_cfgs[run_name]), "--rounds", "2", "--no-progress"],
            logs / f"tune_{run_name}.log", f"tune_{run_name}", timings,
        )  # fmt: skip
        for variant, vcfg in ((run_name, cfg), (f"{run_name}_tuned", tuned_cfgs[run_name])):
            out_csv = work_dir / "ensemble" / f"{variant}.csv"
            _run(
                [py, "-m", "ensemble.run", "--config", str(vcfg), "--out", str(out_csv),
                 "--truth", str(truth), "--images-dir", str(data / "train"), "--overlays", "3", "--no-progress"],
                logs / f"ensemble_{variant}.log", f"ensemble_{variant}", timings,
            )  # fmt: skip
            report = out_csv.with_name(f"{variant}_score.json")
            if report.is_file():
                scores[variant] = json.loads(report.read_text())
    tuned = tuned_cfgs["val_ensemble"]
    cfg = work_dir / "ensemble" / "demo.yaml"
    write_ensemble_config(cfg, "demo", preds_test, weights, params_from=tuned)
    submission = REPO / "submissions" / "demo.csv"
    _run(
        [py, "-m", "ensemble.run", "--config", str(cfg), "--out", str(submission),
         "--images-dir", str(data / "test"), "--overlays", "3"],
        logs / "ensemble_test.log", "ensemble_test", timings,
    )  # fmt: skip

    total = round(time.perf_counter() - t_start, 1)
    summary = {
        "work_dir": str(work_dir),
        "submission": str(submission),
        "total_seconds": total,
        "timings_seconds": timings,
        "scores": {k: {"score": v.get("score"), "per_class": v.get("per_class")} for k, v in scores.items()},
        "env": env_note,
    }
    lines = ["# Demo summary", "", f"Total: {total / 60:.1f} min. Submission: `{submission}`.", ""]
    lines += ["| run (validation fold) | competition score |", "|---|---:|"]
    for k, v in scores.items():
        lines.append(f"| {k} | {v.get('score', float('nan')):.4f} |")
    singles = [k for k in scores if k.endswith("_tuned") and k != "val_ensemble_tuned"]
    if singles and "val_ensemble_tuned" in scores:
        best = max(singles, key=lambda k: scores[k]["score"])
        ens = scores["val_ensemble_tuned"]["score"]
        verdict = "beats" if ens > scores[best]["score"] else "does not beat"
        lines += ["", f"Tuned ensemble {ens:.4f} {verdict} the best tuned single model ({best}: "
                  f"{scores[best]['score']:.4f}) on the validation fold."]  # fmt: skip
        summary["ensemble_beats_best_single"] = ens > scores[best]["score"]
    lines += ["", "| step | seconds |", "|---|---:|"] + [f"| {k} | {v} |" for k, v in timings.items()]
    (work_dir / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    (work_dir / "demo_summary.md").write_text("\n".join(lines) + "\n")
    print("\n" + "\n".join(lines))
    return summary


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", default="work_dirs/demo", help="output directory (default work_dirs/demo)")
    p.add_argument("--n-images", type=int, default=24, help="synthetic training images (default 24)")
    p.add_argument("--density", type=float, default=0.3, help="factor on real cell counts (default 0.3)")
    p.add_argument("--folds", type=int, default=3, help="folds of the prepared dataset; fold 0 validates")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-train", action="store_true", help="reuse the checkpoints of an earlier run")
    names = [m.name for m in MODELS]
    p.add_argument(
        "--models", nargs="+", choices=names, default=names, help="model families to run (default all)"
    )
    args = p.parse_args(argv)
    models = tuple(m for m in MODELS if m.name in args.models)
    try:
        run_demo(
            Path(args.work_dir), args.n_images, args.density, args.folds, args.seed, args.skip_train, models
        )
    except RuntimeError as e:
        print(f"demo.py: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
