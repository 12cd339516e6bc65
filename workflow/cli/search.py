"""Hyperparameter search (optuna TPE) over config keys, one short training run per trial.

Examples:
    python tools/search.py configs/unet/se-unet-brn-fre_c8-s4_1xb4-160iter_sartorius-cell-64x64.py \\
        --space configs/unet/search/fre_b_x.yaml --trials 12 --study-dir work_dirs/search/fre \\
        --metric mIoU --direction max --cfg-options data_root=data/sartorius/ fold=1
    # interrupted? run the same command again: finished trials are kept, the study continues.

Search-space YAML: ``config.key: {type: int|float|categorical, low, high, log, step, choices, targets}``
(see workflow/search.py). Outputs in --study-dir: study.db (sqlite, resumable), trials/<n>/ (run
directories), trials.csv, history.png, param_scatter.png, importance.png, best_config.py.
"""

from __future__ import annotations

import argparse
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    from mmengine.config import DictAction

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('config', help='config file to search over')
    p.add_argument('--space', required=True, help='search-space YAML file')
    p.add_argument('--trials', type=int, required=True, help='total number of finished trials in the study')
    p.add_argument('--study-dir', required=True, help='directory of study.db, trial runs and outputs')
    p.add_argument('--metric', default='mIoU', help='validation metric key to optimize (default mIoU)')
    p.add_argument(
        '--direction', choices=['max', 'min'], default='max', help='optimize direction (default max)'
    )
    p.add_argument(
        '--pruner',
        choices=['none', 'median', 'hyperband'],
        default='none',
        help='stop bad trials early from their intermediate validations (default none)',
    )
    p.add_argument('--seed', type=int, default=0, help='TPE sampler seed (default 0)')
    p.add_argument(
        '--startup-trials',
        type=int,
        default=10,
        help='random trials before TPE takes over (default 10, optuna\'s; lower it for small budgets)',
    )
    p.add_argument('--study-name', default='search', help='study name inside study.db (default search)')
    p.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='fixed overrides for every trial, e.g. data_root=DIR fold=1 train_cfg.max_iters=200',
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run or resume the search; returns the exit status."""
    args = parse_args(argv)
    from celldata.fileio import check_output_path
    from workflow.search import SearchSpaceError, run_search

    try:
        check_output_path(args.study_dir, 'dir', '--study-dir')
        study = run_search(
            args.config,
            args.space,
            args.trials,
            args.study_dir,
            metric=args.metric,
            direction=args.direction,
            cfg_options=args.cfg_options,
            pruner=args.pruner,
            seed=args.seed,
            study_name=args.study_name,
            startup_trials=args.startup_trials,
        )
    except (SearchSpaceError, FileNotFoundError, ValueError, KeyError) as e:
        print(f'search.py: error: {e}', file=sys.stderr)
        return 2
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    states = [t.state.name for t in study.trials]
    summary = ', '.join(f'{states.count(s)} {s.lower()}' for s in sorted(set(states)))
    print(f'search.py: {len(study.trials)} trials ({summary}) in {args.study_dir}')
    if not complete:
        print('search.py: error: no trial completed', file=sys.stderr)
        return 1
    best = study.best_trial
    print(f'search.py: best trial {best.number}: {args.metric} = {best.value:.4f} with {best.params}')
    print(f'search.py: best config: {args.study_dir}/best_config.py')
    return 0


if __name__ == '__main__':
    sys.exit(main())
