"""CPU latency of the study's U-Net: int8 (torchao PT2E, X86InductorQuantizer) vs float, across widths.

For each U-Net width (``--widths``; paper: 64) the float model of ``configs/unet_study`` (random init, BN
folded at compile time) and its static int8 PT2E model (calibrated on ``--calib`` real training images of
the chosen size, or random inputs when the data is absent) are timed on one ``(1, 3, H, W)`` input (default
the whole 520x704 Sartorius image padded to 528x704) at ``--threads`` threads, median of ``--repeats`` runs
after 2 warm-ups:

- ``float_eager``: the float ``nn.Module``;
- ``float_compiled``: ``torch.compile`` (inductor, default settings);
- ``float_compiled_frozen``: ``torch.compile`` with inductor ``freezing`` (weights constant-folded and
  prepacked for oneDNN: the strongest straightforward float baseline);
- ``int8_reference``: the converted PT2E graph run eagerly (quantize / dequantize around fp32 ops);
- ``int8_compiled``: ``torch.compile`` with freezing (int8 oneDNN kernels; the only fast int8 form);
- ``int8up_compiled``: the same with the decoder up-sampling kept in int8 (``ptq_pt2e(int8_upsample=True)``:
  the stock recipe leaves it fp32).

``--profile`` adds a ``torch.profiler`` breakdown (self CPU time by op, grouped into convolutions and the
rest) of one run of each compiled model. Writes ``<stem>.json`` and ``<stem>.md`` to ``--out-dir``.
Random weights give the same latency as trained ones (same shapes, dense kernels).

Run: ``OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/bench_int8_latency.py --widths 8 16 32``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / 'configs' / 'unet_study' / 'unet-s5-c64_bce-adam_1xb8-8k_sartorius-cell-256x256.py'
DATA = REPO.parent / 'shared' / 'data' / 'sartorius_real_train'
VARIANTS = (
    'float_eager',
    'float_compiled',
    'float_compiled_frozen',
    'int8_reference',
    'int8_compiled',
    'int8up_compiled',
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--widths', type=int, nargs='+', default=[8, 16, 32])
    p.add_argument('--size', type=int, nargs=2, default=[528, 704], metavar=('H', 'W'))
    p.add_argument(
        '--size-for',
        nargs='*',
        default=[],
        metavar='WIDTH:HxW',
        help='other input size for some widths, e.g. 64:256x352',
    )
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--calib', type=int, default=2, help='calibration inputs')
    p.add_argument('--skip', nargs='*', default=[], choices=VARIANTS, help='variants not timed')
    p.add_argument('--profile', action='store_true', help='profile one run of each compiled model')
    p.add_argument('--out-dir', default=str(REPO / 'work_dirs' / 'bench_int8_latency'))
    p.add_argument('--stem', default='int8_latency')
    return p.parse_args(argv)


def calib_inputs(n: int, size: tuple[int, int]) -> tuple[list, str]:
    """``n`` normalized real training images (top-left ``size`` crop, zero-padded) or random inputs."""
    import cv2
    import numpy as np
    import torch

    files = sorted((DATA / 'train').glob('*.png'))[:n]
    if len(files) < n:
        return [torch.randn(1, 3, *size) for _ in range(n)], 'random normal'
    out = []
    for f in files:
        img = cv2.imread(str(f), cv2.IMREAD_COLOR)[: size[0], : size[1]].astype(np.float32)
        t = torch.from_numpy(img).permute(2, 0, 1)[None]
        t = (t - t.mean()) / (t.std() + 1e-6)
        out.append(torch.nn.functional.pad(t, (0, size[1] - t.shape[-1], 0, size[0] - t.shape[-2])))
    return out, f'{n} real training images (per-image standardized)'


def profile_ops(fn, x, top: int = 12) -> dict:
    """Self CPU time of one run of ``fn(x)`` grouped by op (ms) and into conv / other."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        fn(x)
    rows = [(e.key, e.self_cpu_time_total / 1000.0, e.count) for e in prof.key_averages()]
    rows = [r for r in rows if r[1] > 0]
    total = sum(r[1] for r in rows)
    conv = sum(r[1] for r in rows if 'conv' in r[0].lower())
    rows.sort(key=lambda r: -r[1])
    return dict(
        total_ms=total,
        conv_ms=conv,
        other_ms=total - conv,
        top=[dict(op=k, self_ms=ms, calls=c) for k, ms, c in rows[:top]],
    )


def measure_width(width: int, size: tuple[int, int], args: argparse.Namespace, log) -> dict:
    import torch

    from custom_modules.config import load_config
    from custom_modules.seg import compress as cp

    opts = {
        'model.backbone.base_channels': width,
        'model.decode_head.in_channels': width,
        'model.decode_head.channels': width,
    }
    torch.manual_seed(0)
    cfg = load_config(CONFIG, opts)
    fmod = cp.SegLogits(cp.build_segmentor(cfg)).eval()
    x = torch.randn(1, 3, *size)
    calib, calib_desc = calib_inputs(args.calib, size)
    row: dict = dict(width=width, input=[1, 3, *size], params=cp.count_parameters(fmod)['params'])
    row['calibration'] = calib_desc
    t = time.time()
    q = cp.ptq_pt2e(fmod, calib)
    row['ptq_s'] = time.time() - t
    qup = cp.ptq_pt2e(fmod, calib, int8_upsample=True) if 'int8up_compiled' not in args.skip else None
    models = {
        'float_eager': (fmod, None),
        'float_compiled': (fmod, False),
        'float_compiled_frozen': (fmod, True),
        'int8_reference': (q, None),
        'int8_compiled': (q, True),
        'int8up_compiled': (qup, True),
    }
    lat, compile_s, outs, profiles = {}, {}, {}, {}
    for name, (module, freezing) in models.items():
        if name in args.skip:
            continue
        if freezing is not None:
            torch._dynamo.reset()  # else a second compile of the same module reuses the first graph
        fn = module if freezing is None else cp.compile_module(module, name.startswith('int8'), freezing)
        t = time.time()
        with torch.no_grad():
            outs[name] = fn(x).float()
        if freezing is not None:
            compile_s[name] = time.time() - t
        lat[name] = cp.latency_ms(fn, x, args.repeats, warmup=1)
        log(f'width {width} {name}: {lat[name]:.1f} ms')
        if args.profile and freezing is not None:
            profiles[name] = profile_ops(fn, x)
    row.update(latency_ms=lat, compile_s=compile_s, profile=profiles)
    ref = outs.get('float_eager')
    if ref is not None:
        row['max_abs_diff_vs_float_eager'] = {
            k: float((v - ref).abs().max()) for k, v in outs.items() if k != 'float_eager'
        }
    if 'int8_compiled' in outs and 'int8_reference' in outs:
        row['int8_compiled_vs_reference_max_abs_diff'] = float(
            (outs['int8_compiled'] - outs['int8_reference']).abs().max()
        )
    if ref is not None:
        row['sqnr_db_vs_float_eager'] = {
            k: cp.fidelity([ref], [v])['sqnr_db'] for k, v in outs.items() if k.startswith('int8')
        }
    return row


def ratio(lat: dict, num: str, den: str) -> str:
    """``lat[num] / lat[den]`` as ``'0.45x'`` (``'-'`` when either was not timed)."""
    return f'{lat[num] / lat[den]:.2f}x' if num in lat and den in lat else '-'


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    import torch

    lines = [
        f'# int8 vs float CPU latency of the study U-Net (torch {torch.__version__}, {args.threads} thread(s))',
        '',
        f'Median of {args.repeats} runs after warm-up, batch 1, random weights (latency does not depend on '
        'them), one process alone on one pinned core. int8 = torchao PT2E static int8 (X86InductorQuantizer: '
        'per-channel weights, per-tensor uint8 activations); compiled = inductor; "frozen" = inductor '
        '`freezing=True` (int8 always compiles frozen).',
        '',
        '| width | input | params | float eager | float compiled | float compiled frozen | int8 reference '
        '(eager) | int8 compiled | int8 / float compiled | int8 / float frozen | int8 / float eager | '
        'int8 + int8 upsample compiled | its / float compiled | its / float frozen |',
        '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|',
    ]
    fmt = lambda d, k: f'{d[k]:.1f}' if k in d else '-'  # noqa: E731
    for r in rows:
        lat = r['latency_ms']
        lines.append(
            f"| {r['width']} | {r['input'][2]}x{r['input'][3]} | {r['params']} | {fmt(lat, 'float_eager')} | "
            f"{fmt(lat, 'float_compiled')} | {fmt(lat, 'float_compiled_frozen')} | {fmt(lat, 'int8_reference')} | "
            f"{fmt(lat, 'int8_compiled')} | {ratio(lat, 'int8_compiled', 'float_compiled')} | "
            f"{ratio(lat, 'int8_compiled', 'float_compiled_frozen')} | "
            f"{ratio(lat, 'int8_compiled', 'float_eager')} | {fmt(lat, 'int8up_compiled')} | "
            f"{ratio(lat, 'int8up_compiled', 'float_compiled')} | "
            f"{ratio(lat, 'int8up_compiled', 'float_compiled_frozen')} |"
        )
    prof_rows = [r for r in rows if r.get('profile')]
    if prof_rows:
        lines += [
            '',
            '## Where the time goes (torch.profiler, self CPU time of one run)',
            '',
            '| width | model | total (ms) | conv ops (ms) | other ops (ms) | top ops (self ms) |',
            '|---|---|---|---|---|---|',
        ]
        for r in prof_rows:
            for name, p in r['profile'].items():
                top = '; '.join(f"{t['op']} {t['self_ms']:.0f}" for t in p['top'][:6])
                lines.append(
                    f"| {r['width']} | {name} | {p['total_ms']:.0f} | {p['conv_ms']:.0f} | {p['other_ms']:.0f} | "
                    f'{top} |'
                )
    return '\n'.join(lines) + '\n'


def main(argv: list[str] | None = None) -> int:
    import torch

    from celldata.fileio import atomic_write_json, atomic_write_text

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = {}
    for item in args.size_for:
        w, hw = item.split(':')
        h, wd = hw.lower().split('x')
        sizes[int(w)] = (int(h), int(wd))
    out = Path(args.out_dir)
    rows = []
    for width in args.widths:
        size = sizes.get(width, tuple(args.size))
        rows.append(measure_width(width, size, args, lambda m: print(f'[int8_latency] {m}', flush=True)))
        atomic_write_json(out / f'{args.stem}.json', dict(settings=vars(args), rows=rows))
        atomic_write_text(out / f'{args.stem}.md', markdown(rows, args))
    print(json.dumps([{k: r[k] for k in ('width', 'latency_ms')} for r in rows], indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
