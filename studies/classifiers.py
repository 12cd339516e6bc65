"""Classifier studies of the two papers at CPU-feasible scale, on a prepared Sartorius-layout dataset.

Studies (each a grouped, stratified k-fold cross-validation through :func:`custom_modules.cls.cross_validation.
cross_validate`, same folds and seed for every row):

* ``sem``: SEM paper depth ablation, CNN1..CNN5 and CNN5 + FC40 on image tiles (its Tables 3 and 4).
* ``imbalance``: LipNet-4, no augmentation, sampler none / oversample / undersample (20 % of the majority class
  dropped, re-drawn every epoch).
* ``augment``: LipNet-4, oversampling + each augmentation added cumulatively: rotation, shift, flip, shear, zoom
  (the liposome report's figure 17, normalised TPR per class).
* ``lipnet``: LipNet-1 / -2 / -4 / -4c / -6 with oversampling + full augmentation, cropped and masked (its fig. 18/19).
* ``masking``: LipNet-4 on crops with 50 px of surroundings / cropped / cropped and masked (its figures 20/21).
* ``svm``: the hand-crafted-feature SVM (its section 8.4) next to LipNet-4.

Every CNN run trains for ``--iters`` iterations of batch 32 (an IterBasedTrainLoop replaces the configs' epoch
schedule so samplers are compared at equal updates). Writes ``results.json`` (after every run, so partial results
survive), ``results.md`` with the tables, and PNGs into ``--out``; each run's CV report sits in ``--out/<run>/``.

Example (the numbers in docs/results/classifiers.md):
    OMP_NUM_THREADS=1 nice -n 10 python studies/classifiers.py --data-root work_dirs/cls/real \\
        --label real --folds 3 --iters 100 --out work_dirs/bench_classifiers/real
"""

from __future__ import annotations

import argparse
import json
import pprint
import sys
import time
from pathlib import Path
from typing import Any

CFG = "configs/classifiers/"
LIP4 = CFG + "lipnet-4_adam-30e_sartorius-cells-28.py"
STUDIES = ("sem", "imbalance", "augment", "lipnet", "masking", "svm")
SEM_DEPTHS = ("1", "2", "3", "4", "5", "5fc")
AUG_STEPS = (
    ("none", []),
    ("rotation", [dict(type="ClsRandomAffine", rotation=180, border_mode="constant")]),
    ("+shift", [dict(type="ClsRandomAffine", rotation=180, shift=0.1, border_mode="constant")]),
    (
        "+flip",
        [
            dict(type="ClsRandomAffine", rotation=180, shift=0.1, border_mode="constant"),
            dict(type="ClsRandomFlip"),
        ],
    ),
    (
        "+shear",
        [
            dict(type="ClsRandomAffine", rotation=180, shift=0.1, shear=0.2, border_mode="constant"),
            dict(type="ClsRandomFlip"),
        ],
    ),
    (
        "+zoom",
        [
            dict(
                type="ClsRandomAffine",
                rotation=180,
                shift=0.1,
                shear=0.2,
                zoom=(0.8, 1.0),
                border_mode="constant",
            ),
            dict(type="ClsRandomFlip"),
        ],
    ),
)


def _iters(n: int) -> dict:
    return {
        "train_cfg": {"_delete_": True, "type": "IterBasedTrainLoop", "max_iters": n},
        "log_processor.by_epoch": False,
        "default_hooks.logger.interval": 50,
    }


def _pipeline(augs: list[dict]) -> dict:
    return {"train_dataloader.dataset.pipeline": [*augs, dict(type="PackClsInputs")]}


def _crop(**kw: Any) -> dict:
    out = {}
    for dl in ("train_dataloader", "test_dataloader"):
        out.update({f"{dl}.dataset.{k}": v for k, v in kw.items()})
    return out


def runs(
    studies: list[str], iters: int, sem_tile: int, sem_iters: int, sem_depths: tuple[str, ...] = SEM_DEPTHS
) -> list[tuple[str, str, str, str, dict]]:
    """``(study, row, run name, config, cfg_options)`` of every run, studies in the order given."""
    out = []
    for study in studies:
        if study == "sem":
            tile = {"model.input_size": sem_tile, **_crop(tile_size=sem_tile)}
            for depth in sem_depths:
                if depth == "5fc":
                    out.append(
                        (
                            "sem",
                            "CNN5*",
                            "sem_cnn5fc",
                            CFG + "sem-cnn5-fc40_sgd-300it_sartorius-tiles-128.py",
                            {**_iters(sem_iters), **tile},
                        )
                    )
                else:
                    out.append(
                        (
                            "sem",
                            f"CNN{depth}",
                            f"sem_cnn{depth}",
                            CFG + f"sem-cnn{depth}_sgd-300it_sartorius-tiles-128.py",
                            {**_iters(sem_iters), **tile},
                        )
                    )
        elif study == "imbalance":
            for mode in ("none", "oversample", "undersample"):
                out.append(
                    (
                        "imbalance",
                        mode,
                        f"imb_{mode}",
                        LIP4,
                        {**_iters(iters), **_pipeline([]), "train_dataloader.sampler.mode": mode},
                    )
                )
        elif study == "augment":
            for name, augs in AUG_STEPS:
                if name == "none" and "imbalance" in studies:
                    continue  # identical to imbalance/oversample
                out.append(
                    ("augment", name, f"aug_{name.strip('+')}", LIP4, {**_iters(iters), **_pipeline(augs)})
                )
        elif study == "lipnet":
            for v, size in (("1", 28), ("2", 28), ("4", 28), ("4c", 28), ("6", 32)):
                cfg = CFG + f"lipnet-{v}_adam-30e_sartorius-cells-{size}.py"
                out.append(("lipnet", f"LipNet-{v}", f"lipnet_{v}", cfg, _iters(iters)))
        elif study == "masking":
            out.append(
                (
                    "masking",
                    "with surroundings (50 px)",
                    "mask_surround",
                    LIP4,
                    {**_iters(iters), **_crop(margin=50, masked=False)},
                )
            )
            out.append(
                (
                    "masking",
                    "cropped",
                    "mask_cropped",
                    LIP4,
                    {**_iters(iters), **_crop(margin=0, masked=False)},
                )
            )
            out.append(("masking", "cropped and masked", "lipnet_4", LIP4, _iters(iters)))
        elif study == "svm":
            out.append(
                (
                    "svm",
                    "SVM (hand-crafted features)",
                    "svm",
                    CFG + "svm-rbf_hand-features_sartorius-cells.py",
                    {},
                )
            )
    # a run shared by two studies (LipNet-4 default = masking 'cropped and masked') is trained once
    seen: set[str] = set()
    return [r for r in out if not (r[2] in seen or seen.add(r[2]))]


def _row(summary: dict, classes: list[str], keys: tuple[str, ...]) -> str:
    m, s = summary["mean"], summary["std"]
    cells = []
    for key in keys:
        for i in range(len(classes)):
            cells.append(f"{m[key][i]:.2f} ± {s[key][i]:.2f}")
    cells.append(f"{m['accuracy']:.3f} ± {s['accuracy']:.3f}")
    cells.append(f"{m['macro_f1']:.3f} ± {s['macro_f1']:.3f}")
    ia = summary.get("image_accuracy")
    cells.append(f"{ia['mean']:.3f} ± {ia['std']:.3f}" if ia else "-")
    return " | ".join(cells)


def tables(results: dict[str, Any], meta: dict[str, Any]) -> str:
    """Markdown tables in the papers' shapes."""
    studies = {r["study"] for r in results.values()}
    its = []
    if studies - {"sem", "svm"}:
        its.append(f"LipNet: {meta['iters']}")
    if "sem" in studies:
        its.append(f"SEM CNNs: {meta.get('sem_iters')}")
    lines = [
        f"## {meta['label']}: {meta['data_root']}",
        "",
        f"{meta['folds']}-fold CV grouped by sample_id (StratifiedGroupKFold, seed {meta['seed']}), training "
        f"iterations of batch 32 per fold: {', '.join(its) or '-'}; one training seed per fold (seed + fold). "
        f"Samples: {meta.get('samples', {})}.",
        "",
    ]
    by_study: dict[str, list] = {}
    for r in results.values():
        by_study.setdefault(r["study"], []).append(r)
    # runs shared between studies appear in both tables
    if "masking" in by_study and "lipnet_4" in results and results["lipnet_4"]["study"] != "masking":
        by_study["masking"].append(dict(results["lipnet_4"], row="cropped and masked"))
    if "augment" in by_study and "imb_oversample" in results and "aug_none" not in results:
        by_study["augment"].insert(0, dict(results["imb_oversample"], row="none"))
    if "lipnet" in by_study and "lipnet_4" in results and results["lipnet_4"]["study"] != "lipnet":
        by_study["lipnet"].append(dict(results["lipnet_4"], row="LipNet-4"))
    order = {
        "CNN1": 0,
        "CNN2": 1,
        "CNN3": 2,
        "CNN4": 3,
        "CNN5": 4,
        "CNN5*": 5,
        "LipNet-1": 0,
        "LipNet-2": 1,
        "LipNet-4": 2,
        "LipNet-4c": 3,
        "LipNet-6": 4,
    }
    for study in ("sem", "lipnet"):
        if study in by_study:
            by_study[study].sort(key=lambda r: order.get(r["row"], 99))
    for study in STUDIES:
        rows = by_study.get(study)
        if not rows:
            continue
        classes = rows[0]["summary"]["classes"]
        if study == "sem":
            lines += [
                f"### SEM depth ablation (paper Table 3 shape; {meta['sem_tile']}x{meta['sem_tile']} tiles)",
                "",
                "| CNN architecture | Accuracy [%] (tiles) | macro F1 (tiles) | image accuracy [%] (mean of tiles) |",
                "| --- | --- | --- | --- |",
            ]
            for r in rows:
                m, s = r["summary"]["mean"], r["summary"]["std"]
                ia = r["summary"].get("image_accuracy")
                ia_txt = f"{100 * ia['mean']:.1f} ± {100 * ia['std']:.1f}" if ia else "-"
                lines.append(
                    f"| {r['row']} | {100 * m['accuracy']:.1f} ± {100 * s['accuracy']:.1f} "
                    f"| {m['macro_f1']:.3f} ± {s['macro_f1']:.3f} | {ia_txt} |"
                )
            best = [r for r in rows if r["row"] == "CNN5*"]
            if best:
                m = best[0]["summary"]["mean"]
                lines += [
                    "",
                    "CNN5* per class (paper Table 4 shape), fold means:",
                    "",
                    "| class | Precision [%] | Recall [%] | F_score [%] |",
                    "| --- | --- | --- | --- |",
                ]
                for i, c in enumerate(classes):
                    lines.append(
                        f"| {c} | {100 * m['precision'][i]:.1f} | {100 * m['recall'][i]:.1f} "
                        f"| {100 * m['f1'][i]:.1f} |"
                    )
                lines.append(
                    f"| Average | {100 * sum(m['precision']) / len(classes):.1f} "
                    f"| {100 * sum(m['recall']) / len(classes):.1f} | {100 * sum(m['f1']) / len(classes):.1f} |"
                )
            lines.append("")
            continue
        key = ("tpr",) if study in ("augment", "imbalance") else ("f1",)
        title = {
            "imbalance": "LipNet-4, imbalance technique, no augmentation: normalised TPR per class",
            "augment": "LipNet-4 + oversampling, augmentations added cumulatively (report fig. 17 shape): "
            "normalised TPR per class",
            "lipnet": "LipNet variants, oversampling + full augmentation, cropped and masked (report fig. 18 shape): "
            "F1 per class",
            "masking": "LipNet-4 input mode (report figs. 20/21 shape): F1 per class",
            "svm": "SVM on hand-crafted features (report section 8.4): F1 per class",
        }[study]
        lines += [
            f"### {title}",
            "",
            "| setting | "
            + " | ".join(f"{key[0]} {c}" for c in classes)
            + " | accuracy | macro F1 | image accuracy (mean of its cells) |",
            "| --- |" + " --- |" * (len(classes) + 3),
        ]
        for r in rows:
            lines.append(f"| {r['row']} | {_row(r['summary'], classes, key)} |")
        if study == "svm":
            cm = rows[0]["summary"]["confusion_normalized_mean"]
            lines += [
                "",
                f"SVM {meta['folds']}-fold average normalised confusion matrix (report Tables 7/8 shape):",
                "",
                "| true \\ pred | " + " | ".join(classes) + " |",
                "| --- |" + " --- |" * len(classes),
            ]
            for i, c in enumerate(classes):
                lines.append(f"| {c} | " + " | ".join(f"{v:.2f}" for v in cm[i]) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def plot_augment(results: dict[str, Any], out: Path) -> None:
    """Line plot of per-class normalised TPR over the cumulative augmentation steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results.values() if r["study"] == "augment"]
    base = [r for r in results.values() if r["study"] == "imbalance" and r["row"] == "oversample"]
    rows = [dict(b, row="none") for b in base] + rows
    if len(rows) < 2:
        return
    classes = rows[0]["summary"]["classes"]
    fig, ax = plt.subplots(figsize=(5, 3), dpi=120)
    for i, c in enumerate(classes):
        ax.errorbar(
            range(len(rows)),
            [r["summary"]["mean"]["tpr"][i] for r in rows],
            yerr=[r["summary"]["std"]["tpr"][i] for r in rows],
            marker="o",
            capsize=3,
            label=c,
        )
    ax.set_xticks(range(len(rows)), [r["row"] for r in rows])
    ax.set_ylabel("normalised TPR")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "augment_tpr.png")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Run the studies; returns the exit status."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--data-root", required=True, help="prepared Sartorius-layout dataset (tools/prepare_sartorius.py)"
    )
    p.add_argument("--label", default="data", help="name of the dataset in the tables")
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--iters", type=int, default=100, help="training iterations (batch 32) per fold")
    p.add_argument(
        "--sem-iters", type=int, default=100, help="SEM CNN training iterations per fold (paper: 300)"
    )
    p.add_argument("--sem-depths", default=",".join(SEM_DEPTHS), help="SEM CNN depths to run (1..5, 5fc)")
    p.add_argument("--sem-tile", type=int, default=64, help="SEM CNN tile side (paper: 128)")
    p.add_argument("--studies", default=",".join(STUDIES), help=f"comma list of {STUDIES}")
    p.add_argument(
        "--out", required=True, help="output directory (processes may share one; runs done are skipped)"
    )
    p.add_argument(
        "--report-only", action="store_true", help="only re-render results.md and PNGs from results.json"
    )
    p.add_argument("--skip", default="", help="comma list of run names to leave out (e.g. aug_none)")
    args = p.parse_args(argv)
    studies = [s for s in args.studies.split(",") if s]
    bad = set(studies) - set(STUDIES)
    if bad:
        print(f"classifiers.py: error: unknown studies {sorted(bad)}", file=sys.stderr)
        return 2
    from mmengine.config import Config

    from celldata.fileio import atomic_write_json, atomic_write_text
    from custom_modules.cls.cross_validation import cross_validate

    # The Runner formats the whole config with yapf several times per fold (log, dump, visualizer); at this scale
    # that costs more CPU than the training itself. Runs here log the plain dict instead (training is unchanged).
    Config.pretty_text = property(lambda self: pprint.pformat(self.to_dict(), width=110))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "label": args.label,
        "data_root": args.data_root,
        "folds": args.folds,
        "seed": args.seed,
        "iters": args.iters,
        "sem_tile": args.sem_tile,
        "sem_iters": args.sem_iters,
    }
    results_path = out / "results.json"

    def load() -> dict[str, Any]:
        return json.loads(results_path.read_text())["results"] if results_path.exists() else {}

    results = load()
    if args.report_only:
        if not results:
            print(f"classifiers.py: error: no results in {results_path}", file=sys.stderr)
            return 2
        meta = json.loads(results_path.read_text())["meta"]
        atomic_write_text(out / "results.md", tables(results, meta))
        plot_augment(results, out)
        return 0
    skip = {x for x in args.skip.split(",") if x}
    for study, row, name, cfg, opts in runs(
        studies, args.iters, args.sem_tile, args.sem_iters, tuple(args.sem_depths.split(','))
    ):
        results.update(load())  # another process may share this output directory
        if name in results or name in skip:
            continue
        t0 = time.time()
        summary = cross_validate(
            cfg, args.folds, args.seed, out / name, {"data_root": args.data_root, **opts}
        )
        results = load()
        results[name] = {
            "study": study,
            "row": row,
            "config": cfg,
            "cfg_options": opts,
            "summary": summary,
            "seconds": round(time.time() - t0, 1),
        }
        samples = {r["study"]: r["summary"]["n_samples"] for r in results.values()}
        meta["samples"] = samples
        atomic_write_json(results_path, {"meta": meta, "results": results})
        atomic_write_text(out / "results.md", tables(results, meta))
        plot_augment(results, out)
        print(
            f"[classifiers] {name}: acc {summary['mean']['accuracy']:.3f} macro F1 "
            f"{summary['mean']['macro_f1']:.3f} ({time.time() - t0:.0f} s)",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
