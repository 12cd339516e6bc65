"""The FRE paper's comparison (its Tables 1-3) at CPU scale on the real Sartorius training images.

Rows (configs/unet/se-unet-brn*_c8-*_1xb4-160iter_sartorius-cell-64x64.py, batch renormalization as in the
paper): U-Net+SE, without deep layers, deep supervision (lambda from a TPE search), dropout at rate B/C, FRE
(B, X from a TPE search), FRE + precise BN (norm statistics recomputed with FRE off), fixed-filter FRE; and
FRE with plain BatchNorm (with and without precise BN) to measure the normalization choice. Every row trains
with the same budget and the same seeds; the TPE searches run on another fold than the table, so the table's
validation images never chose a hyperparameter.

Steps (each resumable: a run whose result.json exists is skipped, searches continue their sqlite study):
    search-fre, search-ds, <row names>, report. Split them over processes with --steps, e.g.
    OMP_NUM_THREADS=1 nice -n 10 python studies/fre.py --steps search-fre fre fre-precisebn dropout
    OMP_NUM_THREADS=1 nice -n 10 python studies/fre.py --steps baseline no-deep fixed-fre search-ds ds
    python studies/fre.py --steps report --md docs/results/fre_study.md

Outputs under --out (default work_dirs/fre_study): search/{fre,ds}/ (study.db, trials.csv, plots,
best_config.py), runs/<labels>/<row>/seed<k>/ (run dir + result.json), results.json, fre_study.md and PNGs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / 'shared'
CFG_DIR = REPO / 'configs' / 'unet'
SUFFIX = '_c8-s4_1xb4-160iter_sartorius-cell-64x64.py'
CONFIGS = {
    'baseline': f'se-unet-brn{SUFFIX}',
    'no-deep': 'se-unet-brn_c8-s3_1xb4-160iter_sartorius-cell-64x64.py',
    'ds': f'se-unet-brn-ds{SUFFIX}',
    'dropout': f'se-unet-brn-dropout{SUFFIX}',
    'fre': f'se-unet-brn-fre{SUFFIX}',
    'fre-precisebn': f'se-unet-brn-fre-precisebn{SUFFIX}',
    'fixed-fre': f'se-unet-brn-fixedfre{SUFFIX}',
    'fre-bn': f'se-unet-brn-fre{SUFFIX}',
    'fre-bn-precisebn': f'se-unet-brn-fre-precisebn{SUFFIX}',
}
LABELS = {
    'U-Net + SE block (BRN)': 'baseline',
    'U-Net + SE block without deep layers': 'no-deep',
    'U-Net + SE block + SuperVision': 'ds',
    'Dropout (same percentage as FRE)': 'dropout',
    'FRE (proposed method)': 'fre',
    'FRE + precise BN': 'fre-precisebn',
    'Fixed-filter FRE (10 channels x 10,000)': 'fixed-fre',
    'FRE with plain BN': 'fre-bn',
    'FRE with plain BN + precise BN': 'fre-bn-precisebn',
}
ROWS = list(CONFIGS)
BOTTLENECK = 64
SPACES = {'fre': CFG_DIR / 'search' / 'fre_b_x.yaml', 'ds': CFG_DIR / 'search' / 'ds_lambda.yaml'}
LABEL_SETS = {
    'cell': dict(classes=('background', 'cell'), opts={}),
    'boundary': dict(
        classes=('background', 'cell', 'boundary'),
        opts={
            'train_dataloader.dataset.type': 'SartoriusCellBoundaryDataset',
            'train_dataloader.dataset.data_prefix.seg_map_path': 'semantic/train_boundary',
            'val_dataloader.dataset.type': 'SartoriusCellBoundaryDataset',
            'val_dataloader.dataset.data_prefix.seg_map_path': 'semantic/train_boundary',
            'test_dataloader.dataset.type': 'SartoriusCellBoundaryDataset',
            'test_dataloader.dataset.data_prefix.seg_map_path': 'semantic/train_boundary',
            'model.decode_head.num_classes': 3,
            # the CE's class weights follow the label set (cells and boundaries weighted like cells)
            'model.decode_head.loss_decode.0.class_weight': [1.0, 4.0, 4.0],
        },
    ),
}
BN_OPTS = {
    'model.backbone.norm_cfg': dict(_delete_=True, type='BN', requires_grad=True),
    'model.decode_head.norm_cfg': dict(_delete_=True, type='BN', requires_grad=True),
}


def prepare_data(out: Path) -> Path:
    """Copy the 26 real images to ``out/data`` and prepare them there (prepare writes into its root)."""
    root = out / 'data'
    if (root / 'splits' / 'fold0_val.txt').is_file():
        return root
    src = SHARED / 'data' / 'sartorius_real_train'
    if not (src / 'train.csv').is_file():
        raise FileNotFoundError(f'real training images not found: {src} (pass --data-root)')
    from celldata.prepare import prepare_sartorius

    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(src, root)
    prepare_sartorius(root, show_progress=False)
    return root


def downscale_data(root: Path, factor: int = 2) -> Path:
    """A copy of a prepared root with images (area) and label maps (nearest) downscaled ``factor`` x.

    Splits are copied; labels keep their values. Written once to ``<root>_x{factor}`` (reused after).
    """
    import cv2

    from celldata.fileio import atomic_write_png

    dst = root.parent / f'{root.name}_x{factor}'
    if (dst / 'splits' / 'fold0_val.txt').is_file():
        return dst
    for sub, interp in (('train', cv2.INTER_AREA), ('semantic/train', cv2.INTER_NEAREST)):
        for png in sorted((root / sub).glob('*.png')):
            img = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
            if img is None:
                raise ValueError(f'cannot read image {png}')
            size = (img.shape[1] // factor, img.shape[0] // factor)
            atomic_write_png(dst / sub / png.name, cv2.resize(img, size, interpolation=interp))
    # boundary labels: downscale the boundary mask with max-pooling so thin boundaries survive
    for png in sorted((root / 'semantic' / 'train_boundary').glob('*.png')):
        lab = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
        h, w = lab.shape[0] // factor, lab.shape[1] // factor
        blocks = lab[: h * factor, : w * factor].reshape(h, factor, w, factor)
        small = cv2.resize(lab, (w, h), interpolation=cv2.INTER_NEAREST)
        small[(blocks == 4).any(axis=(1, 3))] = 4
        atomic_write_png(dst / 'semantic' / 'train_boundary' / png.name, small)
    shutil.copytree(root / 'splits', dst / 'splits', dirs_exist_ok=True)
    return dst


def _best_params(out: Path, name: str, trials: int | None = None, wait_s: float = 3600.0) -> dict:
    """Best parameters of search ``name``; with ``trials``, first wait until it has that many finished
    trials (another process may still be running it)."""
    import optuna

    from workflow.search import _finished_count

    db = out / 'search' / name / 'study.db'
    deadline = time.time() + wait_s
    while True:
        if db.is_file():
            study = optuna.load_study(study_name='search', storage=f'sqlite:///{db.resolve()}')
            if trials is None or _finished_count(study) >= trials:
                return dict(study.best_trial.params)
        if trials is None or time.time() > deadline:
            raise FileNotFoundError(f'run the search-{name} step first ({db} missing or unfinished)')
        time.sleep(30)


def row_options(row: str, out: Path, labels: str, trials: dict[str, int] | None = None) -> dict:
    """Overrides of one row: searched hyperparameters, label set, norm layer."""
    from workflow.search import load_search_space, params_to_cfg_options

    opts = dict(LABEL_SETS[labels]['opts'])
    if row == 'ds' and labels == 'boundary':
        opts['model.auxiliary_head.num_classes'] = 3
    if row in ('fre', 'fre-precisebn', 'fre-bn', 'fre-bn-precisebn'):
        opts.update(
            params_to_cfg_options(
                load_search_space(SPACES['fre']), _best_params(out, 'fre', (trials or {}).get('fre'))
            )
        )
    if row == 'dropout':
        b = _best_params(out, 'fre', (trials or {}).get('fre'))['model.backbone.fre_cfg.num_enhanced']
        opts['model.backbone.bottleneck_dropout'] = b / BOTTLENECK
    if row == 'ds':
        opts.update(
            params_to_cfg_options(
                load_search_space(SPACES['ds']), _best_params(out, 'ds', (trials or {}).get('ds'))
            )
        )
    if row.startswith('fre-bn'):
        opts.update(BN_OPTS)
    return opts


def run_row(row: str, seed: int, args: argparse.Namespace, labels: str) -> dict:
    """Train one row with one seed on the evaluation fold (skipped if its result.json exists)."""
    from workflow.search import train_and_score

    run_dir = args.out / 'runs' / labels / row / f'seed{seed}'
    result_path = run_dir / 'result.json'
    if result_path.is_file():
        return json.loads(result_path.read_text())
    opts = {
        'data_root': str(args.data_root),
        'fold': args.eval_fold,
        'randomness.seed': seed,
        **_smoke_options(args),
        **row_options(row, args.out, labels, {'fre': args.fre_trials, 'ds': args.ds_trials}),
    }
    t0 = time.time()
    stats: dict = {}

    from mmengine.hooks import Hook

    class _NormStats(Hook):
        priority = 'LOWEST'

        def after_train(self, runner) -> None:
            net = runner.model.module if hasattr(runner.model, 'module') else runner.model
            bn = net.backbone.decoder[0].conv1.bn  # first norm layer after the bottleneck
            stats['decoder0_bn_running_var_mean'] = float(bn.running_var.mean())

    value, metrics = train_and_score(
        CFG_DIR / CONFIGS[row], opts, run_dir, 'mIoU', 'maximize', extra_hooks=[_NormStats()]
    )
    result = dict(
        row=row,
        seed=seed,
        labels=labels,
        mIoU=value,
        metrics=metrics,
        train_s=round(time.time() - t0, 1),
        options={k: v for k, v in opts.items() if k != 'data_root'},
        **stats,
    )
    from celldata.fileio import atomic_write_json

    atomic_write_json(result_path, result)
    for ckpt in run_dir.glob('*.pth'):
        ckpt.unlink()
    return result


def _smoke_options(args: argparse.Namespace) -> dict:
    """``--smoke-iters N``: N iterations (plumbing checks only: the LR/BRN schedules keep 160)."""
    if not args.smoke_iters:
        return {}
    n = args.smoke_iters
    return {'train_cfg.max_iters': n, 'train_cfg.val_interval': n, 'default_hooks.checkpoint.interval': n}


def run_search_step(name: str, args: argparse.Namespace) -> None:
    """TPE search of the FRE (B, X) or the deep-supervision lambda on the search fold."""
    from workflow.search import run_search

    config = CFG_DIR / CONFIGS['fre' if name == 'fre' else 'ds']
    trials = args.fre_trials if name == 'fre' else args.ds_trials
    run_search(
        config,
        SPACES[name],
        trials,
        args.out / 'search' / name,
        metric='mIoU',
        direction='max',
        cfg_options={
            'data_root': str(args.data_root),
            'fold': args.search_fold,
            'randomness.seed': 0,
            **_smoke_options(args),
        },
        seed=0,
        startup_trials=args.startup_trials,
    )


def latency_ms(rows: list[str], rounds: int = 7) -> dict[str, tuple[float, int]]:
    """Single-thread whole-image (1x3x520x704) inference CPU time and parameter count per row.

    The rows are measured round-robin, ``rounds`` times each, and the minimum is kept: on a shared machine
    that is the measurement least inflated by other processes.
    """
    import torch
    from mmseg.registry import MODELS

    from custom_modules.config import load_config
    from custom_modules.runner_utils import register_library

    torch.set_num_threads(1)
    models = {}
    for row in rows:
        cfg = load_config(CFG_DIR / CONFIGS[row])
        register_library(cfg)
        models[row] = MODELS.build(cfg.model).eval()
    x = torch.randn(1, 3, 520, 704)
    times: dict[str, list[float]] = {row: [] for row in rows}
    with torch.no_grad():
        for model in models.values():
            model(x, mode='tensor')
        for _ in range(rounds):
            for row, model in models.items():
                t = time.process_time()  # CPU time of this process (one thread)
                model(x, mode='tensor')
                times[row].append(time.process_time() - t)
    return {row: (1000 * min(times[row]), sum(p.numel() for p in models[row].parameters())) for row in rows}


def _fmt(values: list[float]) -> str:
    if not values:
        return '-'
    if len(values) == 1:
        return f'{values[0]:.2f}'
    return f'{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}'


def report(args: argparse.Namespace) -> str:
    """Aggregate result.json files into results.json, the Markdown table and the PNGs."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    from celldata.fileio import atomic_write_json, atomic_write_text

    results = [json.loads(p.read_text()) for p in sorted((args.out / 'runs').glob('*/*/seed*/result.json'))]
    searches = {}
    for name in ('fre', 'ds'):
        try:
            import optuna

            db = args.out / 'search' / name / 'study.db'
            study = optuna.load_study(study_name='search', storage=f'sqlite:///{db.resolve()}')
            done = [t for t in study.trials if t.state.name == 'COMPLETE']
            searches[name] = dict(
                trials=len(study.trials),
                complete=len(done),
                best=study.best_trial.params,
                best_value=study.best_value,
            )
        except (FileNotFoundError, KeyError, ValueError):
            continue
    lat = {}
    rows_present = [r for r in ROWS if any(x['row'] == r for x in results)]
    for row, (ms, params) in latency_ms(rows_present).items():
        lat[row] = dict(ms=round(ms, 1), params=params)
    atomic_write_json(args.out / 'results.json', dict(runs=results, searches=searches, latency=lat))
    n_train = len((Path(args.data_root) / 'splits' / f'fold{args.eval_fold}_train.txt').read_text().split())
    n_val = len((Path(args.data_root) / 'splits' / f'fold{args.eval_fold}_val.txt').read_text().split())
    n_strain = len(
        (Path(args.data_root) / 'splits' / f'fold{args.search_fold}_train.txt').read_text().split()
    )
    n_sval = len((Path(args.data_root) / 'splits' / f'fold{args.search_fold}_val.txt').read_text().split())
    seeds = sorted({r['seed'] for r in results})
    lines = [
        '# FRE study on the real Sartorius images (CPU scale)',
        '',
        f'Generated by `studies/fre.py` ({time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}).',
        '',
        f'Setup: the 26 real labelled training images, downscaled {args.downscale}x; table rows trained on fold '
        f'{args.eval_fold} ({n_train} images) and validated on its {n_val} held-out images (whole images); TPE '
        f'searches trained on fold {args.search_fold} ({n_strain} images) and scored on its {n_sval} held-out '
        f'images (fold {args.search_fold} validation images are in the fold {args.eval_fold} training set, never '
        f'in its validation set). SE-U-Net 8-16-32-64 channels, 64x64 random crops, batch 4, 160 iterations '
        f'(AdamW, CE + Dice), seeds {seeds}; mean ± sample std over seeds. Latency: CPU time of one forward '
        'pass of a whole 704x520 image, batch 1, one thread, minimum of 7 round-robin rounds (ratio to the baseline '
        'in brackets; the machine was shared, so differences under about 10 % are noise).',
        '',
    ]
    res_md = args.md.parent if args.md else args.out
    for labels in LABEL_SETS:
        sub = [r for r in results if r['labels'] == labels]
        if not sub:
            continue
        classes = LABEL_SETS[labels]['classes']
        lines += [
            f'## Labels: {" / ".join(classes)}',
            '',
            '| method | ' + ' | '.join(f'{c} IoU [%]' for c in classes) + ' | mIoU [%] | seeds | '
            'Δ mIoU vs baseline (Welch p) | decoder BN running var | latency [ms] | params |',
            '|---|' + '---:|' * (len(classes) + 6),
        ]
        names, means, stds = [], [], []
        for title, row in LABELS.items():
            rr = [r for r in sub if r['row'] == row]
            if not rr:
                continue
            cols = [_fmt([r['metrics'].get(f'IoU.{c}', float('nan')) for r in rr]) for c in classes]
            miou = [r['mIoU'] for r in rr]
            var = _fmt([r.get('decoder0_bn_running_var_mean', float('nan')) for r in rr])
            base = [r['mIoU'] for r in sub if r['row'] == 'baseline']
            delta = '-'
            if row != 'baseline' and len(base) > 1 and len(miou) > 1:
                from scipy.stats import ttest_ind

                p = ttest_ind(miou, base, equal_var=False).pvalue
                delta = f'{statistics.mean(miou) - statistics.mean(base):+.2f} (p={p:.2f})'
            lt = lat.get(row, {})
            base_ms = lat.get('baseline', {}).get('ms')
            ms = f'{lt["ms"]} ({lt["ms"] / base_ms:.2f}x)' if lt and base_ms else lt.get('ms', '-')
            lines.append(
                f'| {title} | ' + ' | '.join(cols) + f' | {_fmt(miou)} | {len(rr)} | {delta} | {var} | '
                f'{ms} | {lt.get("params", "-")} |'
            )
            names.append(title)
            means.append(statistics.mean(miou))
            stds.append(statistics.stdev(miou) if len(miou) > 1 else 0.0)
        lines.append('')
        fig, ax = plt.subplots(figsize=(8, 0.5 * len(names) + 1.5))
        ax.barh(names[::-1], means[::-1], xerr=stds[::-1], color='tab:blue', alpha=0.8, capsize=3)
        ax.set_xlabel('mIoU [%] (mean ± std over seeds)')
        lo = min(m - s for m, s in zip(means, stds, strict=True))
        ax.set_xlim(max(0.0, lo - 5), min(100.0, max(m + s for m, s in zip(means, stds, strict=True)) + 2))
        ax.set_title(f'FRE study, {labels} labels')
        fig.tight_layout()
        png = res_md / f'fre_study_{labels}_miou.png'
        png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(png, dpi=100)
        plt.close(fig)
        lines += [f'![mIoU per row, {labels} labels]({png.name})', '']
    for name, info in searches.items():
        lines.append(
            f'- TPE search `{name}`: {info["trials"]} trials ({info["complete"]} complete), best '
            f'{info["best"]} with validation mIoU {info["best_value"]:.2f} (search fold).'
        )
        for plot in ('history', 'param_scatter'):
            src = args.out / 'search' / name / f'{plot}.png'
            if src.is_file():
                dst = res_md / f'fre_study_tpe_{name}_{plot}.png'
                shutil.copyfile(src, dst)
                lines.append(f'  ![TPE {name} {plot}]({dst.name})')
    text = '\n'.join(lines) + '\n'
    atomic_write_text(args.out / 'fre_study_table.md', text)
    return text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--steps', nargs='+', default=['search-fre', 'search-ds', *ROWS, 'report'])
    p.add_argument('--out', type=Path, default=REPO / 'work_dirs' / 'fre_study')
    p.add_argument(
        '--data-root', type=Path, help='prepared data root (default: prepare a copy of the real images)'
    )
    p.add_argument(
        '--downscale',
        type=int,
        default=2,
        help='train and validate on images downscaled N x (default 2; 1: full size)',
    )
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    p.add_argument('--labels', nargs='+', choices=list(LABEL_SETS), default=['cell'])
    p.add_argument('--fre-trials', type=int, default=8)
    p.add_argument('--ds-trials', type=int, default=4)
    p.add_argument(
        '--startup-trials', type=int, default=10, help='random trials before TPE (optuna default 10)'
    )
    p.add_argument('--search-fold', type=int, default=1)
    p.add_argument('--eval-fold', type=int, default=0)
    p.add_argument('--smoke-iters', type=int, default=0, help='train N iterations only (plumbing check)')
    p.add_argument('--md', type=Path, help='also write the report table here (PNGs next to it)')
    args = p.parse_args(argv)
    unknown = [s for s in args.steps if s not in (*ROWS, 'search-fre', 'search-ds', 'report')]
    if unknown:
        p.error(f'unknown steps {unknown}; choose from search-fre, search-ds, {", ".join(ROWS)}, report')
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the requested steps in order."""
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        args.data_root = args.data_root or prepare_data(args.out)
        if args.downscale > 1:
            args.data_root = downscale_data(args.data_root, args.downscale)
    except FileNotFoundError as e:
        print(f'fre.py: error: {e}', file=sys.stderr)
        return 2
    for step in args.steps:
        if step.startswith('search-'):
            run_search_step(step.split('-', 1)[1], args)
        elif step == 'report':
            text = report(args)
            if args.md:
                from celldata.fileio import atomic_write_text

                atomic_write_text(args.md, text)
            print(text)
        else:
            for labels in args.labels:
                for seed in args.seeds:
                    r = run_row(step, seed, args, labels)
                    print(f'{labels} {step} seed {seed}: mIoU {r["mIoU"]:.2f} {r["metrics"]}', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
