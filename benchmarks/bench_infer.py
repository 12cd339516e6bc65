"""Inference cost of tools/infer.py for a two-stage mask model: mmdet's own path vs ours, batch sizes, fp16.

Per image (median of ``--repeats`` warmed runs, the same images every time):

* ``mmdet``: ``model.test_step`` (mmdet pastes every mask into a full frame; on CPU one box at a time) and the
  crops cut out of the full frames (:func:`custom_modules.conversion.masks_to_instances`), the straightforward
  way and the one used before soft masks;
* ``ours bs=B``: :meth:`custom_modules.inference.InferenceModel.predict_raw` on batches of B images (RPN and box
  head as mmdet, mask probabilities pasted per box window in a few padded chunks, one host copy per image), which
  also returns the mask probabilities; on CUDA also with ``--fp16`` autocast.

The binary masks of both paths are compared (they must be identical in fp32). Random weights by default (a
checkpoint with ``--checkpoint``): the detector then keeps ``--max-per-img`` detections per image, the dense
worst case. Writes ``work_dirs/bench_infer/<name>.json`` and ``.md``.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_infer.py --data-root work_dirs/demo/data --images 2``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from celldata.fileio import atomic_write_text
from celldata.images import list_images
from custom_modules.inference import load_model, read_image

REPO = Path(__file__).resolve().parents[1]


def _time(fn, repeats: int) -> tuple[float, object]:
    fn()  # warm-up
    ts, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts), out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--config", default=str(REPO / "configs/mask_rcnn/mask-rcnn_r18_fpn_demo-cpu_sartorius.py")
    )
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--data-root", required=True, help="prepared data root (annotations/fold0_val.json)")
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--max-per-img", type=int, default=1000)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default=None)
    ap.add_argument("--name", default="mask_rcnn")
    ap.add_argument("--out-dir", type=Path, default=REPO / "work_dirs/bench_infer")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    opts = {"data_root": args.data_root}
    model = load_model(
        args.config, args.checkpoint, args.device, opts, score_thr=0.0, max_per_img=args.max_per_img
    )
    items = list_images(ann_file=Path(args.data_root) / "annotations" / "fold0_val.json")[: args.images]
    imgs = [read_image(i.path) for i in items]
    ids = [i.image_id for i in items]
    n = len(imgs)
    rows = []

    def mmdet_path():
        return [model.to_predictions(model.predict_sample(im), i, *im.shape[:2]) for im, i in zip(imgs, ids)]

    t_ref, ref = _time(mmdet_path, args.repeats)
    rows.append({"path": "mmdet test_step + crops", "batch": 1, "s_per_image": t_ref / n, "ratio": 1.0})
    variants = [(bs, False) for bs in args.batch_sizes]
    if model.device.type == "cuda":
        variants += [(bs, True) for bs in args.batch_sizes]
    for bs, fp16 in variants:
        model.fp16 = fp16

        def ours(bs=bs):
            out = []
            for s in range(0, n, bs):
                out += model.predict_raw(imgs[s : s + bs], ids[s : s + bs])
            return out

        t, got = _time(ours, args.repeats)
        same = all(
            len(a) == len(b) and np.array_equal(a.masks.to_full(), b.masks.to_full())
            for a, b in zip(got, ref)
        )
        rows.append(
            {
                "path": f"ours{' fp16' if fp16 else ''}",
                "batch": bs,
                "s_per_image": t / n,
                "ratio": t_ref / t,
                "masks_equal_mmdet": bool(same),
            }
        )
    model.fp16 = False
    info = {
        "config": args.config,
        "checkpoint": args.checkpoint,
        "device": str(model.device),
        "threads": torch.get_num_threads(),
        "images": n,
        "detections_per_image": [len(p) for p in ref],
        "repeats": args.repeats,
        "rows": rows,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out_dir / f"{args.name}.json", json.dumps(info, indent=2))
    lines = [
        f"# Inference cost: {Path(args.config).name} on {info['device']} ({info['threads']} threads)",
        "",
        f"{n} images of fold 0 validation, {info['detections_per_image']} detections, median of {args.repeats} "
        "warmed runs.",
        "",
        "| path | batch | s / image | speed-up vs mmdet | masks == mmdet |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        eq = "" if "masks_equal_mmdet" not in r else ("yes" if r["masks_equal_mmdet"] else "no (fp16)")
        lines.append(f"| {r['path']} | {r['batch']} | {r['s_per_image']:.3f} | {r['ratio']:.2f}x | {eq} |")
    atomic_write_text(args.out_dir / f"{args.name}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
