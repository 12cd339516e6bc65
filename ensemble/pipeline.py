"""Loading an ensemble's prediction files and fusing them image by image, in parallel processes when asked.

The library layer under the ``ensemble.run`` and ``ensemble.tune`` command lines:

* :func:`load_models` reads every model's prediction file of a config;
* :func:`model_roles` decides per *file* whether a model provides boxes (it has a detection in some image) and/or
  a semantic map; a file with neither is an error naming it;
* :func:`common_image_ids` checks that every model covers the same images;
* :func:`fuse_predictions` fuses every image (:func:`ensemble.masks.fuse_image`) with the roles and per-model
  semantic weights;
* :class:`ImagePool` maps a per-image function over image ids in worker processes (fork start method, the data
  inherited by the workers, no per-call copy of the predictions); results come back in image order, so every
  sum over images is computed in the same order as with one worker and results are identical.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ensemble.config import EnsembleConfig, ModelEntry
from ensemble.masks import FusionParams, fuse_image
from ensemble.predictions import ImagePredictions, load_predictions

__all__ = [
    "ImagePool",
    "ModelRole",
    "available_workers",
    "common_image_ids",
    "fuse_predictions",
    "load_models",
    "model_roles",
    "semantic_weights_of",
]


@dataclass(frozen=True)
class ModelRole:
    """What a model's prediction file provides.

    Attributes:
        boxes: it has at least one detection (its boxes enter WBF with its weight, in every image).
        semantic: it has a semantic foreground map in at least one image (the map votes with its semantic
            weight).
    """

    boxes: bool
    semantic: bool


def load_models(models: Sequence[ModelEntry]) -> list[dict[str, ImagePredictions]]:
    """Load every model's prediction file.

    Raises:
        ValueError: A missing or invalid file (the message names it).
    """
    out = []
    for m in models:
        if not Path(m.predictions).is_file():
            raise ValueError(f"{m.predictions}: prediction file of model '{m.name}' not found")
        preds, _ = load_predictions(m.predictions)
        out.append(preds)
    return out


def model_roles(
    models: Sequence[Mapping[str, ImagePredictions]], entries: Sequence[ModelEntry]
) -> list[ModelRole]:
    """The role of each model file (see :class:`ModelRole`).

    Raises:
        ValueError: a file with neither a detection nor a semantic map in any image (naming the file).
    """
    roles = []
    for preds, entry in zip(models, entries):
        role = ModelRole(
            boxes=any(len(p) > 0 for p in preds.values()),
            semantic=any(p.semantic is not None for p in preds.values()),
        )
        if not (role.boxes or role.semantic):
            raise ValueError(
                f"{entry.predictions}: model '{entry.name}' has neither detections (boxes) nor a semantic map in "
                "any image; it cannot take part in the ensemble"
            )
        roles.append(role)
    return roles


def semantic_weights_of(entries: Sequence[ModelEntry]) -> list[float | None]:
    """Per model its own ``semantic_weight`` (None: the ensemble's ``fusion.semantic_weight``)."""
    return [m.semantic_weight for m in entries]


def common_image_ids(models: Sequence[Mapping[str, ImagePredictions]], names: Sequence[str]) -> list[str]:
    """The image ids every model predicts (the first model's order).

    Raises:
        ValueError: If the models' image sets differ (naming the model and some ids).
    """
    ids = list(models[0])
    ref = set(ids)
    for m, name in zip(models[1:], names[1:]):
        if set(m) != ref:
            missing = sorted(ref - set(m))
            extra = sorted(set(m) - ref)
            detail = f"missing {missing[:3]}" if missing else f"extra {extra[:3]}"
            raise ValueError(
                f"model '{name}' predicts a different image set than model '{names[0]}' ({detail}); every model "
                "must cover the same images"
            )
    if not ids:
        raise ValueError(f"model '{names[0]}' holds no images")
    return ids


def available_workers() -> int:
    """CPU cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


_POOL_STATE: dict[int, Any] = {}
"""Per :class:`ImagePool` its data, inherited by the forked workers."""


def _run_chunk(key: int, fn: Callable[..., Any], ids: list[str], args: tuple) -> list[Any]:
    state = _POOL_STATE[key]
    return [fn(state, k, *args) for k in ids]


class ImagePool:
    """Maps ``fn(state, image_id, *args)`` over image ids, in ``workers`` forked processes.

    ``state`` (e.g. the models' predictions and the packed truth) is registered before the workers are forked,
    so they inherit it without copying; only the ids, ``args`` and the results cross process boundaries.
    ``fn`` must be a module-level function. With ``workers <= 1`` (or where ``fork`` is unavailable) everything
    runs in this process. Use as a context manager, or call :meth:`close`.

    Args:
        state: the data every call reads.
        workers: number of processes (``None`` or 0: every available core).
    """

    def __init__(self, state: Any, workers: int | None = None) -> None:
        n = available_workers() if not workers else int(workers)
        if n < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if "fork" not in mp.get_all_start_methods():  # pragma: no cover - Windows
            n = 1
        self.state = state
        self.workers = n
        self._key = id(self)
        self._executor: ProcessPoolExecutor | None = None
        _POOL_STATE[self._key] = state

    def map(
        self,
        fn: Callable[..., Any],
        ids: Sequence[str],
        *args: Any,
        progress: bool = False,
        desc: str = "images",
    ) -> list[Any]:
        """``[fn(state, k, *args) for k in ids]``, computed by the workers, in ``ids`` order."""
        ids = list(ids)
        bar = tqdm(total=len(ids), desc=desc, unit="img", disable=not progress, leave=False)
        try:
            if self.workers <= 1 or len(ids) < 2:
                out = []
                for k in ids:
                    out.append(fn(self.state, k, *args))
                    bar.update(1)
                return out
            if self._executor is None:
                self._executor = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("fork"))
            n_chunks = min(len(ids), 4 * self.workers)
            bounds = [round(i * len(ids) / n_chunks) for i in range(n_chunks + 1)]
            futures = [
                self._executor.submit(_run_chunk, self._key, fn, ids[a:b], args)
                for a, b in zip(bounds[:-1], bounds[1:])
            ]
            out = []
            for f, a, b in zip(futures, bounds[:-1], bounds[1:]):
                out.extend(f.result())
                bar.update(b - a)
            return out
        finally:
            bar.close()

    def close(self) -> None:
        """Stops the workers and forgets the state."""
        if self._executor is not None:
            self._executor.shutdown()
            self._executor = None
        _POOL_STATE.pop(self._key, None)

    def __enter__(self) -> ImagePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class FuseState:
    """What the fusion workers need: the models' predictions, roles and per-model semantic weights."""

    models: list[Mapping[str, ImagePredictions]]
    roles: list[ModelRole]
    semantic_weights: list[float | None]
    names: list[str] | None = None

    def fuse(self, image_id: str, weights: Sequence[float], params: FusionParams) -> ImagePredictions:
        """Fused predictions of one image (``params.mode``: vote or box-first)."""
        if params.mode == "box_first":
            from ensemble.box_first import fuse_image_box_first

            return fuse_image_box_first(
                [m[image_id] for m in self.models],
                weights,
                params,
                semantic_weights=self.semantic_weights,
                box_files=[r.boxes for r in self.roles],
                names=self.names,
            )
        return fuse_image(
            [m[image_id] for m in self.models],
            weights,
            params,
            semantic_weights=self.semantic_weights,
            box_models=[r.boxes for r in self.roles],
        )

    @classmethod
    def from_config(cls, config: EnsembleConfig, models: list[Mapping[str, ImagePredictions]]) -> FuseState:
        """State of a loaded config (validates the roles: :func:`model_roles`)."""
        return cls(
            models,
            model_roles(models, config.models),
            semantic_weights_of(config.models),
            [m.name for m in config.models],
        )


def _fuse_one(
    state: FuseState, image_id: str, weights: Sequence[float], params: FusionParams
) -> ImagePredictions:
    return state.fuse(image_id, weights, params)


def fuse_predictions(
    state: FuseState,
    weights: Sequence[float],
    params: FusionParams,
    image_ids: Sequence[str] | None = None,
    workers: int | None = 1,
    progress: bool = False,
) -> dict[str, ImagePredictions]:
    """Fuse the models' predictions image by image.

    Args:
        state: The models, their roles and semantic weights.
        weights: Per model, positive weight.
        params: Fusion parameters.
        image_ids: Images to fuse (default: the first model's).
        workers: Processes (``None``/0: all cores; results identical for any number).
        progress: Show a tqdm progress bar.

    Returns:
        Image id -> fused, non-overlapping predictions.
    """
    ids = list(state.models[0]) if image_ids is None else list(image_ids)
    with ImagePool(state, workers) as pool:
        fused = pool.map(_fuse_one, ids, list(weights), params, progress=progress, desc="fusing")
    return dict(zip(ids, fused))
