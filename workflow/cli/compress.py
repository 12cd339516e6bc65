"""Compress a trained mmseg segmentor: int8 PTQ, quantization-aware fine-tuning, structured channel pruning.

Each command writes ``<cmd>.json``, ``<cmd>.md`` (table) and ``<cmd>.png`` to ``--work-dir``: saved size
(``torch.export.save`` of the cleaned model), parameter and non-zero counts, CPU latency (``--threads``,
median of ``--repeats``; eager and ``torch.compile``), accuracy / F1 / Jaccard / recall / precision on the
config's validation images before and after, and the fidelity of the compressed logits to the float ones.
The saved programs (``*.pt2``) load with ``torch.export.load``. Logic: ``custom_modules.seg.compress``.

Examples:
    python tools/compress.py ptq CONFIG CKPT --work-dir work_dirs/ptq --calib-images 8
    python tools/compress.py qat CONFIG CKPT --work-dir work_dirs/qat --iters 200 --lr 1e-5
    python tools/compress.py prune-structured CONFIG CKPT --ratio 0.5 --iters 200
Unstructured (magnitude) pruning is a training hook instead: ``custom_hooks = [dict(type='MagnitudePruningHook')]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmengine.config import DictAction


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments (exits 2 with one message for an invalid combination)."""
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument('command', choices=['ptq', 'qat', 'prune-structured'])
    parser.add_argument('config', help='mmseg config of the trained model')
    parser.add_argument('checkpoint', help='float checkpoint')
    parser.add_argument(
        '--work-dir', default=None, help='output folder (default work_dirs/compress/<config>/<cmd>)'
    )
    parser.add_argument('--data-root', default=None, help='replace the datasets data_root')
    parser.add_argument('--calib-images', type=int, default=8, help='training images used for calibration')
    parser.add_argument(
        '--iters', type=int, default=100, help='fine-tuning iterations (qat, prune-structured)'
    )
    parser.add_argument(
        '--lr', type=float, default=None, help="fine-tuning learning rate (default: the config's)"
    )
    parser.add_argument(
        '--ratio', type=float, default=0.5, help='channel fraction removed by prune-structured'
    )
    parser.add_argument('--threads', type=int, default=1, help='CPU threads of the latency measurements')
    parser.add_argument('--repeats', type=int, default=10, help='timed runs per latency (median)')
    parser.add_argument(
        '--latency-size',
        type=int,
        nargs=2,
        default=None,
        metavar=('H', 'W'),
        help='timed input size (default: the first validation image, padded to 16)',
    )
    parser.add_argument('--no-compile', action='store_true', help='skip the torch.compile latencies')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default=None, help='config overrides')
    args = parser.parse_args(argv)
    for name in ('calib_images', 'iters', 'threads', 'repeats'):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if not 0.0 < args.ratio < 1.0:
        parser.error('--ratio must be in (0, 1)')
    return args


def main(argv: list[str] | None = None) -> int:
    """Compress and report; returns the exit status (2 for a missing file or bad input: one line on stderr)."""
    args = parse_args(argv)
    from custom_modules.seg.compress import run_compression

    for path, what in ((args.config, 'config'), (args.checkpoint, 'checkpoint')):
        if not Path(path).is_file():
            print(f'compress: {what} not found: {path}', file=sys.stderr)
            return 2
    work_dir = args.work_dir or str(Path('work_dirs') / 'compress' / Path(args.config).stem / args.command)
    from celldata.fileio import check_output_path

    try:
        check_output_path(work_dir, 'dir', '--work-dir')
        report = run_compression(
            args.command,
            args.config,
            args.checkpoint,
            work_dir,
            data_root=args.data_root,
            cfg_options=args.cfg_options,
            calib_images=args.calib_images,
            iters=args.iters,
            lr=args.lr,
            ratio=args.ratio,
            threads=args.threads,
            repeats=args.repeats,
            latency_size=tuple(args.latency_size) if args.latency_size else None,
            compile_models=not args.no_compile,
            seed=args.seed,
            logger=lambda msg: print(f'compress: {msg}', flush=True),
        )
    except (ValueError, FileNotFoundError) as err:
        print(f'compress: {err}', file=sys.stderr)
        return 2
    for v in report['variants']:
        m = v['metrics']
        print(
            f"{v['name']:>20}: jaccard {m['jaccard']:.4f} f1 {m['f1']:.4f} size {v['size_bytes'] / 1e6:.3f} MB "
            f"latency {v['latency_ms']}"
        )
    print(f'compress: report in {work_dir}/{args.command.replace("-", "_")}.{{json,md,png}}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
