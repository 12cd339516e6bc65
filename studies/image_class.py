"""Does ``fusion.image_class: classifier`` beat the detectors' majority vote on a recipe's validation images?

Runs after a vote-mode recipe (``make demo``, or the demo recipe on real images with ``--data-root``) has trained
its detectors on fold K, joined their out-of-fold (validation) predictions and tuned its ensemble. Same split as
the detectors, nothing else retrained:

1. an image-level cell-type classifier is trained on fold K's TRAINING images only (``tools/train.py <config>
   --cfg-options data_root=... fold=K``), then ``tools/classify_images.py`` writes the cell-type probabilities of
   fold K's validation images (``<work_dir>/image_class/<set-up>/cell_type.json``). Default set-up: the SEM
   CNN3 on 64x64 grid tiles, 300 iterations (SGD, the paper's settings) - the best image-tile classifier of
   ``docs/results/classifiers.md`` (92.3 % image accuracy, 2-fold CV on the 26 real images) and the kind
   ``tools/classify_images.py`` supports (image tiles; the instance-crop LipNet needs cell masks per image);
2. per validation image: the true cell type (COCO ``cell_type``), the detectors' score-weighted majority class
   (the ensemble's own rule, read from ``ensemble.masks`` with the tuned weights and parameters), the classifier's
   class and confidence, and the class ``image_class: classifier`` gives at ``--threshold``; accuracies, and the
   accuracy of the classifier rule over a threshold sweep;
3. the competition score of the recipe's tuned ensemble (``<work_dir>/ensemble/ensemble_tuned.yaml``) with
   ``image_class`` majority vs classifier, all else equal (in-sample: its parameters were tuned on these images
   with ``majority``), of the starting config (nothing fitted), and the held-out score of tuning from the starting
   config with ``image_class`` fixed to each (``ensemble.tune.cross_validate``, ``--cv`` parts grouped by
   sample_id, the recipe's tuning settings). "A beats B" is read from the held-out column;
4. ``<work_dir>/study_image_class<suffix>.json`` and ``.md``; the tables are printed.

Run (heavy steps are one process at a time; ``OMP_NUM_THREADS=1`` recommended)::

    python studies/image_class.py --work-dir work_dirs/demo                     # data in <work_dir>/data
    python studies/image_class.py --work-dir work_dirs/demo_real --data-root REAL_COPY --label real

A finished classifier training (same command) is reused; ``--retrain`` forces it. Missing inputs (prediction
files, tuned config, fold annotations, config) stop the run with an error naming the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from celldata import CLASSES
from celldata.fileio import atomic_write_json, atomic_write_text
from ensemble.config import EnsembleConfig, load_config
from ensemble.image_class import classifier_label, read_class_probabilities
from ensemble.masks import FusionParams
from ensemble.masks import _prepare as prepare_image  # the image-class step of fuse_image
from ensemble.pipeline import FuseState, common_image_ids, load_models
from ensemble.submission import load_truth, read_sample_ids
from ensemble.tune import Tuner, cross_validate, tune
from workflow.execution import LogContext, tool_env

REPO = Path(__file__).resolve().parents[1]

DEFAULT_CONFIG = "configs/classifiers/sem-cnn3_sgd-300it_sartorius-tiles-128.py"
SWEEP = (0.0, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def _need(path: Path, what: str) -> Path:
    """``path`` if it is a file, else a FileNotFoundError naming it and what it is."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


@dataclasses.dataclass
class Inputs:
    """The files of one study (all checked to exist by :func:`find_inputs`)."""

    work_dir: Path
    data_root: Path
    fold: int
    train_json: Path
    val_json: Path
    tuned: Path
    start: Path
    oof_dir: Path
    classifier_config: Path


def find_inputs(work_dir: Path, data_root: Path | None, fold: int, classifier_config: Path) -> Inputs:
    """Locate and check every input.

    Raises:
        FileNotFoundError: a missing file or folder (named in the message).
    """
    if not work_dir.is_dir():
        raise FileNotFoundError(f"recipe work dir not found: {work_dir}")
    root = data_root if data_root is not None else work_dir / "data"
    if not root.is_dir():
        raise FileNotFoundError(
            f"data root not found: {root} (pass --data-root for a recipe run on real data)"
        )
    ann = root / "annotations"
    oof = work_dir / "predictions" / "oof"
    inputs = Inputs(
        work_dir,
        root,
        fold,
        _need(ann / f"fold{fold}_train.json", f"fold {fold} training annotations"),
        _need(ann / f"fold{fold}_val.json", f"fold {fold} validation annotations"),
        _need(work_dir / "ensemble" / "ensemble_tuned.yaml", "tuned ensemble config (recipe stage 'tune')"),
        _need(work_dir / "ensemble" / "ensemble.yaml", "starting ensemble config (recipe stage 'tune')"),
        oof,
        _need(classifier_config, "classifier config"),
    )
    for m in load_config(inputs.tuned).models:
        _need(oof / Path(m.predictions).name, f"out-of-fold prediction file of member '{m.name}'")
    return inputs


def _retarget(config: EnsembleConfig, oof_dir: Path) -> EnsembleConfig:
    """The config reading its prediction files from ``oof_dir`` (the work dir may come from another checkout)."""
    return config.with_predictions_dir(oof_dir, "{file}")


# ----------------------------------------------------------------------------------------------------------------
# 1. classifier
# ----------------------------------------------------------------------------------------------------------------
def classifier_options(inp: Inputs, tile: int, iters: int | None, seed: int) -> list[str]:
    """``--cfg-options`` of the classifier: fold K of the data root, tile side, iterations, no validation."""
    opts = [
        f"data_root={inp.data_root}/",
        f"fold={inp.fold}",
        f"model.input_size={tile}",
        f"randomness.seed={seed}",
        "train_cfg.val_interval=1000000",
    ]
    for dl in ("train_dataloader", "val_dataloader", "test_dataloader"):
        opts.append(f"{dl}.dataset.tile_size={tile}")
    if iters is not None:
        opts.append(f"train_cfg.max_iters={iters}")
    return opts


def config_iters(config: Path) -> int | None:
    """``train_cfg.max_iters`` of a classifier config (None when it trains by epochs)."""
    from custom_modules.config import load_config

    return load_config(config).train_cfg.get("max_iters")


def _run(cmd: Sequence[str], log: Path) -> None:
    """Runs a tool from the repository root with its output appended to ``log`` (the recipe runner's way)."""
    ctx = LogContext(log, verbose=False, env=tool_env(), cwd=REPO)
    try:
        ctx.run(list(cmd))
    finally:
        ctx.close()


def train_and_classify(
    inp: Inputs, out_dir: Path, tile: int, iters: int | None, seed: int, retrain: bool, python: str
) -> tuple[Path, Path, dict[str, Any]]:
    """Train the classifier on fold K's training images (or reuse an identical finished run), then classify fold
    K's validation images.

    Returns:
        ``(checkpoint, probability file, record)``; the record holds the commands and the training time.
    """
    opts = classifier_options(inp, tile, iters, seed)
    train_dir = out_dir / f"{inp.classifier_config.stem}_tile{tile}_iters{iters or 'cfg'}_seed{seed}"
    train_cmd = [python, "tools/train.py", str(inp.classifier_config), "--work-dir", str(train_dir)]
    train_cmd += ["--cfg-options", *opts]
    stamp = train_dir / "study_stamp.json"
    log = out_dir / "study_image_class.log"
    ckpt_file = train_dir / "last_checkpoint"
    record: dict[str, Any] = {"train_command": train_cmd}
    done = (
        not retrain
        and stamp.is_file()
        and json.loads(stamp.read_text()).get("command") == train_cmd
        and ckpt_file.is_file()
    )
    if done:
        record["train_seconds"] = json.loads(stamp.read_text()).get("seconds")
        record["reused"] = True
    else:
        t0 = time.perf_counter()
        _run(train_cmd, log)
        record["train_seconds"] = round(time.perf_counter() - t0, 1)
        atomic_write_json(stamp, {"command": train_cmd, "seconds": record["train_seconds"]})
    ckpt = Path(_need(ckpt_file, "classifier last_checkpoint").read_text().strip())
    _need(ckpt, "classifier checkpoint")
    probs = train_dir / "cell_type.json"
    cls_cmd = [python, "tools/classify_images.py", str(inp.classifier_config), str(ckpt), "--images",
               str(inp.val_json), "--data-root", str(inp.data_root), "--out", str(probs), "--cfg-options",
               *opts]  # fmt: skip
    _run(cls_cmd, log)
    record["classify_command"] = cls_cmd
    return ckpt, probs, record


# ----------------------------------------------------------------------------------------------------------------
# 2. per-image classes
# ----------------------------------------------------------------------------------------------------------------
def ensemble_image_class(
    state: FuseState, image_id: str, weights: Sequence[float], params: FusionParams
) -> int | None:
    """The class ``fuse_image`` gives every detection of an image under ``params.image_class`` (majority or
    classifier): the first step of the ensemble's own fusion (:func:`ensemble.masks._prepare`), not a copy of it.

    Returns:
        The one label all the image's detections carry after that step; ``None`` when it has no detections or
        they keep differing labels (none of them votes, so the ensemble leaves the labels as predicted).
    """
    prep = prepare_image(
        [m[image_id] for m in state.models],
        weights,
        params,
        state.semantic_weights,
        [r.boxes for r in state.roles],
    )
    labels = [lab for lab in prep.labels if len(lab)]
    if not labels or params.image_class not in ("majority", "classifier"):
        return None
    first = np.concatenate(labels)
    if (first != first[0]).any():
        # no voting detection: fuse_image keeps the labels as predicted (no single class)
        return None
    return int(first[0])


def per_image_rows(
    state: FuseState,
    ids: Sequence[str],
    cell_types: dict[str, str],
    weights: Sequence[float],
    params: FusionParams,
    probs_path: Path,
    threshold: float,
) -> list[dict[str, Any]]:
    """One row per validation image: truth, majority, classifier (class, confidence), the rule's pick."""
    prob_classes, probs = read_class_probabilities(probs_path)
    maj_params = dataclasses.replace(params, image_class="majority")
    cls_params = dataclasses.replace(
        params, image_class="classifier", class_probabilities=str(probs_path), classifier_threshold=threshold
    )
    rows = []
    for k in ids:
        maj = ensemble_image_class(state, k, weights, maj_params)
        pick = ensemble_image_class(state, k, weights, cls_params)
        p = probs.get(k)
        if p is None:
            raise ValueError(f"{probs_path}: no probabilities for validation image {k}")
        top = int(np.argmax(p))
        expected, from_cls = classifier_label(p, prob_classes, maj, threshold)
        if expected != pick:
            raise AssertionError(f"image {k}: fuse_image picked {pick}, classifier_label {expected}")
        rows.append(
            {
                "image_id": k,
                "true": cell_types.get(k),
                "majority": CLASSES[maj] if maj is not None else None,
                "classifier": prob_classes[top],
                "confidence": round(float(p[top]), 4),
                "probabilities": {c: round(float(v), 4) for c, v in zip(prob_classes, p)},
                "picked": CLASSES[pick] if pick is not None else None,
                "picked_from": "classifier" if from_cls else "majority",
            }
        )
    return rows


def accuracy(rows: Sequence[dict[str, Any]], key: str) -> float:
    """Fraction of rows whose ``key`` equals the true class."""
    return float(np.mean([r[key] == r["true"] for r in rows]))


def threshold_sweep(
    rows: Sequence[dict[str, Any]], thresholds: Sequence[float] = SWEEP
) -> list[dict[str, float]]:
    """Accuracy of the classifier rule (:func:`classifier_label`) at each threshold, from the rows' classes."""
    out = []
    for t in thresholds:
        picks = [r["classifier"] if r["confidence"] >= t else r["majority"] for r in rows]
        n_cls = sum(r["confidence"] >= t for r in rows)
        acc = float(np.mean([p == r["true"] for p, r in zip(picks, rows)]))
        out.append({"threshold": t, "accuracy": round(acc, 4), "n_from_classifier": int(n_cls)})
    return out


# ----------------------------------------------------------------------------------------------------------------
# 3. competition scores
# ----------------------------------------------------------------------------------------------------------------
def scores(
    tuner: Tuner,
    tuned: EnsembleConfig,
    start: EnsembleConfig,
    probs_path: Path,
    threshold: float,
    groups: dict[str, str],
    cv: int,
    tune_kwargs: dict[str, Any],
) -> dict[str, Any]:
    """Score rows: tuned config (in-sample), starting config (nothing fitted), tuned from the start with each
    ``image_class`` (in-sample) and its K-fold held-out score; per image for the tuned config."""

    def rule(params: FusionParams, name: str) -> FusionParams:
        if name == "majority":
            return dataclasses.replace(params, image_class="majority")
        return dataclasses.replace(
            params,
            image_class="classifier",
            class_probabilities=str(probs_path),
            classifier_threshold=threshold,
        )

    out: dict[str, Any] = {"per_image_tuned": {}}
    for name in ("majority", "classifier"):
        row: dict[str, Any] = {}
        p_tuned = rule(tuned.fusion, name)
        row["tuned_in_sample"] = tuner.score(tuned.weights, p_tuned)
        out["per_image_tuned"][name] = dict(
            zip(tuner.ids, tuner.image_scores(tuned.weights, p_tuned).tolist())
        )
        p_start = rule(start.fusion, name)
        row["start"] = tuner.score(start.weights, p_start)
        if cv:
            t0 = time.perf_counter()
            res = tune(tuner, start.weights, p_start, **tune_kwargs)
            row["retuned_in_sample"] = res.score
            c = cross_validate(tuner, start.weights, p_start, groups, cv, **tune_kwargs)
            row["held_out"] = c.score_held_out
            row["cv_folds"] = c.folds
            row["tune_seconds"] = round(time.perf_counter() - t0, 1)
        out[name] = row
    return out


# ----------------------------------------------------------------------------------------------------------------
# 4. report
# ----------------------------------------------------------------------------------------------------------------
def _f(v: Any, nd: int = 4) -> str:
    return "-" if v is None else f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def markdown(res: dict[str, Any]) -> str:
    """The study's tables."""
    rows, m = res["images"], res["meta"]
    n = len(rows)
    acc = res["accuracy"]
    lines = [
        f"## {m['label']}: `image_class` classifier vs the detectors' majority on {n} validation images (fold "
        f"{m['fold']})",
        "",
        f"Work dir `{m['work_dir']}`, data root `{m['data_root']}`; classifier `{m['classifier_config']}` "
        f"({m['tile']}x{m['tile']} grid tiles, {m['iters']} iterations, seed {m['seed']}) trained on the "
        f"{m['n_train_images']} fold-{m['fold']} training images (the detectors' split); threshold "
        f"{m['threshold']}. Majority = the ensemble's score-weighted vote of the tuned config's box models.",
        "",
        "| image | true | majority | classifier (confidence) | picked (from) | score: majority | score: classifier |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    per = res["scores"]["per_image_tuned"]
    for r in rows:
        k = r["image_id"]
        lines.append(
            f"| {k} | {r['true']} | {r['majority']} | {r['classifier']} ({r['confidence']:.3f}) | "
            f"{r['picked']} ({r['picked_from']}) | {per['majority'][k]:.4f} | {per['classifier'][k]:.4f} |"
        )
    lines += ["", "(per-image scores: the recipe's tuned config with each rule, in-sample)"]
    lines += [
        "",
        f"Image accuracy (n = {n}): majority {acc['majority']:.3f}, classifier alone {acc['classifier']:.3f}, "
        f"`image_class: classifier` at threshold {m['threshold']} {acc['picked']:.3f} "
        f"({acc['n_from_classifier']} images decided by the classifier).",
        "",
        "Classifier rule by threshold (accuracy; images decided by the classifier): "
        + ", ".join(
            f"{s['threshold']}: {s['accuracy']:.3f} ({s['n_from_classifier']})" for s in res["sweep"]
        ),
        "",
        "| competition score | majority | classifier |",
        "| --- | --- | --- |",
    ]
    sc = res["scores"]
    labels = [
        ("start", "starting config, nothing fitted"),
        ("tuned_in_sample", "recipe's tuned config (in-sample; tuned with majority)"),
        ("retuned_in_sample", "tuned from the start with this rule (in-sample)"),
        ("held_out", f"same, held-out ({m['cv']}-fold CV grouped by sample_id)"),
    ]
    for key, text in labels:
        if key in sc["majority"]:
            lines.append(f"| {text} | {_f(sc['majority'][key])} | {_f(sc['classifier'][key])} |")
    if m.get("recipe_held_out") is not None:
        lines += ["", f"The recipe's own held-out score of its tuned ensemble: {m['recipe_held_out']:.4f}."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2: missing or invalid input)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--work-dir", type=Path, required=True, help="recipe work dir (detectors trained on --fold)"
    )
    p.add_argument("--data-root", type=Path, help="prepared data root (default: <work_dir>/data)")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--label", default=None, help="name of the data in the report (default: work dir name)")
    p.add_argument("--classifier-config", type=Path, default=Path(DEFAULT_CONFIG))
    p.add_argument("--tile", type=int, default=64, help="tile side (classifier input; paper 128)")
    p.add_argument("--iters", type=int, default=None, help="training iterations (default: the config's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threshold", type=float, default=FusionParams().classifier_threshold)
    p.add_argument("--cv", type=int, default=3, help="held-out parts (0: no re-tuning)")
    p.add_argument("--rounds", type=int, default=2, help="coordinate-search rounds (the demo recipe's 2)")
    p.add_argument("--workers", type=int, default=1, help="fusion processes of the scoring (same results)")
    p.add_argument("--retrain", action="store_true")
    p.add_argument(
        "--suffix", default="", help="name suffix of the outputs (a second set-up beside the first)"
    )
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    os.chdir(REPO)
    try:
        cfg_path = args.classifier_config
        cfg_path = cfg_path if cfg_path.is_absolute() else REPO / cfg_path
        inp = find_inputs(
            args.work_dir.resolve(), args.data_root and args.data_root.resolve(), args.fold, cfg_path
        )
        out_dir = inp.work_dir / "image_class"
        tuned = _retarget(load_config(inp.tuned), inp.oof_dir)
        start = _retarget(load_config(inp.start), inp.oof_dir)
        if tuned.fusion.mode != "vote":
            raise ValueError(
                f"{inp.tuned}: fusion.mode {tuned.fusion.mode!r}; this study needs a vote ensemble"
            )
        models = load_models(tuned.models)
        ids = common_image_ids(models, [m.name for m in tuned.models])
        truth, cell_types = load_truth(inp.val_json)
        missing = [k for k in ids if k not in truth]
        if missing:
            raise ValueError(
                f"{inp.val_json}: {len(missing)} predicted image(s) not in fold {inp.fold}, {missing[:3]}"
            )
        n_train = len(json.loads(inp.train_json.read_text())["images"])
        ckpt, probs_path, record = train_and_classify(
            inp, out_dir, args.tile, args.iters, args.seed, args.retrain, sys.executable
        )
        state = FuseState.from_config(tuned, models)
        rows = per_image_rows(state, ids, cell_types, tuned.weights, tuned.fusion, probs_path, args.threshold)
        record_tuning = (tuned.tuning or {}) if isinstance(tuned.tuning, dict) else {}
        tune_kwargs = {"method": record_tuning.get("method", "coord"), "rounds": args.rounds, "seed": 0}
        same = [m.predictions for m in start.models] == [m.predictions for m in tuned.models]
        start_models = models if same else load_models(start.models)
        tuner = Tuner(FuseState.from_config(start, start_models), truth, ids, workers=args.workers)
        try:
            sc = scores(
                tuner,
                tuned,
                start,
                probs_path,
                args.threshold,
                read_sample_ids(inp.val_json),
                args.cv,
                tune_kwargs,
            )
        finally:
            tuner.close()
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"image_class.py: error: {e}", file=sys.stderr)
        return 2
    acc = {
        "majority": accuracy(rows, "majority"),
        "classifier": accuracy(rows, "classifier"),
        "picked": accuracy(rows, "picked"),
        "n_from_classifier": sum(r["picked_from"] == "classifier" for r in rows),
    }
    heldout_json = inp.work_dir / "ensemble" / "ensemble_heldout.json"
    res = {
        "meta": {
            "label": args.label or inp.work_dir.name,
            "work_dir": str(inp.work_dir),
            "data_root": str(inp.data_root),
            "fold": inp.fold,
            "n_images": len(rows),
            "n_train_images": n_train,
            "classifier_config": str(cfg_path.relative_to(REPO))
            if cfg_path.is_relative_to(REPO)
            else str(cfg_path),
            "checkpoint": str(ckpt),
            "probabilities": str(probs_path),
            "tile": args.tile,
            "iters": args.iters or config_iters(cfg_path),
            "seed": args.seed,
            "threshold": args.threshold,
            "cv": args.cv,
            "tune": tune_kwargs,
            "recipe_held_out": (
                json.loads(heldout_json.read_text()).get("score_held_out") if heldout_json.is_file() else None
            ),
            "seconds": round(time.perf_counter() - t0, 1),
            **record,
        },
        "accuracy": acc,
        "sweep": threshold_sweep(rows),
        "images": rows,
        "scores": sc,
    }
    md = markdown(res)
    out = inp.work_dir / f"study_image_class{args.suffix}"
    atomic_write_json(out.with_suffix(".json"), res, indent=2)
    atomic_write_text(out.with_suffix(".md"), md)
    print(md)
    print(f"wrote {out}.json and .md in {res['meta']['seconds']}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
