"""Held-out comparison on TRAINED models: each member alone vs the vote ensemble vs the box-first ensemble.

Runs after a vote-mode recipe has trained its models and tuned its vote ensemble (``make demo``, or the demo
recipe on real images with ``--data-root``). On the same checkpoints it adds the box-first path with the recipe's
own steps, in the same work dir (their step ids ``oof/fused_boxes/...`` and ``oof/<model>_on_boxes/...`` do not
clash with the vote steps, and nothing is retrained):

1. ``python -m ensemble.fuse_boxes`` over the box models' out-of-fold predictions of each trained fold, then every
   instance model's mask head on the fused boxes (``tools/infer.py --mask-head-on``), folds joined;
2. the box-first ensemble (and its mask model alone on the fused boxes) tuned with the recipe's tuning settings
   (``python -m ensemble.tune --cv K``, folds grouped by sample_id) into ``<work_dir>/ensemble/box_first*``;
3. the table: for every row the score with the starting parameters (nothing fitted), the in-sample score of the
   parameters tuned on all out-of-fold images, and the held-out (cross-validated) score. "A beats B" is read from
   the held-out column.

Run::

    python studies/ensemble_trained.py configs/recipes/demo_cpu.yaml
    python studies/ensemble_trained.py configs/recipes/demo_cpu.yaml --data-root REAL_COPY \\
        --work-dir work_dirs/demo_real

Writes ``<work_dir>/study_trained.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import yaml

from celldata.fileio import atomic_write_json, atomic_write_text
from workflow.execution import LogContext, tool_env
from workflow.recipe import steps as S
from workflow.recipe.config import REPO, load_recipe
from workflow.recipe.plan import build_plan
from workflow.recipe.runner import run_plan


def _row(ens_dir: Path, run: str) -> dict:
    """Scores of one tuned run from its held-out report and tuning record."""
    held = ens_dir / f"{run}_heldout.json"
    tuned = ens_dir / f"{run}_tuned.yaml"
    row: dict = {"run": run}
    if held.is_file():
        h = json.loads(held.read_text())
        row.update(
            untuned=h.get("score_start"),
            in_sample=h.get("score_in_sample"),
            held_out=h.get("score_held_out"),
            k=h.get("k"),
            n_images=h.get("n_images"),
        )
    elif tuned.is_file():
        rec = (yaml.safe_load(tuned.read_text()) or {}).get("tuning") or {}
        row.update(untuned=rec.get("score_start"), in_sample=rec.get("score_in_sample"), held_out=None)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("recipe", help="the vote-mode recipe that trained the models")
    ap.add_argument("--work-dir", default=None, help="its work dir (default: the recipe's)")
    ap.add_argument("--data-root", default=None, help="as given to run_recipe.py")
    ap.add_argument("--label", default=None, help="data label in the table (default: the work dir's name)")
    args = ap.parse_args(argv)

    recipe = load_recipe(args.recipe)
    if recipe.ensemble.mode != "vote":
        ap.error(
            f"{args.recipe}: expected a vote-mode recipe (its models and vote ensemble are the baseline)"
        )
    if not [m for m in recipe.models if m.role == "instance"]:
        ap.error(f"{args.recipe}: box-first needs an instance (mask) model")
    bf = dataclasses.replace(recipe, ensemble=dataclasses.replace(recipe.ensemble, mode="box_first"))
    vote_plan = build_plan(recipe, args.work_dir, args.data_root, python=sys.executable)
    plan = build_plan(bf, args.work_dir, args.data_root, python=sys.executable)
    W, R = plan.work_dir, plan.data_root
    E = W / "ensemble"
    if not (E / "ensemble_tuned.yaml").is_file():
        ap.error(f"{E / 'ensemble_tuned.yaml'} missing: run the recipe first ({args.recipe})")

    t0 = time.perf_counter()
    vote_ids = {s.id for s in vote_plan.steps}
    new = [s.id for s in plan.steps if s.stage == "oof" and s.id not in vote_ids]
    print(f"box-first out-of-fold steps on the trained checkpoints: {', '.join(new)}", flush=True)
    run_plan(plan, only=new)
    oof = {n: W / "predictions" / "oof" / f"{n}_val.npz" for n, _, _ in bf.members()}
    ctx = LogContext(W / "logs" / "study_trained.log", verbose=False, env=tool_env(), cwd=REPO)
    runs = [(f"single_{n}_bf", {n: oof[n]}) for n, kind, _ in bf.members() if kind == "instance"]
    runs.append(("box_first", oof))
    # the vote ensemble with per-instance labels (image_class: per_instance) beside the recipe's majority rule
    per_inst = dataclasses.replace(
        recipe,
        ensemble=dataclasses.replace(
            recipe.ensemble, fusion={**recipe.ensemble.fusion, "image_class": "per_instance"}
        ),
    )
    vote_files = {n: W / "predictions" / "oof" / f"{n}_val.npz" for n, _, _ in recipe.members()}
    todo = [(bf, name, files) for name, files in runs] + [(per_inst, "vote_per_instance", vote_files)]
    for rec, name, files in todo:
        if (E / f"{name}_tuned_score.json").is_file():
            print(f"tune {name}: done before, kept", flush=True)
            continue
        t = time.perf_counter()
        print(f"tune {name} ({', '.join(files)}) ...", flush=True)
        S.Tune(rec, name, files, R / "train.csv", R, E, sys.executable)(ctx)
        print(f"tune {name}: {time.perf_counter() - t:.0f} s", flush=True)

    rows = []
    for n, kind, _ in recipe.members():
        if kind == "instance":
            rows.append({**_row(E, f"single_{n}"), "setup": f"{n} alone", "mode": "single"})
    for n, kind, _ in bf.members():
        if kind == "instance":
            rows.append({**_row(E, f"single_{n}_bf"), "setup": f"{n} alone (fused boxes)", "mode": "single"})
    members = ", ".join(n for n, _, _ in recipe.members())
    rows.append({**_row(E, "ensemble"), "setup": f"vote ({members}), majority class", "mode": "vote"})
    rows.append({**_row(E, "vote_per_instance"), "setup": "vote, per-instance class", "mode": "vote"})
    bf_members = ", ".join(n for n, _, _ in bf.members())
    rows.append({**_row(E, "box_first"), "setup": f"box-first ({bf_members})", "mode": "box_first"})

    label = args.label or W.name
    tune = recipe.ensemble.tune
    n_img = next((r.get("n_images") for r in rows if r.get("n_images")), None)
    head = (
        f"Data: {label} ({R}), out-of-fold images of folds {recipe.trained_folds()}: {n_img} images; one training "
        f"run per model (the recipe's seeds). Tuning: {tune.method}, {tune.rounds} rounds; held-out = {tune.cv}-fold "
        "cross-validation grouped by sample_id (tuned on K-1 parts, scored on the held-out part); in-sample = "
        "parameters tuned on all these images, scored on them. Competition score (mean AP over IoU 0.5-0.95)."
    )
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    lines = [
        f"# Trained models: single vs vote vs box-first ({label})",
        "",
        head,
        "",
        "| setup | untuned | in-sample | held-out |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {r['setup']} | {fmt(r.get('untuned'))} | {fmt(r.get('in_sample'))} | {fmt(r.get('held_out'))} |"
              for r in rows]  # fmt: skip
    best_single = max((r for r in rows if r["mode"] == "single" and r.get("held_out") is not None),
                      key=lambda r: r["held_out"], default=None)  # fmt: skip
    for r in rows:
        if r["mode"] != "single" and best_single and r.get("held_out") is not None:
            verdict = "beats" if r["held_out"] > best_single["held_out"] else "does not beat"
            lines.append(
                f"\n{r['setup']} {verdict} the best single row ({best_single['setup']}) held-out: "
                f"{r['held_out']:.4f} vs {best_single['held_out']:.4f}."
            )
    out = {"label": label, "work_dir": str(W), "data_root": str(R), "rows": rows, "note": head,
           "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    atomic_write_json(W / "study_trained.json", out, indent=2)
    atomic_write_text(W / "study_trained.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
