"""Box sizes per class and anchor coverage of detector configs (is a cell too small for the anchors?).

Prints the box-size percentiles per class (sqrt(w*h), in original pixels) and, for every --config, the fraction
of ground-truth boxes that no anchor matches at IoU >= 0.5 (mmdet's MaxIoUAssigner threshold; boxes scaled by
the config's test Resize first) with the anchor scale that would leave the fewest unmatched, or, for an
anchor-free head (YOLOX), the fraction of boxes smaller than the finest stride at the input scale.
Writes box_report.json, box_report.md and box_sizes.png to --out. Logic: custom_modules/det/box_stats.py.

Examples:
    python tools/analyze_boxes.py --data-root data/sartorius \\
        --config configs/mask_rcnn/mask-rcnn_r50_fpn_1xb2-20e_sartorius.py \\
        --config configs/yolox/yolox_s_8xb8-300e_sartorius.py --out work_dirs/box_report
    python tools/analyze_boxes.py --ann-file data/sartorius/annotations/fold0_train.json --out work_dirs/br
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data-root", help="prepared data root (reads annotations/train_all.json)")
    src.add_argument("--ann-file", help="COCO instance json")
    p.add_argument("--config", action="append", default=[], help="detector config (repeatable)")
    p.add_argument("--out", help="output folder for box_report.json / .md / box_sizes.png")
    return p.parse_args(argv)


def _markdown(rep: dict) -> str:
    """The report as Markdown tables."""
    lines = [f"# Box sizes ({rep['n_boxes']} boxes, {rep['ann_file']})", "",
             "sqrt(w*h) in original pixels:", "", "| class | boxes | p5 | p10 | p25 | p50 | p75 | p90 | p95 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for name, s in rep["sizes"].items():
        q = s["sqrt_area"]
        lines.append(
            f"| {name} | {s['count']} | "
            + " | ".join(f"{q[f'p{p}']:.1f}" for p in (5, 10, 25, 50, 75, 90, 95))
            + " |"
        )
    for c in rep["configs"]:
        lines += ["", f"## `{c['config']}` (input scale x{c['input_scale']:.2f})", ""]
        if c["kind"] == "anchor":
            lines.append(f"Anchor sizes (sqrt(w*h), input pixels): {c['anchor_sizes']}.")
            lines += ["", "| class | no anchor at IoU >= 0.5 | " + f"no anchor at IoU >= {c['pos_iou_thr']:g} (config) |",
                      "|---|---:|---:|"]  # fmt: skip
            at_thr = c[f"unmatched_at_{c['pos_iou_thr']:g}"]
            for n, v in c["unmatched_at_0.5"].items():
                lines.append(f"| {n} | {100 * v:.1f} % | {100 * at_thr[n]:.1f} % |")
            sug = c.get("suggestion")
            if sug:
                tbl = ", ".join(f"{k}: {100 * v:.1f} %" for k, v in sug["unmatched_at_0.5_by_scale"].items())
                lines += [
                    "",
                    f"Unmatched at IoU >= 0.5 by anchor scale ({tbl}); best: scales=[{sug['best_scale']:g}].",
                ]
        else:
            lines += [f"Anchor-free, finest stride {c['finest_stride']}.", "",
                      "| class | shorter side below one stride |", "|---|---:|"]  # fmt: skip
            for n, v in c["below_one_stride"].items():
                lines.append(f"| {n} | {100 * v:.1f} % |")
            if c.get("scale_for_p10_at_1.5_strides"):
                lines += ["", f"Input scale that brings the 10th percentile shorter side to 1.5 strides: "
                          f"x{c['scale_for_p10_at_1.5_strides']:.2f}."]  # fmt: skip
    return "\n".join(lines) + "\n"


def _plot(rep_boxes: tuple, out: Path) -> None:
    """Histogram of the box sizes per class (``rep_boxes``: boxes, class names, labels) into ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    boxes, names, labels = rep_boxes
    fig, ax = plt.subplots(figsize=(7, 4))
    side = np.sqrt(boxes[:, 2] * boxes[:, 3])
    bins = np.linspace(0, max(float(side.max()) if len(side) else 1.0, 1.0), 40)
    for i, n in enumerate(names):
        if (labels == i).any():
            ax.hist(side[labels == i], bins=bins, alpha=0.5, label=n)
    ax.set_xlabel("box size sqrt(w*h) [px, original image]")
    ax.set_ylabel("boxes")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = parse_args(argv)
    from celldata.fileio import atomic_write_json, atomic_write_text, check_output_path
    from custom_modules.det.box_stats import box_report, load_boxes

    ann = Path(args.ann_file) if args.ann_file else Path(args.data_root) / "annotations" / "train_all.json"
    try:
        if args.out:
            check_output_path(args.out, "dir", "--out")
        if not ann.is_file():
            raise ValueError(f"{ann}: annotation file not found (run tools/prepare_sartorius.py first?)")
        for c in args.config:
            if not Path(c).is_file():
                raise ValueError(f"--config {c}: file not found")
        rep = box_report(ann, args.config)
    except ValueError as e:
        print(f"analyze_boxes.py: error: {e}", file=sys.stderr)
        return 2
    md = _markdown(rep)
    print(md)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        _plot(load_boxes(ann), out / "box_sizes.png")
        atomic_write_text(out / "box_report.md", md)
        atomic_write_json(out / "box_report.json", rep, indent=2)
        print(f"wrote {out}/box_report.json, box_report.md, box_sizes.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
