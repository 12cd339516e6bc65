"""U-Net optimizer x loss x compression study (Polisi et al.) at CPU scale on the real Sartorius images.

For every combination of ``configs/unet_study/`` (Adam/Nadam/RMSprop/Adagrad with BCE, Adam with Dice-BCE,
Dice-Focal, Jaccard-BCE, RMSprop with Jaccard-BCE) and seed: train the float U-Net (mmengine Runner, the leaf
config scaled down), then

- ``Base``: the float model;
- ``PostQ``: static int8 PTQ through torchao PT2E (X86InductorQuantizer), calibrated on training images;
- ``DuringTQ``: quantization-aware fine-tuning (prepare_qat_pt2e) from the float weights, then int8;
- ``Pruned``: fine-tuning of the float weights with ``MagnitudePruningHook`` (0.5 -> 0.9 global sparsity);
- ``Struct50``: 50 % of the channels removed (torch-pruning), then fine-tuning (the variant that is faster);

and evaluates each on the held-out fold (whole 704x520 images; accuracy, F1, Jaccard, recall, precision
averaged over images as the paper does). Latency (1 thread unless ``--threads``; median of ``--repeats``
runs; eager and ``torch.compile``) and saved size are measured once per architecture on the first
combination's seed-0 models (all combinations share the architecture). Writes ``unet_study.json``,
``unet_study.md`` (the paper's Table 3 shape + size/latency + the paper's numbers beside ours) and
``unet_study_heatmap.png`` (Figure 7 shape) to ``--out-dir``.

Run: ``OMP_NUM_THREADS=1 nice -n 10 python studies/unet.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / 'shared'
CONFIG_DIR = REPO / 'configs' / 'unet_study'
SUFFIX = '_1xb8-8k_sartorius-cell-256x256.py'
COMBOS = {
    'BCE-Adam': 'unet-s5-c64_bce-adam',
    'BCE-Nadam': 'unet-s5-c64_bce-nadam',
    'BCE-RMSprop': 'unet-s5-c64_bce-rmsprop',
    'BCE-Adagrad': 'unet-s5-c64_bce-adagrad',
    'DiceBCE-Adam': 'unet-s5-c64_dicebce-adam',
    'DiceFocal-Adam': 'unet-s5-c64_dicefocal-adam',
    'JaccardBCE-Adam': 'unet-s5-c64_jaccardbce-adam',
    'JaccardBCE-RMSprop': 'unet-s5-c64_jaccardbce-rmsprop',
}
MODELS_ORDER = ('Base', 'PostQ', 'DuringTQ', 'Pruned', 'Struct50')
METRICS = ('accuracy', 'f1', 'jaccard', 'recall', 'precision')
# The paper's Table 3 (test set; accuracy, F1, Jaccard, recall, precision).
PAPER = {
    'BCE-Adam': {
        'Base': (0.9535, 0.9395, 0.8941, 0.9394, 0.9427),
        'PostQ': (0.9531, 0.9415, 0.8962, 0.9376, 0.9508),
        'DuringTQ': (0.9527, 0.9387, 0.8925, 0.9253, 0.9594),
        'Pruned': (0.9542, 0.9444, 0.8992, 0.9480, 0.9446),
    },
    'BCE-Nadam': {
        'Base': (0.9496, 0.9359, 0.8877, 0.9348, 0.9403),
        'PostQ': (0.9485, 0.9340, 0.8850, 0.9309, 0.9450),
        'DuringTQ': (0.9496, 0.9331, 0.8849, 0.9215, 0.9553),
        'Pruned': (0.9541, 0.9443, 0.8991, 0.9530, 0.9393),
    },
    'BCE-RMSprop': {
        'Base': (0.9481, 0.9334, 0.8835, 0.9384, 0.9318),
        'PostQ': (0.9491, 0.9313, 0.8831, 0.9192, 0.9553),
        'DuringTQ': (0.9493, 0.9338, 0.8849, 0.9284, 0.9475),
        'Pruned': (0.954, 0.9464, 0.9019, 0.9504, 0.9445),
    },
    'BCE-Adagrad': {
        'Base': (0.8259, 0.8019, 0.6842, 0.7810, 0.8459),
        'PostQ': (0.8229, 0.8085, 0.6901, 0.7786, 0.8600),
        'DuringTQ': (0.8315, 0.8212, 0.7067, 0.8032, 0.8551),
        'Pruned': (0.8724, 0.8528, 0.7555, 0.8277, 0.8866),
    },
    'DiceBCE-Adam': {
        'Base': (0.9534, 0.9427, 0.8969, 0.9416, 0.9460),
        'PostQ': (0.9531, 0.9407, 0.8952, 0.9326, 0.9557),
        'DuringTQ': (0.9532, 0.9399, 0.8949, 0.9376, 0.9498),
        'Pruned': (0.9546, 0.9446, 0.8994, 0.9477, 0.9439),
    },
    'DiceFocal-Adam': {
        'Base': (0.9533, 0.9448, 0.8992, 0.9489, 0.9434),
        'PostQ': (0.9531, 0.9404, 0.8949, 0.9422, 0.9445),
        'DuringTQ': (0.9548, 0.9454, 0.9013, 0.9455, 0.9483),
        'Pruned': (0.9534, 0.9434, 0.8975, 0.9494, 0.9411),
    },
    'JaccardBCE-Adam': {
        'Base': (0.9541, 0.9449, 0.8997, 0.9452, 0.9471),
        'PostQ': (0.9531, 0.9404, 0.8949, 0.9422, 0.9445),
        'DuringTQ': (0.9544, 0.9431, 0.8987, 0.9409, 0.9506),
        'Pruned': (0.9535, 0.9434, 0.8975, 0.9494, 0.9411),
    },
    'JaccardBCE-RMSprop': {
        'Base': (0.947798, 0.957535, 0.897256, 0.957799, 0.956771),
        'PostQ': (0.954473, 0.944771, 0.899828, 0.940101, 0.967221),
        'DuringTQ': (0.951916, 0.943059, 0.896906, 0.938187, 0.951274),
        'Pruned': (0.9561, 0.9561, 0.9314, 0.9602, 0.9432),
    },
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--data-root', default=str(SHARED / 'data' / 'sartorius_real_train'), help='Kaggle layout')
    p.add_argument('--work-dir', default=str(REPO / 'work_dirs' / 'bench_unet_study'))
    p.add_argument('--out-dir', default=None, help='report folder (default: <work-dir>)')
    p.add_argument('--combos', nargs='+', default=list(COMBOS), choices=list(COMBOS))
    p.add_argument('--seeds', nargs='+', type=int, default=[0])
    p.add_argument('--fold', type=int, default=0, help='held-out fold of the prepared splits')
    p.add_argument('--base-channels', type=int, default=8, help='U-Net width (paper: 64)')
    p.add_argument('--crop', type=int, default=128, help='square training crop side')
    p.add_argument('--batch', type=int, default=4)
    p.add_argument('--iters', type=int, default=100, help='float training iterations')
    p.add_argument('--lr', type=float, default=1e-3, help='learning rate of every optimizer (paper: 1e-4)')
    p.add_argument('--prune-iters', type=int, default=40, help='magnitude-pruning fine-tuning iterations')
    p.add_argument('--prune-interval', type=int, default=10, help='iterations between mask updates')
    p.add_argument('--qat-iters', type=int, default=20)
    p.add_argument('--qat-lr', type=float, default=1e-4)
    p.add_argument('--struct-ratio', type=float, default=0.5)
    p.add_argument('--struct-iters', type=int, default=20)
    p.add_argument('--calib-images', type=int, default=4)
    p.add_argument(
        '--int8-upsample',
        action='store_true',
        help='PostQ/DuringTQ also quantize the decoder up-sampling (compress.ptq_pt2e(int8_upsample=True))',
    )
    p.add_argument('--workers', type=int, default=2, help='parallel training processes (1 thread each)')
    p.add_argument('--threads', type=int, default=1, help='threads of the latency measurements')
    p.add_argument('--repeats', type=int, default=5, help='timed runs per latency (median)')
    p.add_argument('--no-compile', action='store_true', help='skip torch.compile latencies')
    p.add_argument('--quick', action='store_true', help='smoke run: 2 combinations, a few iterations')
    p.add_argument('--report-only', action='store_true', help='write the report from the finished runs only')
    p.add_argument('--base-only', action='store_true', help='train and evaluate the float models only')
    p.add_argument(
        '--also', nargs='*', default=[], help='--report-only: other work dirs whose runs fill in missing ones'
    )
    p.add_argument(
        '--costs-only',
        action='store_true',
        help='only measure size/latency (costs.json) from the first combination\'s trained seed-0 checkpoints',
    )
    args = p.parse_args(argv)
    if args.quick:
        args.combos = args.combos[:2]
        args.iters, args.prune_iters, args.prune_interval, args.qat_iters, args.struct_iters = 6, 4, 2, 2, 2
        args.calib_images, args.repeats = 2, 2
    return args


def prepare_data(src: Path, dst: Path) -> Path:
    """Copy the Kaggle-layout images + train.csv to ``dst`` and prepare them there (prepare writes into it)."""
    from celldata.prepare import prepare_sartorius

    if not (src / 'train.csv').is_file():
        raise FileNotFoundError(f'{src}: no train.csv (Kaggle layout expected)')
    if not (dst / 'splits' / 'fold0_val.txt').is_file():
        dst.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / 'train.csv', dst / 'train.csv')
        shutil.copytree(src / 'train', dst / 'train', dirs_exist_ok=True)
        prepare_sartorius(dst, show_progress=False)
    return dst


def cfg_options(args: argparse.Namespace, data_root: Path, seed: int, iters: int, lr: float) -> dict:
    """Scale a study leaf down to the CPU run."""
    c = args.base_channels
    loader = dict(num_workers=0, persistent_workers=False)
    opts = {
        'model.backbone.base_channels': c,
        'model.decode_head.in_channels': c,
        'model.decode_head.channels': c,
        'model.data_preprocessor.size': (args.crop, args.crop),
        'train_dataloader.batch_size': args.batch,
        'train_cfg.max_iters': iters,
        'train_cfg.val_interval': iters,
        'default_hooks.checkpoint.interval': iters,
        'default_hooks.checkpoint.save_best': None,
        'default_hooks.logger.interval': 10,
        'optim_wrapper.optimizer.lr': lr,
        'param_scheduler': [
            dict(
                type='MultiStepLR',
                by_epoch=False,
                begin=0,
                end=iters,
                milestones=[int(0.8 * iters)],
                gamma=0.1,
            )
        ],
        'randomness': dict(seed=seed),
        'log_level': 'WARNING',
    }
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        opts[f'{key}.dataset.data_root'] = str(data_root)
        opts[f'{key}.dataset.ann_file'] = (
            f"splits/fold{args.fold}_{'train' if key == 'train_dataloader' else 'val'}.txt"
        )
        opts[f'{key}.num_workers'] = loader['num_workers']
        opts[f'{key}.persistent_workers'] = loader['persistent_workers']
    crop = (args.crop, args.crop)
    opts['train_dataloader.dataset.pipeline'] = [
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations'),
        dict(type='RandomCrop', crop_size=crop),
        dict(type='RandomFlip', prob=[0.25, 0.25], direction=['horizontal', 'vertical']),
        dict(type='PackSegInputs'),
    ]
    return opts


def train(config: Path, opts: dict, work_dir: Path, extra: dict | None = None) -> Path:
    """Train with the mmengine Runner; returns the final checkpoint."""
    from mmengine.runner import Runner

    from custom_modules.config import load_config

    cfg = load_config(config, opts)
    cfg.work_dir = str(work_dir)
    for k, v in (extra or {}).items():
        cfg[k] = v
    runner = Runner.from_cfg(cfg)
    runner.train()
    return work_dir / f"iter_{cfg.train_cfg.max_iters}.pth"


def run_job(job: dict) -> dict:
    """Train one combination x seed and evaluate its five variants (runs in a worker process)."""
    import torch

    from custom_modules.config import load_config
    from custom_modules.seg import compress as cp

    torch.set_num_threads(1)
    args = argparse.Namespace(**job['args'])
    combo, seed = job['combo'], job['seed']
    data_root = Path(job['data_root'])
    config = CONFIG_DIR / (COMBOS[combo] + SUFFIX)
    wd = Path(args.work_dir) / f'{combo}_s{seed}'
    if (wd / 'result.json').is_file():
        return json.loads((wd / 'result.json').read_text())
    t0 = time.time()
    opts = cfg_options(args, data_root, seed, args.iters, args.lr)
    ckpt = wd / 'base' / f'iter_{args.iters}.pth'
    if not ckpt.is_file():
        train(config, opts, wd / 'base')
    t_train = time.time() - t0
    if args.base_only:
        cfg = load_config(config, opts)
        seg = cp.build_segmentor(cfg, ckpt)
        val = cp.load_samples(cfg, seg, 'val')
        logits = cp.predict(cp.padded_fn(cp.SegLogits(seg).eval()), val)
        out = dict(combo=combo, seed=seed, n_val=len(val), base_only=True, train_s=t_train)
        out['rows'] = {'Base': cp.evaluate(logits, val, float(seg.decode_head.threshold))}
        out['total_s'], out['ckpt'] = time.time() - t0, str(ckpt)
        from celldata.fileio import atomic_write_json

        atomic_write_json(wd / 'result.json', out)
        return out
    p_opts = cfg_options(args, data_root, seed, args.prune_iters, args.lr)
    p_ckpt = wd / 'pruned' / f'iter_{args.prune_iters}.pth'
    stop = max(args.prune_interval, (args.prune_iters * 2 // 3) // args.prune_interval * args.prune_interval)
    hook = dict(type='MagnitudePruningHook', start=0.5, end=0.9, interval=args.prune_interval, stop=stop)
    if not p_ckpt.is_file():
        train(config, p_opts, wd / 'pruned', extra=dict(load_from=str(ckpt), custom_hooks=[hook]))

    cfg = load_config(config, opts)
    seg = cp.build_segmentor(cfg, ckpt)
    thr = float(seg.decode_head.threshold)
    fmod = cp.SegLogits(seg).eval()
    val = cp.load_samples(cfg, seg, 'val')
    calib = [s.inputs for s in cp.load_samples(cfg, seg, 'train', args.calib_images)]
    rows: dict[str, dict] = {}
    float_logits = cp.predict(cp.padded_fn(fmod), val)
    rows['Base'] = cp.evaluate(float_logits, val, thr)
    torch.manual_seed(seed)
    up8 = bool(getattr(args, 'int8_upsample', False))
    q = cp.ptq_pt2e(fmod, calib, int8_upsample=up8)
    ql = cp.predict(cp.padded_fn(q), val)
    rows['PostQ'] = {**cp.evaluate(ql, val, thr), 'fidelity': cp.fidelity(float_logits, ql, thr)}
    qat, _ = cp.qat_pt2e(
        fmod, seg, cfg, calib[0], args.qat_iters, lr=args.qat_lr, seed=seed, int8_upsample=up8
    )
    qatl = cp.predict(cp.padded_fn(qat), val)
    rows['DuringTQ'] = {**cp.evaluate(qatl, val, thr), 'fidelity': cp.fidelity(float_logits, qatl, thr)}
    pseg = cp.build_segmentor(cfg, p_ckpt)
    pmod = cp.SegLogits(pseg).eval()
    rows['Pruned'] = {
        **cp.evaluate(cp.predict(cp.padded_fn(pmod), val), val, thr),
        'sparsity': 1 - cp.count_parameters(pmod)['nonzero'] / cp.count_parameters(pmod)['params'],
    }
    smod = cp.prune_channels(fmod, calib[0], args.struct_ratio)
    smod.train()
    cp.finetune(smod, seg, cfg, args.struct_iters, lr=args.lr, seed=seed)
    smod.eval()
    rows['Struct50'] = {
        **cp.evaluate(cp.predict(cp.padded_fn(smod), val), val, thr),
        **cp.count_parameters(smod),
    }
    out = dict(combo=combo, seed=seed, n_val=len(val), rows=rows, train_s=t_train, total_s=time.time() - t0)
    out['ckpt'], out['pruned_ckpt'] = str(ckpt), str(p_ckpt)
    from celldata.fileio import atomic_write_json

    atomic_write_json(wd / 'result.json', out)
    print(
        f'[unet] {combo} seed {seed}: Base jaccard {rows["Base"]["jaccard"]:.4f} ({out["total_s"]:.0f} s)',
        flush=True,
    )
    return out


def measure_costs(args: argparse.Namespace, data_root: Path, job: dict) -> dict:
    """Saved size, parameter counts and CPU latency of each variant's architecture (one trained model).

    ``job``: ``combo``, ``seed``, ``ckpt`` (float) and optionally ``pruned_ckpt`` (magnitude-pruned; skipped
    when absent: its architecture and dense kernels are the float model's).
    """
    import torch

    from custom_modules.config import load_config
    from custom_modules.seg import compress as cp

    combo, seed = job['combo'], job['seed']
    config = CONFIG_DIR / (COMBOS[combo] + SUFFIX)
    cfg = load_config(config, cfg_options(args, data_root, seed, args.iters, args.lr))
    seg = cp.build_segmentor(cfg, job['ckpt'])
    fmod = cp.SegLogits(seg).eval()
    val = cp.load_samples(cfg, seg, 'val', 1)
    calib = [s.inputs for s in cp.load_samples(cfg, seg, 'train', args.calib_images)]
    x = cp._pad16(val[0].inputs)
    torch.set_num_threads(args.threads)
    out: dict[str, dict] = {}

    def lat(module, quantized: bool, eager: bool = True) -> dict:
        res = {}
        if eager:
            res['eager_ms'] = cp.latency_ms(module, x, args.repeats)
        if not args.no_compile:
            t = time.time()
            res['compiled_ms'] = cp.latency_ms(cp.compile_module(module, quantized), x, args.repeats)
            res['compile_s'] = time.time() - t
        return res

    sd = Path(args.work_dir) / 'saved'
    out['Base'] = dict(
        size_bytes=cp.saved_size(fmod, sd / 'float.pt2'), **cp.count_parameters(fmod), **lat(fmod, False)
    )
    q = cp.ptq_pt2e(fmod, calib, int8_upsample=bool(getattr(args, 'int8_upsample', False)))
    out['PostQ'] = dict(
        size_bytes=cp.saved_size(q, sd / 'int8.pt2'), **cp.count_parameters(q), **lat(q, True)
    )
    out['DuringTQ'] = dict(out['PostQ'], note='same int8 graph as PostQ (latency/size not re-measured)')
    if job.get('pruned_ckpt') and Path(job['pruned_ckpt']).is_file():
        import gzip

        pmod = cp.SegLogits(cp.build_segmentor(cfg, job['pruned_ckpt'])).eval()
        buf = io.BytesIO()
        torch.save(pmod.state_dict(), buf)
        dense = io.BytesIO()
        torch.save(fmod.state_dict(), dense)
        out['Pruned'] = dict(
            size_bytes=cp.saved_size(pmod, sd / 'pruned.pt2'),
            gzip_bytes=len(gzip.compress(buf.getvalue())),
            dense_gzip_bytes=len(gzip.compress(dense.getvalue())),
            **cp.count_parameters(pmod),
            eager_ms=cp.latency_ms(pmod, x, args.repeats),
        )
    smod = cp.prune_channels(fmod, calib[0], args.struct_ratio)
    out['Struct50'] = dict(
        size_bytes=cp.saved_size(smod, sd / 'struct50.pt2'), **cp.count_parameters(smod), **lat(smod, False)
    )
    out['_input'] = list(x.shape)
    return out


def aggregate(results: list[dict]) -> dict:
    """Mean and sample SD over seeds of every metric per combination and model."""
    table: dict[str, dict] = {}
    for combo in COMBOS:
        runs = [r for r in results if r['combo'] == combo]
        if not runs:
            continue
        table[combo] = {}
        for model in MODELS_ORDER:
            if not all(model in r['rows'] for r in runs):
                continue
            vals = {m: [r['rows'][model][m] for r in runs] for m in METRICS}
            table[combo][model] = {
                m: dict(mean=float(np.mean(v)), sd=float(np.std(v, ddof=1)) if len(v) > 1 else 0.0)
                for m, v in vals.items()
            }
    return table


def heatmap(table: dict, path: Path, title: str) -> None:
    """Figure-7-like grid: rows combination x model, columns metrics, colour = mean value."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    from celldata.fileio import atomic_write_bytes

    labels, data = [], []
    for combo, models in table.items():
        for model in (m for m in MODELS_ORDER if m in models):
            labels.append(f'{combo} {model}')
            data.append([models[model][m]['mean'] for m in METRICS])
    arr = np.array(data)
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(labels) + 1.5))
    im = ax.imshow(arr, cmap='viridis', aspect='auto', vmin=max(0.0, arr.min() - 0.02), vmax=1.0)
    ax.set_xticks(range(len(METRICS)), [m.capitalize() for m in METRICS])
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    for i in range(arr.shape[0]):
        for j in range(arr.shape[1]):
            ax.text(j, i, f'{arr[i, j]:.3f}', ha='center', va='center', fontsize=6, color='w')
    ax.set_title(title, fontsize=8)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format='png', dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def write_markdown(args, table: dict, costs: dict, results: list[dict], path: Path) -> None:
    from celldata.fileio import atomic_write_text

    n_val = results[0]['n_val']
    lines = [
        '| Combination | Model | Accuracy | F1 | Jaccard | Recall | Precision | paper Jaccard | size (MB) | '
        'eager (ms) | compiled (ms) |',
        '|---|---|---|---|---|---|---|---|---|---|---|',
    ]
    for combo, models in table.items():
        for model in (m for m in MODELS_ORDER if m in models):
            cells = []
            for m in METRICS:
                s = models[model][m]
                cells.append(f"{s['mean']:.4f}" + (f" ± {s['sd']:.4f}" if len(args.seeds) > 1 else ''))
            paper = PAPER[combo].get(model)
            c = costs.get(model, {})
            lines.append(
                f'| {combo} | {model} | '
                + ' | '.join(cells)
                + (f' | {paper[2]:.4f}' if paper is not None else ' | -')
                + f" | {c.get('size_bytes', float('nan')) / 1e6:.3f} | {c.get('eager_ms', float('nan')):.1f} | "
                f"{c.get('compiled_ms', float('nan')):.1f} |"
            )
    head = [
        f'Held-out fold {args.fold}: {n_val} whole real images (704x520) for evaluation; training on the other '
        f'images of the 26 in random {args.crop}x{args.crop} crops, batch {args.batch}, {args.iters} iterations, '
        f'lr {args.lr} (all optimizers; x0.1 at 80 %), U-Net width {args.base_channels} (paper: 64), seeds '
        f'{args.seeds}.',
        f'PostQ: PT2E int8, {args.calib_images} calibration images'
        + (' (decoder up-sampling int8 too)' if getattr(args, 'int8_upsample', False) else '')
        + f'. DuringTQ: {args.qat_iters} QAT iterations '
        f'(lr {args.qat_lr}) from the float weights. Pruned: {args.prune_iters} fine-tuning iterations with '
        f'MagnitudePruningHook 0.5 -> 0.9 every {args.prune_interval}. Struct50: {args.struct_ratio:.0%} of the '
        f'channels removed + {args.struct_iters} iterations.',
        f"Size/latency: one model per architecture, input {tuple(costs.get('_input', []))}, {args.threads} "
        f'thread(s), median of {args.repeats} runs; PostQ/DuringTQ compiled = int8 kernels (inductor); their '
        f'eager column times the converted PT2E reference graph (quantize/dequantize around fp32 ops).',
        '',
    ]
    atomic_write_text(path, '\n'.join(head + lines + cost_and_target_lines(table, costs, results)) + '\n')


def cost_and_target_lines(table: dict, costs: dict, results: list[dict]) -> list[str]:
    """Markdown: cost table, the issue's speed / accuracy targets, int8 fidelity, ranking vs the paper."""
    nan = float('nan')
    out = ['', '## Size and CPU latency per architecture', '']
    out += ['| Model | saved size (MB) | params | non-zero | eager (ms) | compiled (ms) | compile (s) |']
    out += ['|---|---|---|---|---|---|---|']
    for model in MODELS_ORDER:
        c = costs.get(model)
        if not c:
            continue
        out.append(
            f"| {model} | {c['size_bytes'] / 1e6:.3f} | {c['params']} | {c['nonzero']} | "
            f"{c.get('eager_ms', nan):.1f} | {c.get('compiled_ms', nan):.1f} | {c.get('compile_s', nan):.0f} |"
        )
    if 'Pruned' in costs and 'gzip_bytes' in costs['Pruned']:
        p = costs['Pruned']
        out += [
            '',
            f"Magnitude-pruned state dict gzip-compressed: {p['gzip_bytes'] / 1e6:.3f} MB vs dense "
            f"{p['dense_gzip_bytes'] / 1e6:.3f} MB (only compression turns unstructured zeros into bytes saved).",
        ]
    base, q, st = costs.get('Base', {}), costs.get('PostQ', {}), costs.get('Struct50', {})
    out += ['', '## Targets of the issue', '']
    if 'compiled_ms' in base and 'compiled_ms' in q:
        r = q['compiled_ms'] / base['compiled_ms']
        out.append(
            f"- int8 latency <= 0.5x float, both compiled: {q['compiled_ms']:.1f} / {base['compiled_ms']:.1f} ms = "
            f"{r:.2f}x -> {'met' if r <= 0.5 else 'NOT met'} (float eager: {base.get('eager_ms', nan):.1f} ms)."
        )
    if 'compiled_ms' in base and 'compiled_ms' in st:
        r = st['compiled_ms'] / base['compiled_ms']
        re = st.get('eager_ms', nan) / base.get('eager_ms', nan)
        out.append(
            f"- structured pruning at 50 % channels faster than dense: compiled {r:.2f}x, eager {re:.2f}x -> "
            f"{'met' if r < 1 and re < 1 else 'NOT met'}."
        )
    drops = []
    for combo, models in table.items():
        b = models['Base']['jaccard']['mean']
        for model in (m for m in ('PostQ', 'DuringTQ') if m in models):
            drops.append((combo, model, 100 * (b - models[model]['jaccard']['mean'])))
    worst = max(drops, key=lambda d: d[2]) if drops else None
    if worst:
        ok = sum(d[2] <= 1.0 for d in drops)
        out.append(
            f'- <= 1 point IoU (Jaccard) drop of int8 vs float: {ok} of {len(drops)} combination x int8 variants; '
            f'worst {worst[0]} {worst[1]}: {worst[2]:+.2f} points.'
        )
    out += [
        '',
        '| Combination | seed | PostQ SQNR (dB) | PostQ mask agreement | DuringTQ mask agreement | '
        'Pruned sparsity |',
        '|---|---|---|---|---|---|',
    ]
    for r in sorted(results, key=lambda r: (list(COMBOS).index(r['combo']), r['seed'])):
        rows = r['rows']
        if 'PostQ' not in rows:
            continue
        out.append(
            f"| {r['combo']} | {r['seed']} | {rows['PostQ']['fidelity']['sqnr_db']:.1f} | "
            f"{rows['PostQ']['fidelity']['mask_agreement']:.4f} | {rows['DuringTQ']['fidelity']['mask_agreement']:.4f} | "
            f"{rows['Pruned']['sparsity']:.3f} |"
        )
    out += [
        '',
        '## Jaccard change of each variant vs its float Base (points; + = better than Base)',
        '',
        '| Combination | Base Jaccard | PostQ | DuringTQ | Pruned | Struct50 |',
        '|---|---|---|---|---|---|',
    ]
    for combo, models in table.items():
        b = models['Base']['jaccard']['mean']
        cells = [
            f"{100 * (models[m]['jaccard']['mean'] - b):+.2f}" if m in models else '-'
            for m in ('PostQ', 'DuringTQ', 'Pruned', 'Struct50')
        ]
        out.append(f"| {combo} | {b:.4f} | {' | '.join(cells)} |")
    ours = sorted(table, key=lambda c: -table[c]['Base']['jaccard']['mean'])
    paper = sorted(table, key=lambda c: -PAPER[c]['Base'][2])
    best_model = {}
    for c in table:
        if 'Pruned' in table[c]:
            present = [m for m in ('Base', 'PostQ', 'DuringTQ', 'Pruned') if m in table[c]]
            best_model[c] = max(present, key=lambda m, c=c: table[c][m]['jaccard']['mean'])
    out += [
        '',
        '## Ranking (Base Jaccard) and best compressed variant per combination',
        '',
        f"- ours: {' > '.join(ours)}",
        f"- paper (same combinations): {' > '.join(paper)}",
        f"- variant with the highest Jaccard per combination (paper: Pruned in 6 of 8): "
        f"{', '.join(f'{c}: {m}' for c, m in best_model.items())}",
    ]
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not Path(args.data_root).is_dir():
        print(f'unet.py: data root not found: {args.data_root}', file=sys.stderr)
        return 1
    work = Path(args.work_dir)
    out_dir = Path(args.out_dir) if args.out_dir else work
    data_root = prepare_data(Path(args.data_root), work / 'data')
    jobs = [
        dict(args=vars(args), combo=c, seed=s, data_root=str(data_root))
        for s in args.seeds
        for c in args.combos
    ]
    t0 = time.time()
    if args.costs_only:
        wd = work / f'{args.combos[0]}_s{args.seeds[0]}'
        job = dict(
            combo=args.combos[0],
            seed=args.seeds[0],
            ckpt=str(wd / 'base' / f'iter_{args.iters}.pth'),
            pruned_ckpt=str(wd / 'pruned' / f'iter_{args.prune_iters}.pth'),
        )
        if not Path(job['ckpt']).is_file():
            print(f"unet.py: {job['ckpt']} not trained yet", file=sys.stderr)
            return 1
        from celldata.fileio import atomic_write_json

        atomic_write_json(work / 'costs.json', measure_costs(args, data_root, job))
        print(f'unet.py: wrote {work / "costs.json"} ({time.time() - t0:.0f} s)')
        return 0
    results = []
    if args.report_only:
        for j in jobs:
            for folder in [work, *map(Path, args.also)]:
                f = folder / f"{j['combo']}_s{j['seed']}" / 'result.json'
                if f.is_file():
                    results.append(json.loads(f.read_text()))
                    break
    elif args.workers > 1:
        with mp.get_context('spawn').Pool(args.workers) as pool:
            for r in pool.imap_unordered(run_job, jobs, chunksize=1):
                results.append(r)
                write_report(args, results, {}, out_dir, time.time() - t0)
    else:
        for j in jobs:
            results.append(run_job(j))
            write_report(args, results, {}, out_dir, time.time() - t0)
    if not results:
        print('unet.py: no finished run to report', file=sys.stderr)
        return 1
    costs_file = work / 'costs.json'
    if costs_file.is_file():
        costs = json.loads(costs_file.read_text())
    else:
        costs = measure_costs(
            args, data_root, sorted(results, key=lambda r: (r['seed'], list(COMBOS).index(r['combo'])))[0]
        )
        from celldata.fileio import atomic_write_json

        atomic_write_json(costs_file, costs)
    write_report(args, results, costs, out_dir, time.time() - t0)
    print(
        f'unet.py: wrote {out_dir}/unet_study.{{json,md}} and unet_study_heatmap.png '
        f'({len(results)} runs, {time.time() - t0:.0f} s)'
    )
    return 0


def write_report(
    args: argparse.Namespace, results: list[dict], costs: dict, out_dir: Path, seconds: float
) -> None:
    """Table (Markdown + JSON) and heatmap of the finished runs."""
    from celldata.fileio import atomic_write_json

    table = aggregate(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        out_dir / 'unet_study.json',
        dict(settings=vars(args), table=table, costs=costs, runs=results, paper=PAPER, seconds=seconds),
    )
    write_markdown(args, table, costs, results, out_dir / 'unet_study.md')
    seeds = sorted({r['seed'] for r in results})
    heatmap(
        table,
        out_dir / 'unet_study_heatmap.png',
        f'U-Net study, {results[0]["n_val"]} held-out real images, seeds {seeds} (mean)',
    )


if __name__ == '__main__':
    sys.exit(main())
