"""CPU cost of the model families of the stack and the overhead of our custom modules (SE blocks, FRE).

Measured in one process on random weights and random inputs (the numbers are compute cost, not accuracy):

* per family (YOLOX-s, Mask R-CNN R50-FPN, UPerNet R50, SE-U-Net+FRE; each built from our config): training
  step (forward + loss + backward, batch 2, reported per image) and inference (``predict``, batch 1), median of
  the repeats after warm-up;
* FRE at inference: SE-U-Net with vs without FRE in eval mode (FRE is the identity there: ratio ~1);
* training-step overhead, repeats interleaved (A, B, C, D, A, B, ...) so machine load hits all alike:
  SE-U-Net+FRE vs SE-U-Net (target <= 5 %), SE-U-Net vs the same U-Net without SE blocks, and that plain U-Net
  vs mmseg's stock ``UNet`` backbone with the same depth and widths (64-128-256-512, bilinear up-convs);
* the FRE module's own forward + backward on a bottleneck-shaped tensor as a fraction of the training step
  (a direct measurement, unaffected by the machine's load swings that blur end-to-end ratios).

Results: ``work_dirs/bench/models_bench.json``, ``.md`` and a PNG bar chart.

Run: ``python benchmarks/bench_models.py [--quick] [--threads 1] [--size 256] [--out-dir work_dirs/bench]``.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from celldata.fileio import atomic_write_json, atomic_write_png, atomic_write_text
from custom_modules.config import load_config
from custom_modules.runner_utils import register_library

REPO = Path(__file__).resolve().parents[1]
FAMILIES = {
    "YOLOX-s": "configs/yolox/yolox_s_8xb8-300e_sartorius.py",
    "Mask R-CNN R50-FPN": "configs/mask_rcnn/mask-rcnn_r50_fpn_1xb2-20e_sartorius.py",
    "UPerNet R50": "configs/upernet/upernet_r50_4xb4-40k_sartorius-704x520.py",
    "SE-U-Net+FRE (c64)": "configs/unet/se-unet-fre_c64-s4_4xb4-40k_sartorius-704x520.py",
}
SE_UNET = "configs/unet/se-unet_c64-s4_4xb4-40k_sartorius-704x520.py"
SE_UNET_FRE = FAMILIES["SE-U-Net+FRE (c64)"]
OVERHEAD_LIMIT = 1.05


def build_model(config: str, edit: Callable | None = None) -> tuple[torch.nn.Module, str]:
    """Build the model of a repo config (optionally edited) with random weights; returns (model, library)."""
    cfg = load_config(REPO / config)
    lib = register_library(cfg)
    model_cfg = copy.deepcopy(cfg.model)
    if edit is not None:
        edit(model_cfg)
    if lib == "mmdet":
        from mmdet.registry import MODELS
    else:
        from mmseg.registry import MODELS
    from mmengine.registry import init_default_scope

    init_default_scope(lib)
    return MODELS.build(model_cfg), lib


def stock_unet(model: dict) -> None:
    """Replace the backbone of an SE-U-Net model config by mmseg's stock ``UNet`` of the same depth/widths."""
    model["backbone"] = dict(
        type="UNet",
        in_channels=3,
        base_channels=64,
        num_stages=4,
        strides=(1, 1, 1, 1),
        enc_num_convs=(2, 2, 2, 2),
        dec_num_convs=(2, 2, 2),
        downsamples=(True, True, True),
        enc_dilations=(1, 1, 1, 1),
        dec_dilations=(1, 1, 1),
        norm_cfg=dict(type="BN", requires_grad=True),
        upsample_cfg=dict(type="InterpConv"),
        init_cfg=None,
    )


def make_batch(lib: str, n: int, size: int, num_classes: int = 4, seed: int = 0) -> tuple[torch.Tensor, list]:
    """Random normalized images ``(n, 3, size, size)`` and data samples with a few ground-truth cells."""
    rng = np.random.default_rng(seed)
    inputs = torch.from_numpy(rng.standard_normal((n, 3, size, size)).astype(np.float32))
    meta = dict(
        img_shape=(size, size),
        ori_shape=(size, size),
        pad_shape=(size, size),
        batch_input_shape=(size, size),
        scale_factor=(1.0, 1.0),
    )
    samples = []
    for i in range(n):
        k = 12
        x0 = rng.integers(0, size - 40, k)
        y0 = rng.integers(0, size - 40, k)
        wh = rng.integers(8, 40, (k, 2))
        boxes = np.stack([x0, y0, x0 + wh[:, 0], y0 + wh[:, 1]], 1).astype(np.float32)
        masks = np.zeros((k, size, size), np.uint8)
        for j, (a, b, c, d) in enumerate(boxes.astype(int)):
            masks[j, b:d, a:c] = 1
        labels = rng.integers(0, 3, k)
        if lib == "mmdet":
            from mmdet.structures import DetDataSample
            from mmdet.structures.mask import BitmapMasks
            from mmengine.structures import InstanceData

            s = DetDataSample(metainfo=dict(meta, img_id=i))
            gt = InstanceData()
            gt.bboxes = torch.from_numpy(boxes)
            gt.labels = torch.from_numpy(labels).long()
            gt.masks = BitmapMasks(masks, size, size)
            s.gt_instances = gt
        else:
            from mmengine.structures import PixelData
            from mmseg.structures import SegDataSample

            sem = np.zeros((size, size), np.int64)
            for j in range(k):
                sem[masks[j] > 0] = labels[j] + 1
            s = SegDataSample(metainfo=meta)
            s.gt_sem_seg = PixelData(data=torch.from_numpy(sem)[None])
        samples.append(s)
    return inputs, samples


def train_step_fn(model: torch.nn.Module, batch: tuple) -> Callable[[], float]:
    """A closure timing forward + loss + backward of one batch (seconds)."""

    def run() -> float:
        model.train()
        model.zero_grad(set_to_none=True)
        t = time.perf_counter()
        losses = model.loss(*batch)
        loss, _ = model.parse_losses(losses)
        loss.backward()
        return time.perf_counter() - t

    return run


def infer_fn(model: torch.nn.Module, batch: tuple) -> Callable[[], float]:
    """A closure timing ``predict`` of one batch in eval mode without gradients (seconds)."""

    def run() -> float:
        model.eval()
        with torch.no_grad():
            t = time.perf_counter()
            model.predict(*batch)
            return time.perf_counter() - t

    return run


def interleaved(
    fns: dict[str, Callable[[], float]], warmup: int, reps: int, desc: str
) -> dict[str, list[float]]:
    """Run every closure ``warmup`` times, then ``reps`` rounds of all closures in rotating order."""
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in tqdm(range(reps), desc=desc, leave=False, file=sys.stderr):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            times[name].append(fns[name]())
    return times


def ratio_stats(a: list[float], b: list[float]) -> dict[str, float]:
    """Per-round ratios a[i] / b[i] (measured back to back): median (robust to load drifting between rounds)
    and the min / max as the noise band."""
    r = [x / y for x, y in zip(a, b, strict=True)]
    return dict(paired_median=round(statistics.median(r), 3), min=round(min(r), 3), max=round(max(r), 3))


def fre_op_ms(fre: torch.nn.Module, shape: tuple[int, int, int, int], reps: int) -> float:
    """Median ms of the FRE module's own forward + backward in training mode on a bottleneck-shaped tensor."""
    fre.train()
    x = torch.randn(shape, requires_grad=True)
    grad = torch.randn(shape)
    times = []
    for _ in range(reps + 3):
        t = time.perf_counter()
        fre(x).backward(grad)
        times.append(time.perf_counter() - t)
        x.grad = None
    return 1000 * statistics.median(times[3:])


def run_bench(quick: bool, threads: int, size: int, out_dir: Path) -> dict:
    """Run all measurements and write JSON / markdown / PNG; returns the result dict."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    warmup, reps, reps_overhead = (1, 1, 4) if quick else (1, 3, 9)
    train_n = 2
    result: dict = dict(
        settings=dict(
            quick=quick,
            threads=threads,
            input=f"{size}x{size}",
            train_batch=train_n,
            infer_batch=1,
            warmup=warmup,
            reps=reps,
            reps_overhead=reps_overhead,
            torch=torch.__version__,
            python=platform.python_version(),
            machine=platform.machine(),
        ),
        families={},
    )
    for name, config in tqdm(FAMILIES.items(), desc="families", file=sys.stderr):
        t0 = time.perf_counter()
        model, lib = build_model(config)
        tr = interleaved({"t": train_step_fn(model, make_batch(lib, train_n, size))}, warmup, reps, name)["t"]
        inf = interleaved({"i": infer_fn(model, make_batch(lib, 1, size))}, warmup, reps, name)["i"]
        result["families"][name] = dict(
            config=config,
            params_m=round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
            train_ms_per_image=round(1000 * statistics.median(tr) / train_n, 1),
            infer_ms_per_image=round(1000 * statistics.median(inf), 1),
        )
        tqdm.write(f"{name}: {result['families'][name]} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
        del model

    def no_se(m: dict) -> None:
        m["backbone"]["se_ratio"] = 0

    variants = {"se_unet_fre": build_model(SE_UNET_FRE)[0], "se_unet": build_model(SE_UNET)[0]}
    if not quick:
        variants["unet_no_se"] = build_model(SE_UNET, no_se)[0]
        variants["mmseg_stock_unet"] = build_model(SE_UNET, stock_unet)[0]
    seg_train = make_batch("mmseg", train_n, size)
    seg_inf = make_batch("mmseg", 1, size)
    tr = interleaved(
        {k: train_step_fn(m, seg_train) for k, m in variants.items()}, warmup, reps_overhead, "train overhead"
    )
    inf = interleaved(
        {k: infer_fn(variants[k], seg_inf) for k in ("se_unet_fre", "se_unet")},
        warmup,
        reps_overhead,
        "FRE infer",
    )
    ratios = {
        "fre_train": ratio_stats(tr["se_unet_fre"], tr["se_unet"]),
        "fre_infer": ratio_stats(inf["se_unet_fre"], inf["se_unet"]),
    }
    if not quick:
        for key, a, b in (
            ("se_train", "se_unet", "unet_no_se"),
            ("unet_no_se_vs_mmseg_stock_train", "unet_no_se", "mmseg_stock_unet"),
            ("se_unet_fre_vs_mmseg_stock_train", "se_unet_fre", "mmseg_stock_unet"),
        ):
            ratios[key] = ratio_stats(tr[a], tr[b])
    fre = variants["se_unet_fre"].backbone.fre
    op_ms = fre_op_ms(fre, (train_n, fre.num_channels, size // 8, size // 8), 20 if quick else 100)
    step_ms = 1000 * statistics.median(tr["se_unet"])
    result["overhead"] = dict(
        train_ms_per_image={k: round(1000 * statistics.median(v) / train_n, 1) for k, v in tr.items()},
        train_ms_per_image_min={k: round(1000 * min(v) / train_n, 1) for k, v in tr.items()},
        infer_ms_per_image={k: round(1000 * statistics.median(v), 1) for k, v in inf.items()},
        ratios=ratios,
        params_m={k: round(sum(p.numel() for p in m.parameters()) / 1e6, 3) for k, m in variants.items()},
        fre_op_ms_per_step=round(op_ms, 3),
        fre_op_fraction_of_step=round(op_ms / step_ms, 5),
        fre_train_within_limit=bool(1 + op_ms / step_ms <= OVERHEAD_LIMIT),
        fre_train_end_to_end_within_limit=bool(ratios["fre_train"]["paired_median"] <= OVERHEAD_LIMIT),
        fre_infer_within_limit=bool(abs(ratios["fre_infer"]["paired_median"] - 1.0) <= OVERHEAD_LIMIT - 1.0),
        limit=OVERHEAD_LIMIT,
    )
    write_outputs(result, out_dir)
    return result


def to_markdown(res: dict) -> str:
    """Markdown report of :func:`run_bench` results."""
    s = res["settings"]
    lines = [
        "# Model cost on CPU (random weights)",
        "",
        f"Input {s['input']}, {s['threads']} thread(s), train batch {s['train_batch']} (forward + loss + "
        f"backward, per image), inference batch 1 (`predict`), median of {s['reps']} repeats after "
        f"{s['warmup']} warm-up{' (quick mode)' if s['quick'] else ''}; torch {s['torch']}.",
        "",
        "Random weights: the detectors' raw outputs fill their test-time `max_per_img` (Mask R-CNN: about 600",
        "boxes on a 128x128 input, each through the mask head), so their inference time is the worst case of",
        "their config, about what a trained model pays on a crowded 700-cell Sartorius image.",
        "",
        "| model | params (M) | train ms / image | inference ms / image |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, f in res["families"].items():
        lines.append(f"| {name} | {f['params_m']} | {f['train_ms_per_image']} | {f['infer_ms_per_image']} |")
    o = res["overhead"]
    lines += [
        "",
        f"## Custom-module overhead (interleaved rounds: {s['reps_overhead']})",
        "",
        "Ratios are medians over rounds of A / B measured back to back; [min, max] over rounds is the noise",
        "band of the machine. The FRE training verdict uses the direct measurement of the module's own",
        "forward + backward relative to the step (end-to-end ratios on a loaded shared CPU are noisier than 5 %).",
        "",
        "| variant | params (M) | train ms / image (median) | (fastest) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for k, v in o["train_ms_per_image"].items():
        lines.append(f"| {k} | {o['params_m'][k]} | {v} | {o['train_ms_per_image_min'][k]} |")
    labels = {
        "fre_train": "FRE, training step: SE-U-Net+FRE / SE-U-Net",
        "fre_infer": "FRE, inference: SE-U-Net+FRE / SE-U-Net (eval: identity)",
        "se_train": "SE blocks, training step: SE-U-Net / U-Net without SE",
        "unet_no_se_vs_mmseg_stock_train": "training step: our U-Net without SE / mmseg stock UNet",
        "se_unet_fre_vs_mmseg_stock_train": "training step: SE-U-Net+FRE / mmseg stock UNet",
    }
    yes = {True: "yes", False: "NO"}
    verdict = {
        "fre_train": f"{yes[o['fre_train_end_to_end_within_limit']]} (<= {o['limit']})",
        "fre_infer": f"{yes[o['fre_infer_within_limit']]} (1 +- {o['limit'] - 1:.2f})",
    }
    lines += ["", "| ratio | paired median | [min, max] | within limit |", "| --- | ---: | --- | --- |"]
    for k, r in o["ratios"].items():
        lines.append(
            f"| {labels[k]} | {r['paired_median']} | [{r['min']}, {r['max']}] | {verdict.get(k, '(information)')} |"
        )
    frac = o["fre_op_fraction_of_step"]
    lines += [
        "",
        f"FRE module alone (forward + backward on the bottleneck, one training batch): {o['fre_op_ms_per_step']} ms "
        f"= {100 * frac:.3f} % of the SE-U-Net training step -> overhead within {o['limit']}: "
        f"{yes[o['fre_train_within_limit']]}. In eval mode FRE returns its input unchanged (no operation).",
        "",
        f"Inference ms / image (median): {o['infer_ms_per_image']}.",
        "",
    ]
    return "\n".join(lines)


def bar_chart(res: dict) -> np.ndarray:
    """RGB image ``(H, W, 3)`` uint8 of train / inference ms per image per family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(res["families"])
    tr = [res["families"][n]["train_ms_per_image"] for n in names]
    inf = [res["families"][n]["infer_ms_per_image"] for n in names]
    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    x = np.arange(len(names))
    ax.bar(x - 0.2, tr, 0.4, label="train step / image")
    ax.bar(x + 0.2, inf, 0.4, label="inference / image")
    ax.set_xticks(x, names, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("ms (CPU, log scale)")
    ax.set_title(f"Model cost, {res['settings']['input']}, {res['settings']['threads']} thread(s)")
    ax.legend()
    fig.tight_layout()
    fig.canvas.draw()
    img = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return img


def write_outputs(res: dict, out_dir: Path) -> None:
    """Write ``models_bench.json``, ``models_bench.md`` and ``models_bench.png`` atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "models_bench.json", res, indent=2)
    atomic_write_text(out_dir / "models_bench.md", to_markdown(res))
    atomic_write_png(out_dir / "models_bench.png", bar_chart(res)[..., ::-1])


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="128x128 input, fewer repeats (about a minute)")
    p.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (default 1: stable on shared CPUs)"
    )
    p.add_argument("--size", type=int, default=None, help="square input side (default 256, quick 128)")
    p.add_argument("--out-dir", type=Path, default=REPO / "work_dirs" / "bench")
    args = p.parse_args(argv)
    size = args.size or (128 if args.quick else 256)
    if size < 64 or size % 32:
        print(
            f"bench_models.py: error: --size must be a multiple of 32 and >= 64, got {size}", file=sys.stderr
        )
        return 2
    if args.threads < 1:
        print(f"bench_models.py: error: --threads must be >= 1, got {args.threads}", file=sys.stderr)
        return 2
    res = run_bench(args.quick, args.threads, size, args.out_dir)
    print(to_markdown(res))
    print(f"written: {args.out_dir / 'models_bench.json'}, .md, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
