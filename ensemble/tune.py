"""Adaptive weighting: tune model weights and fusion parameters on a validation set for the competition metric.

Usage::

    python -m ensemble.tune --config configs/ensemble/sartorius_ensemble.yaml \
        --predictions-dir work_dirs/preds --predictions-pattern '{name}_val.npz' \
        --truth data/sartorius/annotations/fold0_val.json --cv 3 --out work_dirs/ensemble/tuned.yaml
    python -m ensemble.tune --config VAL.yaml --truth VAL_TRUTH.json --method tpe --trials 100 --out TUNED.yaml

The models must be predictions of the validation images: the config's own files, or with ``--predictions-dir``
and ``--predictions-pattern`` the files ``<dir>/<pattern>`` (``<member>_val.npz`` as ``tools/infer.py`` and the
recipes name them); ground truth from ``--truth`` or the config's ``truth:``. The tuned YAML names the files it
was tuned on; ``python -m ensemble.run --predictions-pattern '{name}_test.npz'`` applies it to the test files. Searched: each box model's weight (only with several box models), WBF ``iou_thr``, ``vote_thr``,
``semantic_weight`` (only when a model file has semantic maps) and per-class ``score`` / ``min_area`` thresholds.

Held-out estimate (``--cv K``): the validation images are split into K parts, all images of one ``sample_id`` in
one part, stratified by cell type (the detectors' fold algorithm, :func:`celldata.prepare.make_folds`, seed 0);
for each part the search runs on the other K-1 parts and the tuned parameters are scored on the held-out part. The cross-validated (held-out) score is reported next to the in-sample score of the parameters tuned on all
images, which are what the YAML holds (with a ``tuning:`` record of the images, both scores and the folds, so
that ``ensemble.run`` labels later scores in-sample or held-out). Decide "A beats B" on held-out scores.

Images are fused in ``--workers`` processes (default: all cores; results are identical for any number).

Coordinate search (``--method coord``): starting from the config, each structural parameter in turn is set to
every value of its grid, keeping a change only when the exact score (full fusion of every image + competition
metric) improves. The per-class thresholds are then searched on a cache: the current structure is fused once
*without* thresholds, the IoU matrix of every image against its (packed, cached) truth is computed once, and a
threshold candidate only drops columns of those matrices (no fusion, no IoU work), so thousands of candidates
cost seconds. Thresholding after fusion is a close proxy of thresholding inside ``fuse_image`` (which happens
before overlap removal), so the chosen thresholds are verified with an exact evaluation and kept only if the exact
score improves. Rounds repeat until nothing improves (``--rounds`` at most).

TPE (``--method tpe``): optuna's TPE sampler over the same parameters (continuous ranges), exact score per trial;
the starting config is enqueued as the first trial.

Both methods never return a configuration scoring below the starting one. The tuned YAML (same models, tuned
weights and parameters) is written atomically with a header comment giving both scores.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from celldata import CLASSES
from celldata.fileio import check_output_path
from celldata.instances import InstanceMasks
from celldata.prepare import make_folds
from ensemble.config import load_config, save_config
from ensemble.masks import FusionParams
from ensemble.metrics import (
    THRESHOLDS,
    PackedMasks,
    image_precisions,
    iou_pairs,
    pack_masks,
    precisions_from_pairs,
)
from ensemble.pipeline import FuseState, ImagePool, common_image_ids, load_models
from ensemble.submission import load_truth, read_sample_ids

__all__ = [
    "CrossValidation",
    "SearchSpace",
    "TuneResult",
    "Tuner",
    "build_parser",
    "cross_validate",
    "group_folds",
    "main",
    "tune",
]


@dataclass
class SearchSpace:
    """Grids of the coordinate search (TPE uses their min/max as ranges).

    Attributes:
        weights: Candidate weights of each model.
        iou_thr: WBF IoU thresholds.
        vote_thr: Pixel vote thresholds.
        semantic_weight: Semantic-map voter weights (searched only when a model has a semantic map).
        score_thr: Per-class score thresholds.
        min_area: Per-class minimum areas in pixels.
    """

    weights: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0, 3.0)
    iou_thr: tuple[float, ...] = (0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7)
    vote_thr: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7)
    semantic_weight: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0)
    score_thr: tuple[float, ...] = tuple(float(v) for v in np.round(np.arange(0.0, 0.95, 0.05), 2))
    min_area: tuple[int, ...] = (0, 10, 20, 30, 40, 60, 80, 120, 160, 240)


@dataclass
class TuneResult:
    """Outcome of a tuning run.

    Attributes:
        weights: Tuned model weights.
        params: Tuned fusion parameters.
        score: Exact validation score of the tuned configuration.
        start_score: Exact validation score of the starting configuration.
        n_evaluations: Exact evaluations performed (full fusion + metric).
        n_proxy_evaluations: Cached threshold evaluations.
        history: ``(what changed, exact score)`` of every accepted improvement.
    """

    weights: list[float]
    params: FusionParams
    score: float
    start_score: float
    n_evaluations: int = 0
    n_proxy_evaluations: int = 0
    history: list[tuple[str, float]] = field(default_factory=list)


def _key(weights: Sequence[float], params: FusionParams) -> tuple:
    d = dataclasses.asdict(params)
    d["score_thr"] = tuple(sorted(d["score_thr"].items()))
    d["min_area"] = tuple(sorted(d["min_area"].items()))
    return tuple(round(float(w), 10) for w in weights), tuple(sorted(d.items()))


@dataclass
class _ThresholdCache:
    """Per image: the (truth, prediction, IoU > 0.5) pairs of the fused instances without thresholds, and their
    scores/labels/areas."""

    pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
    scores: list[np.ndarray]
    labels: list[np.ndarray]
    areas: list[np.ndarray]
    n_true: list[int]


@dataclass
class _TuneData:
    """What the tuning workers read: the models (with roles) and the packed truth of every image."""

    fuse: FuseState
    truth: dict[str, PackedMasks]


def _fused_masks(data: _TuneData, image_id: str, weights: Sequence[float], params: FusionParams):
    fused = data.fuse.fuse(image_id, weights, params)
    pred = fused.masks if fused.masks is not None else InstanceMasks.empty(fused.height, fused.width)
    return fused, pred


def _image_score(data: _TuneData, image_id: str, weights: Sequence[float], params: FusionParams) -> float:
    _, pred = _fused_masks(data, image_id, weights, params)
    return float(image_precisions(data.truth[image_id], pred).mean())


def _image_cache(data: _TuneData, image_id: str, weights: Sequence[float], params: FusionParams) -> tuple:
    fused, pred = _fused_masks(data, image_id, weights, params)
    ti, pj, iou, _, _ = iou_pairs(data.truth[image_id], pred)
    hit = iou > THRESHOLDS.min()
    return (
        (ti[hit], pj[hit], iou[hit]),
        fused.scores.astype(np.float64),
        fused.labels.astype(np.int64),
        pred.areas(),
        len(data.truth[image_id]),
    )


class Tuner:
    """Scores ensemble parameter sets on a validation set, with caches that make repeated trials cheap.

    Images are fused in ``workers`` processes (:class:`ensemble.pipeline.ImagePool`); per-image results come back
    in image order and are summed in that order, so any number of workers gives identical scores.

    Args:
        state: The models (per model, image id -> predictions), their roles and semantic weights.
        truth: Image id -> true masks (every image of ``image_ids``).
        image_ids: Validation images (default: the first model's).
        progress: Show progress bars.
        workers: Processes (``None``/0: all cores).
    """

    def __init__(
        self,
        state: FuseState,
        truth: Mapping[str, InstanceMasks],
        image_ids: Sequence[str] | None = None,
        progress: bool = False,
        workers: int | None = 1,
        _pool: ImagePool | None = None,
    ) -> None:
        self.state = state
        self.models = state.models
        self.ids = list(self.models[0]) if image_ids is None else list(image_ids)
        if not self.ids:
            raise ValueError("no validation images to tune on")
        missing = [k for k in self.ids if k not in truth]
        if missing:
            raise ValueError(f"{len(missing)} image(s) have no ground truth, e.g. {missing[:3]}")
        if _pool is None:
            # IoU-independent per-image work, done once: packed truth crops (flat buffer, offsets, areas)
            packed = {k: pack_masks(truth[k]) for k in self.ids}
            _pool = ImagePool(_TuneData(state, packed), workers)
        self.pool = _pool
        self.truth = truth
        # roles come from whole prediction files (every image), not from a few images
        self.has_semantic = any(r.semantic for r in state.roles)
        self.box_models = [m for m, r in enumerate(state.roles) if r.boxes]
        self.progress = progress
        self._memo: dict[tuple, np.ndarray] = {}
        self._thr_cache: OrderedDict[tuple, _ThresholdCache] = OrderedDict()
        self.n_evaluations = 0
        self.n_proxy_evaluations = 0

    def subset(self, image_ids: Sequence[str]) -> Tuner:
        """A tuner of some of the images, sharing the workers and the packed truth (for cross-validation)."""
        return Tuner(self.state, self.truth, image_ids, self.progress, _pool=self.pool)

    def close(self) -> None:
        """Stops the workers."""
        self.pool.close()

    def image_scores(self, weights: Sequence[float], params: FusionParams) -> np.ndarray:
        """Exact competition score of every image (float64 ``(n_images,)``, memoized)."""
        key = _key(weights, params)
        if key not in self._memo:
            self._memo[key] = np.array(
                self.pool.map(_image_score, self.ids, list(weights), params), dtype=np.float64
            )
            self.n_evaluations += 1
        return self._memo[key]

    def score(self, weights: Sequence[float], params: FusionParams) -> float:
        """Exact competition score of a parameter set (mean over images, summed in image order)."""
        total = 0.0
        for v in self.image_scores(weights, params).tolist():
            total += v
        return total / len(self.ids)

    def threshold_cache(self, weights: Sequence[float], params: FusionParams) -> _ThresholdCache:
        """Fuse once without per-class thresholds and cache IoU pairs, scores, labels and areas."""
        base = dataclasses.replace(params, score_thr={}, min_area={})
        key = _key(weights, base)
        if key in self._thr_cache:
            self._thr_cache.move_to_end(key)
            return self._thr_cache[key]
        rows = self.pool.map(_image_cache, self.ids, list(weights), base)
        cache = _ThresholdCache(*(list(col) for col in zip(*rows)))
        self._thr_cache[key] = cache
        while len(self._thr_cache) > 4:
            self._thr_cache.popitem(last=False)
        return cache

    def proxy_score(
        self, cache: _ThresholdCache, score_thr: Mapping[str, float], min_area: Mapping[str, int]
    ) -> float:
        """Score when per-class thresholds are applied after fusion (drops columns of the cached IoUs)."""
        thr = np.array([score_thr.get(c, -np.inf) for c in CLASSES])
        amin = np.array([max(1, int(min_area.get(c, 1))) for c in CLASSES])
        total = 0.0
        for (ti, pj, vals), s, lab, area, nt in zip(
            cache.pairs, cache.scores, cache.labels, cache.areas, cache.n_true
        ):
            keep = (s >= thr[lab]) & (area >= amin[lab])
            sel = keep[pj]
            total += float(precisions_from_pairs(ti[sel], pj[sel], vals[sel], nt, int(keep.sum())).mean())
        self.n_proxy_evaluations += 1
        return total / len(cache.pairs)


def _with(params: FusionParams, **changes: Any) -> FusionParams:
    return dataclasses.replace(params, **changes)


def _coordinate_search(
    tuner: Tuner,
    weights: list[float],
    params: FusionParams,
    space: SearchSpace,
    rounds: int,
    tune_thresholds: bool,
    result: TuneResult,
) -> tuple[list[float], FusionParams, float]:
    best = tuner.score(weights, params)
    coords: list[tuple[str, Sequence[float]]] = []
    if len(tuner.box_models) > 1:  # weights only matter relative to other box models
        coords += [(f"weight[{m}]", space.weights) for m in tuner.box_models]
    if (
        params.mode != "box_first"
    ):  # box-first: WBF ran in step 1 (ensemble.fuse_boxes); iou_thr is unused here
        coords.append(("iou_thr", space.iou_thr))
    coords.append(("vote_thr", space.vote_thr))
    if tuner.has_semantic:
        coords.append(("semantic_weight", space.semantic_weight))

    def threshold_stage(
        weights: list[float], params: FusionParams, best: float
    ) -> tuple[FusionParams, float]:
        cache = tuner.threshold_cache(weights, params)
        score_thr, min_area = dict(params.score_thr), dict(params.min_area)
        proxy_best = tuner.proxy_score(cache, score_thr, min_area)
        for c in CLASSES:
            for kind, grid in (("score", space.score_thr), ("min_area", space.min_area)):
                for v in grid:
                    st, ma = dict(score_thr), dict(min_area)
                    if kind == "score":
                        st[c] = float(v)
                    else:
                        ma[c] = int(v)
                    s = tuner.proxy_score(cache, st, ma)
                    if s > proxy_best + 1e-12:
                        proxy_best, score_thr, min_area = s, st, ma
        cand_p = _with(params, score_thr=score_thr, min_area=min_area)
        s = tuner.score(
            weights, cand_p
        )  # verify exactly: thresholds inside fusion act before overlap removal
        if s > best + 1e-12:
            result.history.append((f"class thresholds score={score_thr} min_area={min_area}", s))
            return cand_p, s
        return params, best

    for rnd in range(rounds):
        start_best = best
        if tune_thresholds:
            params, best = threshold_stage(weights, params, best)
        steps = [(name, v) for name, grid in coords for v in grid]
        for name, v in tqdm(
            steps, desc=f"round {rnd + 1} structure", unit="trial", disable=not tuner.progress
        ):
            if name.startswith("weight["):
                m = int(name[7:-1])
                cand_w = list(weights)
                cand_w[m] = float(v)
                cand_p = params
            else:
                cand_w, cand_p = weights, _with(params, **{name: float(v)})
            s = tuner.score(cand_w, cand_p)
            if s > best + 1e-12:
                best, weights, params = s, cand_w, cand_p
                result.history.append((f"{name}={v}", s))
        if tune_thresholds:
            params, best = threshold_stage(weights, params, best)
        if best <= start_best + 1e-12:
            break
    return weights, params, best


def _tpe_search(
    tuner: Tuner,
    weights: list[float],
    params: FusionParams,
    space: SearchSpace,
    trials: int,
    tune_thresholds: bool,
    seed: int,
    result: TuneResult,
) -> tuple[list[float], FusionParams, float]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    w_lo, w_hi = min(space.weights), max(space.weights)
    tuned_w = tuner.box_models if len(tuner.box_models) > 1 else []

    def build(trial: Any) -> tuple[list[float], FusionParams]:
        w = list(weights)
        for m in tuned_w:
            w[m] = trial.suggest_float(f"w{m}", w_lo, w_hi)
        changes: dict[str, Any] = {
            "vote_thr": trial.suggest_float("vote_thr", min(space.vote_thr), max(space.vote_thr)),
        }
        if params.mode != "box_first":
            changes["iou_thr"] = trial.suggest_float("iou_thr", min(space.iou_thr), max(space.iou_thr))
        if tuner.has_semantic:
            changes["semantic_weight"] = trial.suggest_float(
                "semantic_weight", min(space.semantic_weight), max(space.semantic_weight)
            )
        if tune_thresholds:
            changes["score_thr"] = {
                c: trial.suggest_float(f"score_{c}", min(space.score_thr), max(space.score_thr))
                for c in CLASSES
            }
            changes["min_area"] = {
                c: trial.suggest_int(f"min_area_{c}", min(space.min_area), max(space.min_area))
                for c in CLASSES
            }
        return w, _with(params, **changes)

    start: dict[str, Any] = {"vote_thr": params.vote_thr}
    if params.mode != "box_first":
        start["iou_thr"] = params.iou_thr
    start.update({f"w{m}": float(np.clip(weights[m], w_lo, w_hi)) for m in tuned_w})
    if tuner.has_semantic:
        start["semantic_weight"] = params.semantic_weight
    if tune_thresholds:
        for c in CLASSES:
            start[f"score_{c}"] = float(
                np.clip(params.score_thr.get(c, 0.0), min(space.score_thr), max(space.score_thr))
            )
            start[f"min_area_{c}"] = int(
                np.clip(params.min_area.get(c, 0), min(space.min_area), max(space.min_area))
            )
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.enqueue_trial(start)
    best = tuner.score(weights, params)
    best_w, best_p = weights, params
    for _ in tqdm(range(trials), desc="tpe", unit="trial", disable=not tuner.progress):
        trial = study.ask()
        w, p = build(trial)
        s = tuner.score(w, p)
        study.tell(trial, s)
        if s > best + 1e-12:
            best, best_w, best_p = s, w, p
            result.history.append((f"tpe trial {trial.number}", s))
    return best_w, best_p, best


def tune(
    tuner: Tuner,
    weights: Sequence[float],
    params: FusionParams,
    method: str = "coord",
    space: SearchSpace | None = None,
    rounds: int = 3,
    trials: int = 50,
    tune_thresholds: bool = True,
    seed: int = 0,
) -> TuneResult:
    """Search weights and fusion parameters that maximise the validation score.

    Args:
        tuner: Validation data and caches.
        weights: Starting model weights.
        params: Starting fusion parameters.
        method: ``"coord"`` (coordinate search) or ``"tpe"`` (optuna).
        space: Search grids/ranges.
        rounds: Maximum coordinate-search rounds.
        trials: TPE trials.
        tune_thresholds: Also tune per-class score and min-area thresholds.
        seed: TPE seed.

    Returns:
        The tuned result; its score is never below the starting score.

    Raises:
        ValueError: Unknown method or mismatched weights.
    """
    if method not in ("coord", "tpe"):
        raise ValueError(f"unknown tuning method {method!r}; use 'coord' or 'tpe'")
    if len(weights) != len(tuner.models):
        raise ValueError(f"{len(tuner.models)} models but {len(weights)} weights")
    space = space or SearchSpace()
    weights = [float(w) for w in weights]
    start_score = tuner.score(weights, params)
    result = TuneResult(list(weights), params, start_score, start_score)
    if method == "coord":
        w, p, s = _coordinate_search(tuner, weights, params, space, rounds, tune_thresholds, result)
    else:
        w, p, s = _tpe_search(tuner, weights, params, space, trials, tune_thresholds, seed, result)
    result.weights, result.params, result.score = list(w), p, s
    result.n_evaluations = tuner.n_evaluations
    result.n_proxy_evaluations = tuner.n_proxy_evaluations
    return result


@dataclass
class CrossValidation:
    """Held-out estimate of a tuning run (K-fold over the validation images, grouped by sample).

    Attributes:
        k: Number of folds.
        folds: Per fold ``{"n_tune", "n_held_out", "score_in_sample", "score_held_out", "score_start_held_out"}``:
            the tuned parameters' score on the images they were tuned on (in-sample) and on the held-out part,
            and the starting config's score on the held-out part.
        per_image: Image id -> held-out score (from the fold that held it out).
        score_held_out: Mean over all images of their held-out scores (the cross-validated score).
        score_start: Starting config on all images (nothing tuned: no in-sample bias).
    """

    k: int
    folds: list[dict[str, float | int]]
    per_image: dict[str, float]
    score_held_out: float
    score_start: float

    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-ready summary (per-image scores left out)."""
        return {
            "k": self.k,
            "grouped_by": "sample_id",
            "score_held_out": round(self.score_held_out, 6),
            "score_start": round(self.score_start, 6),
            "folds": self.folds,
        }


def group_folds(
    image_ids: Sequence[str],
    groups: Mapping[str, str],
    k: int,
    cell_types: Mapping[str, str] | None = None,
    seed: int = 0,
) -> list[list[str]]:
    """Splits images into ``k`` parts with all images of one group (sample) in the same part.

    The parts are the detectors' folds (:func:`celldata.prepare.make_folds`: grouped, stratified by cell type,
    balanced in images, deterministic for a ``seed``). Image order inside a part follows ``image_ids``.

    Args:
        image_ids: The images.
        groups: Image id -> sample id (an image without one is its own group).
        k: Number of parts.
        cell_types: Image id -> cell type (``None`` or a missing / empty type: one stratum for all).
        seed: Fold seed.

    Returns:
        ``k`` lists of image ids.

    Raises:
        ValueError: ``k < 2`` or fewer groups than ``k``.
    """
    group_of = [groups.get(i, i) for i in image_ids]
    if k < 2:
        raise ValueError(f"--cv needs at least 2 folds, got {k}")
    if len(set(group_of)) < k:
        raise ValueError(f"--cv {k}: only {len(set(group_of))} sample group(s) among {len(image_ids)} images")
    types = [(cell_types or {}).get(i) or "" for i in image_ids]
    fold_of = make_folds(list(image_ids), types, group_of, n_folds=k, seed=seed)
    return [[i for i, f in zip(image_ids, fold_of) if f == part] for part in range(k)]


def cross_validate(
    tuner: Tuner,
    weights: Sequence[float],
    params: FusionParams,
    groups: Mapping[str, str],
    k: int,
    *,
    cell_types: Mapping[str, str] | None = None,
    **tune_kwargs: Any,
) -> CrossValidation:
    """K-fold held-out score of :func:`tune`: tune on K-1 parts, score the tuned parameters on the held-out one.

    Args:
        tuner: Tuner of all validation images.
        weights: Starting weights.
        params: Starting parameters.
        groups: Image id -> sample id (images of one sample stay in one part).
        k: Number of parts.
        cell_types: Image id -> cell type: the parts are stratified by it (:func:`group_folds`).
        **tune_kwargs: Passed to :func:`tune` (method, space, rounds, ...).

    Returns:
        The cross-validation summary.
    """
    parts = group_folds(tuner.ids, groups, k, cell_types)
    per_image: dict[str, float] = {}
    folds = []
    start_all = tuner.image_scores(weights, params)
    start_of = dict(zip(tuner.ids, start_all.tolist()))
    for f, held in enumerate(parts):
        held_set = set(held)
        fit_ids = [i for i in tuner.ids if i not in held_set]
        fit = tuner.subset(fit_ids)
        res = tune(fit, weights, params, **tune_kwargs)
        ev = tuner.subset(held)
        scores = ev.image_scores(res.weights, res.params)
        per_image.update(zip(held, scores.tolist()))
        folds.append(
            {
                "fold": f,
                "n_tune": len(fit_ids),
                "n_held_out": len(held),
                "score_in_sample": round(res.score, 6),
                "score_held_out": round(ev.score(res.weights, res.params), 6),
                "score_start_held_out": round(float(np.mean([start_of[i] for i in held])), 6),
            }
        )
    total = 0.0
    for i in tuner.ids:
        total += per_image[i]
    return CrossValidation(k, folds, per_image, total / len(tuner.ids), tuner.score(weights, params))


def build_parser() -> argparse.ArgumentParser:
    """Command-line parser of ``python -m ensemble.tune``."""
    p = argparse.ArgumentParser(prog="python -m ensemble.tune", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--config", type=Path, required=True, help="starting ensemble YAML (validation predictions)"
    )
    p.add_argument("--truth", type=Path, help="validation ground truth (default: the config's truth)")
    p.add_argument("--out", type=Path, required=True, help="tuned ensemble YAML to write")
    p.add_argument("--name", help="name of the tuned ensemble (default: <config name>_tuned)")
    p.add_argument(
        "--predictions-dir",
        type=Path,
        help="read each model's validation predictions from this folder instead of the config's files "
        "(see --predictions-pattern)",
    )
    p.add_argument(
        "--predictions-pattern",
        default="{file}",
        help="file name of each model in --predictions-dir; fields {name} (model name), {file}, {stem}, "
        "e.g. '{name}_val.npz' (default: {file})",
    )
    p.add_argument(
        "--method",
        choices=("coord", "tpe"),
        default="coord",
        help="coord: coordinate search over grids with cached thresholds (default); tpe: optuna TPE trials",
    )
    p.add_argument("--rounds", type=int, default=3, help="coordinate-search rounds (default 3)")
    p.add_argument("--trials", type=int, default=50, help="TPE trials (default 50)")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the TPE sampler (the --cv folds always use seed 0; default 0)",
    )
    p.add_argument("--no-thresholds", action="store_true", help="keep the per-class thresholds as they are")
    p.add_argument(
        "--cv",
        type=int,
        default=0,
        metavar="K",
        help="also estimate the held-out score: K folds grouped by sample_id, tune on K-1, score the rest "
        "(the written YAML is still tuned on all images)",
    )
    p.add_argument(
        "--workers", type=int, default=0, help="processes fusing images (default 0: all cores; same result)"
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 2 invalid input)."""
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    tuner = None
    try:
        if args.workers < 0:
            raise ValueError(f"--workers must be >= 0, got {args.workers}")
        check_output_path(args.out, "file", "--out")
        config = load_config(args.config)
        if args.predictions_dir is not None:
            config = config.with_predictions_dir(args.predictions_dir, args.predictions_pattern)
        truth_path = args.truth or config.truth
        if truth_path is None:
            raise ValueError("tuning needs ground truth: pass --truth or set 'truth:' in the config")
        models = load_models(config.models)
        ids = common_image_ids(models, [m.name for m in config.models])
        truth, cell_types = load_truth(truth_path)
        groups = read_sample_ids(truth_path) if args.cv else {}
        state = FuseState.from_config(config, models)
        tuner = Tuner(state, truth, ids, progress=not args.no_progress, workers=args.workers)
        kwargs = dict(
            method=args.method,
            rounds=args.rounds,
            trials=args.trials,
            tune_thresholds=not args.no_thresholds,
            seed=args.seed,
        )
        cv = None
        if args.cv:
            cv = cross_validate(
                tuner, config.weights, config.fusion, groups, args.cv, cell_types=cell_types, **kwargs
            )
        result = tune(tuner, config.weights, config.fusion, **kwargs)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if tuner is not None:
            tuner.close()
    tuning: dict[str, Any] = {
        "method": args.method,
        "truth": str(truth_path),
        "n_images": len(ids),
        "score_start": round(result.start_score, 6),
        "score_in_sample": round(result.score, 6),
    }
    if cv is not None:
        tuning["cv"] = cv.to_dict()
    tuning["images"] = list(ids)
    tuned = dataclasses.replace(
        config,
        name=args.name or f"{config.name}_tuned",
        models=[dataclasses.replace(m, weight=round(w, 6)) for m, w in zip(config.models, result.weights)],
        fusion=result.params,
        truth=str(truth_path),
        tuning=tuning,
    )
    held = (
        f"; held-out ({cv.k}-fold CV grouped by sample_id) {cv.score_held_out:.5f}" if cv is not None else ""
    )
    header = (
        f"Tuned by python -m ensemble.tune --method {args.method} from {args.config} on {len(ids)} images of "
        f"{truth_path}\nscore: start (untuned) {result.start_score:.5f} -> tuned {result.score:.5f} (in-sample){held}"
        f"\n({result.n_evaluations} exact and {result.n_proxy_evaluations} cached evaluations)"
    )
    save_config(tuned, args.out, header=header)
    for what, s in result.history:
        print(f"  {s:.5f}  {what}")
    if cv is not None:
        for f in cv.folds:
            print(
                f"  cv fold {f['fold']}: tuned on {f['n_tune']} images {f['score_in_sample']:.5f} (in-sample), "
                f"held-out {f['n_held_out']} images {f['score_held_out']:.5f} (start config "
                f"{f['score_start_held_out']:.5f})"
            )
    print(
        f"score {result.start_score:.5f} (untuned) -> {result.score:.5f} (in-sample){held} "
        f"in {time.perf_counter() - t0:.1f}s; wrote {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
