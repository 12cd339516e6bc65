"""``summary.md`` / ``summary.json`` and plots of a recipe run.

Collected from the files the steps wrote: step times (stamps), each member alone on the out-of-fold images
(starting parameters: nothing fitted there), the tuned ensembles (in-sample on the out-of-fold images, and the
held-out cross-validated score when ``ensemble.tune --cv`` reported one), each model's stated minimum, the
submission. Plots: score per class and per IoU threshold for every member and ensemble, held-out vs in-sample.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from celldata.fileio import atomic_write_json, atomic_write_text
from workflow.recipe.config import REPO, Recipe

__all__ = ["collect", "write_summary"]


def _load(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def _score_of(report: dict | None) -> float | None:
    if report is None:
        return None
    v = report.get("score")
    return float(v) if isinstance(v, (int, float)) else None


def _heldout_score(rep: dict | None) -> float | None:
    """The held-out score of ``<run>_heldout.json`` (the ``tuning.cv`` record of ``ensemble.tune --cv``)."""
    v = (rep or {}).get("score_held_out")
    return float(v) if isinstance(v, (int, float)) else None


def _stamps(work_dir: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    d = work_dir / ".stamps"
    if d.is_dir():
        for p in sorted(d.glob("*.json")):
            s = _load(p) or {}
            if "id" in s:
                out[s["id"]] = float(s.get("seconds", 0.0))
    return out


def collect(recipe: Recipe, work_dir: Path, data_root: Path) -> dict[str, Any]:
    """Everything the summary shows, as a JSON-able dict."""
    E, S = work_dir / "ensemble", work_dir / "scores"
    members: list[dict[str, Any]] = []
    for name, kind, weight in recipe.members():
        base = name.removesuffix("_masks").removesuffix("_on_boxes")
        model = next((m for m in recipe.models if m.name == base), None)
        row: dict[str, Any] = {"name": name, "kind": kind, "weight": weight, "model": base}
        if kind == "semantic":
            rep = _load(S / f"{name}_fgiou.json")
            row["metric"] = "fgIoU"
            row["value"] = rep.get("fg_iou") if rep else None
        else:
            rep = _load(S / f"{name}_score.json")
            row["metric"] = "competition score"
            row["value"] = _score_of(rep)
            row["per_class"] = (rep or {}).get("per_class")
            row["per_threshold"] = (rep or {}).get("per_threshold")
        row["n_images"] = (rep or {}).get("n_images")
        row["min"] = (
            model.min_score
            if model is not None and name in (base, f"{base}_masks", f"{base}_on_boxes")
            else None
        )
        if row["min"] is not None and row["value"] is not None:
            row["passes_min"] = bool(row["value"] >= row["min"])
        members.append(row)
    ensembles: list[dict[str, Any]] = []
    for p in sorted(E.glob("*_tuned.yaml")):
        run = p.name.removesuffix("_tuned.yaml")
        start, tuned = _load(E / f"{run}_score.json"), _load(E / f"{run}_tuned_score.json")
        held = _load(E / f"{run}_heldout.json")
        ensembles.append(
            {
                "name": run,
                "start_score": _score_of(start),
                "tuned_in_sample": _score_of(tuned),
                "tuned_held_out": _heldout_score(held),
                "per_class": (tuned or {}).get("per_class"),
                "per_threshold": (tuned or {}).get("per_threshold"),
                "n_images": (tuned or {}).get("n_images"),
            }
        )
    times = _stamps(work_dir)
    stages: dict[str, float] = {}
    for sid, secs in times.items():
        stages[sid.split("/")[0]] = stages.get(sid.split("/")[0], 0.0) + secs
    sub = Path(recipe.outputs.submission or work_dir / "submission.csv")
    sub = sub if sub.is_absolute() else REPO / sub
    out = {
        "recipe": recipe.name,
        "source": recipe.source,
        "work_dir": str(work_dir),
        "data_root": str(data_root),
        "folds": recipe.data.folds,
        "trained_folds": recipe.trained_folds(),
        "ensemble_mode": recipe.ensemble.mode,
        "members": members,
        "ensembles": ensembles,
        "step_seconds": times,
        "stage_seconds": {k: round(v, 1) for k, v in stages.items()},
        "total_seconds": round(sum(times.values()), 1),
        "submission": str(sub) if sub.is_file() else None,
        "all_models_pass": all(m.get("passes_min", True) for m in members),
    }
    singles = [e for e in ensembles if e["name"].startswith("single_")]
    ens = next((e for e in ensembles if e["name"] == "ensemble"), None)
    if ens is not None and singles:
        key = "tuned_held_out" if ens["tuned_held_out"] is not None and all(
            s["tuned_held_out"] is not None for s in singles) else None  # fmt: skip
        if key is not None:
            best = max(singles, key=lambda e: e[key])
            out["verdict"] = {
                "basis": "held-out",
                "ensemble": ens[key],
                "best_single": best["name"],
                "best_single_score": best[key],
                "ensemble_beats_best_single": ens[key] > best[key],
            }
        else:
            out["verdict"] = {"basis": "none", "note": "no held-out scores (tune.cv: 0); no claim"}
    out["pretrained_starts"] = _pretrained_starts(work_dir)
    return out


def _pretrained_starts(work_dir: Path) -> list[dict[str, Any]]:
    """The ``pretrained_start.json`` of every training that started from another task's checkpoint
    (:class:`custom_modules.checkpoints.PretrainedStartHook`): counts and every key not loaded."""
    out = []
    for p in sorted(Path(work_dir).glob("*/*/*/pretrained_start.json")):
        rep = _load(p)
        if rep is None:
            continue
        out.append(
            {
                "run": str(p.parent.relative_to(work_dir)),
                "load_from": rep.get("load_from"),
                "counts": rep.get("counts", {}),
                "reinitialized": rep.get("reinitialized", []),
                "unexpected": rep.get("unexpected", []),
                "missing": rep.get("missing", []),
                "mismatched": rep.get("mismatched", []),
            }
        )
    return out


def _fmt(v: Any, nd: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def _markdown(s: dict[str, Any]) -> str:
    n_oof = next((m["n_images"] for m in s["members"] if m.get("n_images")), None)
    lines = [
        f"# Recipe `{s['recipe']}` summary",
        "",
        f"Data `{s['data_root']}`, {s['folds']} folds, trained folds {s['trained_folds']}; "
        f"out-of-fold images: {n_oof if n_oof is not None else '-'}. Ensemble mode `{s['ensemble_mode']}`.",
        "",
        "## Models alone (out-of-fold images, starting parameters: nothing fitted on these images)",
        "",
        "| member | kind | metric | value | stated minimum | passes |",
        "|---|---|---|---:|---:|:---:|",
    ]
    for m in s["members"]:
        ok = {True: "yes", False: "**NO**"}.get(m.get("passes_min"), "-")
        lines.append(
            f"| {m['name']} | {m['kind']} | {m['metric']} | {_fmt(m['value'])} | {_fmt(m['min'], 2)} | {ok} |"
        )
    lines += [
        "",
        "## Tuned on the out-of-fold images",
        "",
        "`in-sample`: tuned and scored on the same images (optimistic). `held-out`: each part scored with "
        "parameters tuned on the other parts (ensemble.tune --cv).",
        "",
        "| run | start score | tuned, in-sample | tuned, held-out |",
        "|---|---:|---:|---:|",
    ]
    for e in s["ensembles"]:
        lines.append(
            f"| {e['name']} | {_fmt(e['start_score'])} | {_fmt(e['tuned_in_sample'])} | {_fmt(e['tuned_held_out'])} |"
        )
    v = s.get("verdict")
    if v:
        if v["basis"] == "held-out":
            word = "beats" if v["ensemble_beats_best_single"] else "does not beat"
            lines += ["", f"Held-out: the tuned ensemble ({v['ensemble']:.4f}) {word} the best tuned single "
                      f"model ({v['best_single']}: {v['best_single_score']:.4f})."]  # fmt: skip
        else:
            lines += ["", f"No held-out comparison: {v['note']}."]
    lines += ["", "## Time per stage", "", "| stage | seconds |", "|---|---:|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in s["stage_seconds"].items()]
    lines += [f"| **total** | {s['total_seconds']:.0f} |", ""]
    starts = s.get("pretrained_starts") or []
    if starts:
        lines += ["## Pretrained starts (keys not loaded from load_from)", ""]
        lines += ["| run | loaded | re-initialized (class-dependent) | unexpected (skipped) | missing | mismatched |",
                  "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
        for r in starts:
            c = r["counts"]
            lines.append(
                f"| {r['run']} | {c.get('loaded', 0)} | {c.get('reinitialized', 0)} | {c.get('unexpected', 0)} "
                f"| {c.get('missing', 0)} | {c.get('mismatched', 0)} |"
            )
        first = starts[0]
        lines += [
            "",
            f"Re-initialized in `{first['run']}`: " + ", ".join(f"`{k}`" for k in first["reinitialized"]),
        ]
        skipped = sorted({k for r in starts for k in r["unexpected"]})
        if skipped:
            lines.append(f"Skipped checkpoint keys: {', '.join(f'`{k}`' for k in skipped[:20])}"
                         + (f" ... ({len(skipped)} in all; pretrained_start.json lists them)" if len(skipped) > 20 else ""))  # fmt: skip
        lines.append("")
    if s.get("submission"):
        lines.append(f"Submission: `{s['submission']}`.")
    if not s["all_models_pass"]:
        lines.append("**At least one model is below its stated minimum.**")
    if s.get("plots"):
        lines += ["", *[f"![{Path(p).stem}]({Path(p).relative_to(Path(s['work_dir']))})" for p in s["plots"]]]
    return "\n".join(lines) + "\n"


def _plots(s: dict[str, Any], out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(m["name"], m) for m in s["members"] if m.get("per_class")]
    rows += [(f"{e['name']} (tuned, in-sample)", e) for e in s["ensembles"] if e.get("per_class")]
    paths: list[str] = []
    if not rows:
        return paths
    out_dir.mkdir(parents=True, exist_ok=True)
    classes = sorted({c for _, r in rows for c in r["per_class"]})
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(classes) + 3), 4))
    width = 0.8 / len(rows)
    for i, (name, r) in enumerate(rows):
        ax.bar([j + i * width for j in range(len(classes))], [r["per_class"].get(c, 0.0) for c in classes], width,
               label=name)  # fmt: skip
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(classes))], classes)
    ax.set_ylabel("competition score")
    ax.set_title("Out-of-fold score per class")
    ax.legend(fontsize=7)
    fig.tight_layout()
    p = out_dir / "score_per_class.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(str(p))
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, r in rows:
        pt = r.get("per_threshold") or {}
        keys = sorted(pt, key=float)
        ax.plot([float(k) for k in keys], [pt[k] for k in keys], marker="o", label=name)
    ax.set_xlabel("IoU threshold")
    ax.set_ylabel("precision (TP / (TP + FP + FN))")
    ax.set_title("Out-of-fold precision per IoU threshold")
    ax.legend(fontsize=7)
    fig.tight_layout()
    p = out_dir / "score_per_iou.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(str(p))
    ens = [e for e in s["ensembles"]]
    if ens:
        fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(ens) + 2), 4))
        x = range(len(ens))
        ax.bar(
            [i - 0.2 for i in x], [e["tuned_in_sample"] or 0.0 for e in ens], 0.4, label="tuned, in-sample"
        )
        ax.bar([i + 0.2 for i in x], [e["tuned_held_out"] or 0.0 for e in ens], 0.4, label="tuned, held-out")
        ax.set_xticks(list(x), [e["name"] for e in ens], rotation=20, fontsize=8)
        ax.set_ylabel("competition score")
        ax.set_title("Held-out vs in-sample (0 = not available)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        p = out_dir / "heldout_vs_insample.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(str(p))
    return paths


def write_summary(recipe: Recipe, work_dir: Path, data_root: Path) -> dict[str, Any]:
    """Write ``summary.json``, ``summary.md`` and ``plots/*.png`` into ``work_dir``; returns the summary
    (with ``markdown``)."""
    s = collect(recipe, work_dir, data_root)
    s["plots"] = _plots(s, work_dir / "plots")
    md = _markdown(s)
    atomic_write_json(work_dir / "summary.json", s, indent=2)
    atomic_write_text(work_dir / "summary.md", md)
    return {**s, "markdown": md}
