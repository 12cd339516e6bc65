"""Hyperparameter search over any config keys with optuna's TPE, one short Runner training per trial.

The search space is a YAML mapping from parameter name to its distribution::

    model.backbone.fre_cfg.num_enhanced: {type: int, low: 1, high: 64}
    model.backbone.fre_cfg.factor: {type: float, low: 1.0, high: 1000.0, log: true}
    optim_wrapper.optimizer.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
    model.decode_head.dropout_ratio: {type: categorical, choices: [0.0, 0.1]}
    ds_lambda:                     # one parameter driving several config keys (scale * value + offset)
      type: float
      low: 0.05
      high: 0.6
      targets:
        model.auxiliary_head.loss_decode.loss_weight: {}
        model.decode_head.loss_decode.0.loss_weight: {scale: -1.0, offset: 1.0}

Spec keys: ``type`` (int | float | categorical), ``low``/``high`` (int, float; ``low < high``), ``log``
(``low > 0``), ``step`` (> 0, not with ``log``), ``choices`` (categorical), ``targets`` (config keys; default:
the parameter name itself). Every target must exist in the config (list items by index, ``a.0.b``).
Anything else is one :class:`SearchSpaceError` naming the file, parameter and field.

Each trial trains the config through the normal mmengine Runner (``custom_modules.runner_utils``) with the
trial's values as ``--cfg-options`` in ``<study_dir>/trials/<number>``, and scores it by the best value of
the validation metric ``metric`` over the validations of the run. Trials live in ``<study_dir>/study.db``
(sqlite), so a search that is interrupted resumes where it stopped: trials left ``RUNNING`` by a killed process
are marked ``FAIL`` (and their parameters queued again); a trial that raises is marked ``FAIL``. ``trials``
is the total number of finished trials (complete, pruned or failed) the study should have. With a pruner,
every validation is reported and bad trials stop early. Outputs: ``trials.csv``, the paper's plots
(``param_scatter.png``: the first two numeric parameters of every trial coloured by the objective, as the
paper's Figures 7-8; ``history.png``; with two or more parameters ``contour.png`` and ``importance.png``) and ``best_config.py``, a leaf config over the searched config
with the best trial's values.
"""

from __future__ import annotations

import math
import os
import os.path as osp
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    'SearchSpaceError',
    'ParamSpec',
    'load_search_space',
    'parse_search_space',
    'check_space_against_config',
    'suggest_params',
    'params_to_cfg_options',
    'train_and_score',
    'run_search',
    'write_study_outputs',
    'best_config_text',
]

_SPEC_KEYS = {'type', 'low', 'high', 'log', 'step', 'choices', 'targets'}
_TARGET_KEYS = {'scale', 'offset'}
_TYPES = ('int', 'float', 'categorical')
_PRUNERS = ('none', 'median', 'hyperband')
_DIRECTIONS = {'max': 'maximize', 'maximize': 'maximize', 'min': 'minimize', 'minimize': 'minimize'}


class SearchSpaceError(ValueError):
    """A search-space file that cannot be used (unknown key, bad range, unknown config key)."""


@dataclass(frozen=True)
class ParamSpec:
    """One searched parameter.

    Attributes:
        name: Parameter name (a config key unless ``targets`` says otherwise).
        type: ``'int'``, ``'float'`` or ``'categorical'``.
        low: Lower bound (int/float).
        high: Upper bound (int/float), inclusive.
        log: Sample on a log scale.
        step: Discretization step (or ``None``).
        choices: Categorical values.
        targets: ``(config key, scale, offset)``: the key is set to ``scale * value + offset`` (categorical:
            the value itself).
    """

    name: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()
    targets: tuple[tuple[str, float, float], ...] = field(default_factory=tuple)


def _number(src: str, name: str, key: str, value: Any, integer: bool) -> float:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not math.isfinite(value):
        kind = 'an integer' if integer else 'a finite number'
        raise SearchSpaceError(f'search space {src}: parameter {name!r}: {key} must be {kind}, got {value!r}')
    return value


def _parse_param(src: str, name: str, spec: Any) -> ParamSpec:
    if not isinstance(spec, Mapping):
        raise SearchSpaceError(
            f'search space {src}: parameter {name!r}: spec must be a mapping, got {spec!r}'
        )
    unknown = sorted(set(spec) - _SPEC_KEYS)
    if unknown:
        raise SearchSpaceError(
            f'search space {src}: parameter {name!r}: unknown key(s) {unknown}; allowed {sorted(_SPEC_KEYS)}'
        )
    ptype = spec.get('type')
    if ptype not in _TYPES:
        raise SearchSpaceError(
            f'search space {src}: parameter {name!r}: type must be one of {_TYPES}, got {ptype!r}'
        )
    low = high = step = None
    log = bool(spec.get('log', False))
    choices: tuple = ()
    if ptype == 'categorical':
        bad = sorted({'low', 'high', 'log', 'step'} & set(spec))
        if bad:
            raise SearchSpaceError(
                f'search space {src}: parameter {name!r}: categorical takes choices, not {bad}'
            )
        raw = spec.get('choices')
        if not isinstance(raw, (list, tuple)) or not raw:
            raise SearchSpaceError(
                f'search space {src}: parameter {name!r}: choices must be a non-empty list'
            )
        choices = tuple(raw)
    else:
        if 'choices' in spec:
            raise SearchSpaceError(f'search space {src}: parameter {name!r}: choices is only for categorical')
        if 'low' not in spec or 'high' not in spec:
            raise SearchSpaceError(f'search space {src}: parameter {name!r}: low and high are required')
        integer = ptype == 'int'
        low = _number(src, name, 'low', spec['low'], integer)
        high = _number(src, name, 'high', spec['high'], integer)
        if not low < high:
            raise SearchSpaceError(
                f'search space {src}: parameter {name!r}: need low < high, got [{low}, {high}]'
            )
        if log and low <= 0:
            raise SearchSpaceError(
                f'search space {src}: parameter {name!r}: log scale needs low > 0, got {low}'
            )
        if 'step' in spec:
            step = _number(src, name, 'step', spec['step'], integer)
            if step <= 0 or log:
                raise SearchSpaceError(
                    f'search space {src}: parameter {name!r}: step must be > 0 and cannot be used with log'
                )
    raw_targets = spec.get('targets', {name: {}})
    if not isinstance(raw_targets, Mapping) or not raw_targets:
        raise SearchSpaceError(f'search space {src}: parameter {name!r}: targets must be a non-empty mapping')
    targets = []
    for key, tspec in raw_targets.items():
        tspec = {} if tspec is None else tspec
        if not isinstance(tspec, Mapping) or set(tspec) - _TARGET_KEYS:
            raise SearchSpaceError(
                f'search space {src}: parameter {name!r}: target {key!r} takes only {sorted(_TARGET_KEYS)}, '
                f'got {tspec!r}'
            )
        scale = _number(src, name, f'targets.{key}.scale', tspec.get('scale', 1.0), False)
        offset = _number(src, name, f'targets.{key}.offset', tspec.get('offset', 0.0), False)
        if ptype == 'categorical' and (scale != 1.0 or offset != 0.0):
            raise SearchSpaceError(
                f'search space {src}: parameter {name!r}: categorical targets take no scale/offset'
            )
        targets.append((str(key), float(scale), float(offset)))
    return ParamSpec(str(name), ptype, low, high, log, step, choices, tuple(targets))


def parse_search_space(data: Any, src: str = '<space>') -> list[ParamSpec]:
    """Validate a loaded search-space mapping (see the module docstring) into parameter specs.

    Raises:
        SearchSpaceError: On the first problem, naming ``src``, the parameter and the field.
    """
    if not isinstance(data, Mapping) or not data:
        raise SearchSpaceError(f'search space {src}: expected a non-empty mapping of parameter -> spec')
    specs = [_parse_param(src, str(name), spec) for name, spec in data.items()]
    keys = [t[0] for s in specs for t in s.targets]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise SearchSpaceError(f'search space {src}: config key(s) {dup} set by more than one parameter')
    return specs


def load_search_space(path: str | os.PathLike) -> list[ParamSpec]:
    """Read and validate a search-space YAML file.

    Raises:
        FileNotFoundError: The file does not exist.
        SearchSpaceError: Invalid YAML or spec.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'search space file not found: {path}')
    try:
        data = yaml.safe_load(path.read_text(encoding='utf-8'))
    except yaml.YAMLError as e:
        raise SearchSpaceError(f'search space {path}: invalid YAML: {e}') from None
    return parse_search_space(data, str(path))


def _lookup(cfg: Any, key: str) -> bool:
    node = cfg
    for part in key.split('.'):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False
    return True


def check_space_against_config(specs: Sequence[ParamSpec], cfg: Any, src: str = '<space>') -> None:
    """Check that every target key exists in the loaded config ``cfg``.

    Raises:
        SearchSpaceError: Naming the first unknown config key.
    """
    root = cfg.to_dict() if hasattr(cfg, 'to_dict') else cfg
    for spec in specs:
        for key, _, _ in spec.targets:
            if not _lookup(root, key):
                raise SearchSpaceError(
                    f'search space {src}: parameter {spec.name!r}: config key {key!r} not found in '
                    f'{getattr(cfg, "filename", None) or "the config"}'
                )


def suggest_params(trial: Any, specs: Sequence[ParamSpec]) -> dict[str, Any]:
    """Draw one value per parameter from an optuna ``trial``."""
    out: dict[str, Any] = {}
    for s in specs:
        if s.type == 'int':
            out[s.name] = trial.suggest_int(s.name, int(s.low), int(s.high), step=int(s.step or 1), log=s.log)
        elif s.type == 'float':
            out[s.name] = trial.suggest_float(s.name, s.low, s.high, step=s.step, log=s.log)
        else:
            out[s.name] = trial.suggest_categorical(s.name, list(s.choices))
    return out


def params_to_cfg_options(specs: Sequence[ParamSpec], params: Mapping[str, Any]) -> dict[str, Any]:
    """Config overrides ``{dotted key: value}`` of one set of parameter values."""
    opts: dict[str, Any] = {}
    for s in specs:
        value = params[s.name]
        for key, scale, offset in s.targets:
            if s.type == 'categorical' or (scale == 1.0 and offset == 0.0):
                opts[key] = value
            else:
                opts[key] = float(scale * value + offset)
    return opts


def _metric_better(direction: str) -> Callable[[float, float], bool]:
    return (lambda a, b: a > b) if direction == 'maximize' else (lambda a, b: a < b)


def train_and_score(
    config: str | os.PathLike,
    cfg_options: Mapping[str, Any],
    work_dir: str | os.PathLike,
    metric: str,
    direction: str = 'maximize',
    report: Callable[[float, int], None] | None = None,
    extra_hooks: Sequence[Any] = (),
) -> tuple[float, dict[str, float]]:
    """Train ``config`` with ``cfg_options`` through the mmengine Runner and score it.

    Args:
        config: Config file.
        cfg_options: Overrides (``data_root``/``fold`` handled as by ``tools/train.py``).
        work_dir: Run directory.
        metric: Validation metric key (as the evaluator reports it, e.g. ``mIoU``, ``IoU.cell``).
        direction: ``'maximize'`` or ``'minimize'``: which validation counts as best.
        report: Called as ``report(value, iteration)`` after every validation (pruning); may raise.
        extra_hooks: Hook objects registered on the Runner in addition to the config's.

    Returns:
        ``(best value, all metrics of the validation that gave it)``.

    Raises:
        KeyError: If no validation reported ``metric`` (the keys it did report are named).
        RuntimeError: If the run never validated.
    """
    from mmengine.hooks import Hook

    from custom_modules.runner_utils import build_runner

    better = _metric_better(_DIRECTIONS.get(direction, direction))
    record: dict[str, Any] = {'best': None, 'metrics': {}, 'keys': set()}

    class _ScoreHook(Hook):
        priority = 'LOW'

        def after_val_epoch(self, runner, metrics=None) -> None:
            metrics = dict(metrics or {})
            record['keys'].update(metrics)
            if metric not in metrics:
                return
            value = float(metrics[metric])
            if record['best'] is None or better(value, record['best']):
                record['best'], record['metrics'] = value, metrics
            if report is not None:
                report(value, int(runner.iter))

    opts = dict(cfg_options)
    opts.setdefault('experiment_name', f'search_{uuid.uuid4().hex[:12]}')
    runner = build_runner(config, work_dir=work_dir, cfg_options=opts)
    runner.register_hook(_ScoreHook())
    for hook in extra_hooks:
        runner.register_hook(hook)
    runner.train()
    if record['best'] is None:
        if not record['keys']:
            raise RuntimeError(f'{config}: the run never validated (set train_cfg.val_interval)')
        raise KeyError(
            f'metric {metric!r} not reported by the validation; it reported {sorted(record["keys"])}'
        )
    return record['best'], {k: float(v) for k, v in record['metrics'].items()}


def _make_pruner(name: str):
    import optuna

    if name == 'none':
        return optuna.pruners.NopPruner()
    if name == 'median':
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
    if name == 'hyperband':
        return optuna.pruners.HyperbandPruner()
    raise ValueError(f'pruner must be one of {_PRUNERS}, got {name!r}')


def _recover_interrupted(study) -> int:
    """Mark trials left RUNNING by a killed search as FAIL and queue their parameters again.

    Their numbers are kept in the study's ``interrupted_trials`` user attribute: they do not count
    towards ``trials`` (their parameters run again in a new trial).
    """
    from optuna.trial import TrialState

    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return 0
    interrupted = list(study.user_attrs.get('interrupted_trials', []))
    for t in running:
        study.tell(t.number, state=TrialState.FAIL)
        interrupted.append(t.number)
        if t.params:
            study.enqueue_trial(dict(t.params), skip_if_exists=False)
    study.set_user_attr('interrupted_trials', interrupted)
    return len(running)


def _finished_count(study) -> int:
    from optuna.trial import TrialState

    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    skip = set(study.user_attrs.get('interrupted_trials', []))
    return sum(1 for t in study.get_trials(deepcopy=False, states=done) if t.number not in skip)


def run_search(
    config: str | os.PathLike,
    space: str | os.PathLike | Sequence[ParamSpec],
    trials: int,
    study_dir: str | os.PathLike,
    metric: str = 'mIoU',
    direction: str = 'max',
    cfg_options: Mapping[str, Any] | None = None,
    pruner: str = 'none',
    seed: int = 0,
    study_name: str = 'search',
    startup_trials: int = 10,
    objective_fn: Callable[[str, dict[str, Any], str, Callable[[float, int], None]], float] | None = None,
    write_outputs: bool = True,
):
    """Run (or resume) a TPE search; returns the optuna ``Study``.

    Args:
        config: Config file searched.
        space: Search-space YAML path or parsed specs.
        trials: Total finished trials the study should hold (a resumed study runs only the missing ones).
        study_dir: Directory of ``study.db``, ``trials/<n>/`` run directories and the outputs.
        metric: Validation metric key to optimize.
        direction: ``'max'`` or ``'min'``.
        cfg_options: Fixed overrides for every trial (``data_root=...``, ``train_cfg.max_iters=...``).
        pruner: ``'none'``, ``'median'`` or ``'hyperband'``.
        seed: TPE sampler seed.
        study_name: Name of the study inside ``study.db``.
        startup_trials: Trials sampled at random before TPE models the results (optuna's default 10: a
            search of at most that many trials is a random search).
        objective_fn: Replaces the training (tests): ``objective_fn(config, cfg_options, work_dir, report)``
            returns the score.
        write_outputs: Write CSV, plots and the best config at the end.

    Raises:
        SearchSpaceError, FileNotFoundError, ValueError: Bad space, config or arguments (before any trial).
    """
    import optuna

    if int(trials) != trials or trials < 1:
        raise ValueError(f'trials must be an int >= 1, got {trials!r}')
    if direction not in _DIRECTIONS:
        raise ValueError(f'direction must be max or min, got {direction!r}')
    if pruner not in _PRUNERS:
        raise ValueError(f'pruner must be one of {_PRUNERS}, got {pruner!r}')
    if int(startup_trials) != startup_trials or startup_trials < 1:
        raise ValueError(f'startup_trials must be an int >= 1, got {startup_trials!r}')
    from custom_modules.config import load_config

    specs = load_search_space(space) if isinstance(space, (str, os.PathLike)) else list(space)
    src = str(space) if isinstance(space, (str, os.PathLike)) else '<space>'
    fixed = dict(cfg_options or {})
    cfg = load_config(config, fixed)
    check_space_against_config(specs, cfg, src)
    study_dir = Path(study_dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    storage = f'sqlite:///{(study_dir / "study.db").resolve()}'
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=study_name,
        storage=storage,
        load_if_exists=True,
        direction=_DIRECTIONS[direction],
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials),
        pruner=_make_pruner(pruner),
    )
    study.set_user_attr('config', str(config))
    study.set_user_attr('metric', metric)
    study.set_user_attr('cfg_options', {k: v for k, v in fixed.items() if _jsonable(v)})
    _recover_interrupted(study)
    remaining = int(trials) - _finished_count(study)

    def objective(trial) -> float:
        params = suggest_params(trial, specs)
        opts = {**fixed, **params_to_cfg_options(specs, params)}
        work_dir = str(study_dir / 'trials' / f'{trial.number:04d}')

        def report(value: float, step: int) -> None:
            trial.report(value, step)
            if trial.should_prune():
                raise optuna.TrialPruned(f'pruned at iteration {step} ({metric}={value})')

        if objective_fn is not None:
            return float(objective_fn(str(config), opts, work_dir, report))
        value, metrics = train_and_score(config, opts, work_dir, metric, _DIRECTIONS[direction], report)
        for k, v in metrics.items():
            trial.set_user_attr(f'val/{k}', v)
        return value

    if remaining > 0:
        study.optimize(objective, n_trials=remaining, catch=(Exception,), gc_after_trial=True)
    if write_outputs:
        write_study_outputs(study, study_dir, specs, config, fixed)
    return study


def _jsonable(v: Any) -> bool:
    return isinstance(v, (str, int, float, bool, type(None), list, tuple, dict))


def best_config_text(
    config: str | os.PathLike, out_dir: str | os.PathLike, cfg_options: Mapping[str, Any]
) -> str:
    """A leaf config over ``config`` (``_base_`` relative to ``out_dir``) that applies ``cfg_options``.

    Dotted keys become nested dicts (merged into the base by mmengine). A key through a list
    (``a.0.b``) is written as the whole list with the override applied, since mmengine replaces lists.
    """
    from custom_modules.config import load_config

    merged = load_config(config, dict(cfg_options)).to_dict()
    rel = osp.relpath(osp.abspath(config), osp.abspath(out_dir))
    tree: dict[str, Any] = {}
    for key in cfg_options:
        parts = key.split('.')
        node: Any = merged
        cut = len(parts)
        for i, part in enumerate(parts):
            if isinstance(node, list):
                cut = i
                break
            node = node[part] if isinstance(node, Mapping) else node[int(part)]
        value: Any = merged
        for part in parts[:cut]:
            value = value[part]
        target = tree
        for part in parts[: cut - 1]:
            target = target.setdefault(part, {})
        target[parts[cut - 1]] = value
    lines = [f'# Best trial of tools/search.py over {config}.', f'_base_ = [{rel!r}]']
    lines += [f'{key} = {_py(value)}' for key, value in tree.items()]
    return '\n'.join(lines) + '\n'


def _py(value: Any) -> str:
    if isinstance(value, dict):
        items = ', '.join(
            f'{k}={_py(v)}' if str(k).isidentifier() else f'**{{{k!r}: {_py(v)}}}' for k, v in value.items()
        )
        return f'dict({items})'
    return repr(value)


def _scatter(study, specs: Sequence[ParamSpec]):
    """The paper's Figures 7-8: first parameter (y) against the second (x) of every complete trial,
    coloured by the objective (red high, blue low)."""
    import matplotlib.pyplot as plt
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    ys = [t.params[specs[0].name] for t in trials]
    xs = [t.params[specs[1].name] for t in trials]
    fig, ax = plt.subplots()
    points = ax.scatter(xs, ys, c=[t.value for t in trials], cmap='coolwarm', s=60, edgecolors='k')
    for t, x, y in zip(trials, xs, ys, strict=True):
        ax.annotate(str(t.number), (x, y), textcoords='offset points', xytext=(4, 4), fontsize=7)
    from matplotlib.ticker import NullFormatter

    if specs[1].log:
        ax.set_xscale('log')
        ax.xaxis.set_minor_formatter(NullFormatter())
    if specs[0].log:
        ax.set_yscale('log')
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(specs[1].name)
    ax.set_ylabel(specs[0].name)
    fig.colorbar(points, ax=ax, label=study.user_attrs.get('metric', 'objective'))
    ax.set_title(f'TPE trials ({len(trials)} complete; label = trial number)')
    return ax


def write_study_outputs(
    study,
    study_dir: str | os.PathLike,
    specs: Sequence[ParamSpec],
    config: str | os.PathLike,
    cfg_options: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """Write ``trials.csv``, ``history.png``, ``param_scatter.png`` (+ ``contour.png``, ``importance.png``) and
    ``best_config.py`` (when a trial completed) into ``study_dir``; returns ``{name: path}``."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import optuna
    from optuna.trial import TrialState

    from celldata.fileio import atomic_write_text

    study_dir = Path(study_dir)
    written: dict[str, str] = {}
    df = study.trials_dataframe()
    csv_path = study_dir / 'trials.csv'
    atomic_write_text(csv_path, df.to_csv(index=False))
    written['csv'] = str(csv_path)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return written
    vis = optuna.visualization.matplotlib
    plots: list[tuple[str, Callable[[], Any]]] = [('history', lambda: vis.plot_optimization_history(study))]
    names = [s.name for s in specs]
    numeric = [s.name for s in specs if s.type != 'categorical']
    if len(numeric) >= 2:
        plots.append(
            ('param_scatter', lambda: _scatter(study, [s for s in specs if s.type != 'categorical'][:2]))
        )
        plots.append(('contour', lambda: vis.plot_contour(study, params=numeric[:2])))
    elif names:
        plots.append(('param_scatter', lambda: vis.plot_slice(study, params=names)))
    if len(names) >= 2 and len(complete) >= 2:
        plots.append(('importance', lambda: vis.plot_param_importances(study)))
    import warnings

    for name, make in plots:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # optuna marks its matplotlib backend experimental
            try:
                ax = make()
            except (ValueError, RuntimeError) as e:  # e.g. importance with constant objective
                study.set_user_attr(f'plot_error_{name}', str(e))
                continue
        fig = ax.flatten()[0].figure if hasattr(ax, 'flatten') else ax.figure
        fig.set_size_inches(7, 5)
        fig.tight_layout()
        path = study_dir / f'{name}.png'
        tmp = study_dir / f'.{name}.{uuid.uuid4().hex[:8]}.png'
        fig.savefig(tmp, dpi=100)
        plt.close(fig)
        os.replace(tmp, path)
        written[name] = str(path)
    best = study.best_trial
    opts = params_to_cfg_options(specs, best.params)
    text = best_config_text(config, study_dir, opts)
    text = text.replace(
        '\n_base_',
        f'\n# trial {best.number}: {study.user_attrs.get("metric", "value")} = {best.value}\n_base_',
        1,
    )
    cfg_path = study_dir / 'best_config.py'
    atomic_write_text(cfg_path, text)
    written['best_config'] = str(cfg_path)
    return written
