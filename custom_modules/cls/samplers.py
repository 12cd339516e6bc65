"""Class-imbalance samplers of the liposome report (section 4.8), registered in ``mmengine.registry.DATA_SAMPLERS``.

``ImbalanceSampler(mode=...)``:

* ``'none'``: every sample once per epoch (shuffled).
* ``'oversample'``: every class is brought up to the majority count: each minority class is repeated whole as
  often as it fits and the remainder is drawn without replacement, re-drawn each epoch. An epoch then holds exactly
  ``num_classes_present * majority_count`` indices.
* ``'undersample'``: a random ``fraction`` (the report: 20 %) of the majority class is dropped, re-drawn at the start
  of every epoch (so every sample is still used over the epochs).

The draw of epoch ``e`` depends only on ``seed + e``; call :meth:`ImbalanceSampler.set_epoch` (mmengine's loops do)
to move on. Under distributed training each rank takes ``indices[rank::world_size]`` of a list padded to a
multiple of the world size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from mmengine.dist import get_dist_info, sync_random_seed
from mmengine.registry import DATA_SAMPLERS
from torch.utils.data import Sampler

__all__ = ["ImbalanceSampler", "epoch_indices"]

MODES = ("none", "oversample", "undersample")


def epoch_indices(labels: np.ndarray, mode: str, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Indices of one epoch (shuffled).

    Args:
        labels: ``(N,)`` int class of every sample.
        mode: ``'none'``, ``'oversample'`` or ``'undersample'``.
        fraction: Share of the majority class dropped by ``'undersample'``.
        rng: Random generator of this epoch.

    Returns:
        int64 indices into ``labels``.
    """
    labels = np.asarray(labels)
    if mode not in MODES:
        raise ValueError(f"sampler mode must be one of {MODES}, got {mode!r}")
    if labels.size == 0:
        return np.zeros(0, np.int64)
    classes, counts = np.unique(labels, return_counts=True)
    if mode == "none":
        idx = np.arange(labels.size)
    elif mode == "oversample":
        target = counts.max()
        parts = []
        for c in classes:
            members = np.flatnonzero(labels == c)
            reps, rest = divmod(target, members.size)
            parts.append(np.tile(members, reps))
            parts.append(rng.choice(members, size=rest, replace=False))
        idx = np.concatenate(parts)
    else:
        major = classes[np.argmax(counts)]
        members = np.flatnonzero(labels == major)
        n_drop = int(round(fraction * members.size))
        dropped = rng.choice(members, size=n_drop, replace=False)
        keep = np.ones(labels.size, bool)
        keep[dropped] = False
        idx = np.flatnonzero(keep)
    return rng.permutation(idx).astype(np.int64)


@DATA_SAMPLERS.register_module()
class ImbalanceSampler(Sampler):
    """Per-epoch oversampling / undersampling over a dataset exposing ``get_labels()``.

    Args:
        dataset: Dataset with ``get_labels() -> (N,) int``.
        mode: ``'none'``, ``'oversample'`` or ``'undersample'``.
        fraction: Share of the majority class dropped each epoch by ``'undersample'`` (0 <= fraction < 1).
        seed: Base seed (default: a seed synchronised across ranks).
    """

    def __init__(
        self, dataset, mode: str = "oversample", fraction: float = 0.2, seed: int | None = None
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"ImbalanceSampler mode must be one of {MODES}, got {mode!r}")
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"ImbalanceSampler fraction must be in [0, 1), got {fraction}")
        if not hasattr(dataset, "get_labels"):
            raise ValueError(
                f"ImbalanceSampler needs a dataset with get_labels(); got {type(dataset).__name__}"
            )
        self.dataset = dataset
        self.mode = mode
        self.fraction = float(fraction)
        self.seed = sync_random_seed() if seed is None else int(seed)
        self.labels = np.asarray(dataset.get_labels())
        self.rank, self.world_size = get_dist_info()
        self.epoch = 0

    def _indices(self) -> np.ndarray:
        return epoch_indices(
            self.labels, self.mode, self.fraction, np.random.default_rng(self.seed + self.epoch)
        )

    def __iter__(self) -> Iterator[int]:
        idx = self._indices()
        if self.world_size > 1 and idx.size:
            total = math.ceil(idx.size / self.world_size) * self.world_size
            idx = np.resize(idx, total)[self.rank :: self.world_size]
        return iter(idx.tolist())

    def __len__(self) -> int:
        n = self._indices().size
        return math.ceil(n / self.world_size) if self.world_size > 1 else n

    def set_epoch(self, epoch: int) -> None:
        """Draw the next epoch's indices from ``seed + epoch``."""
        self.epoch = int(epoch)
