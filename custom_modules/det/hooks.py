"""Progressive multi-scale input for YOLOX: the random input-size range grows during the first part of training.

The ensemble paper (YOLOX, section 3.1 (5) "Progressive Learning") trains on gradually larger inputs in the
initial phase. mmdet's :class:`~mmdet.models.data_preprocessors.BatchSyncRandomResize` draws a random square-ish
input size from a fixed range every ``interval`` iterations; this hook interpolates that range linearly from
``start_size_range`` to the range configured in the model over ``warmup_epochs`` (or ``warmup_iters``) and then
leaves the configured range in place.
"""

from __future__ import annotations

from mmdet.models.data_preprocessors import BatchSyncRandomResize
from mmdet.registry import HOOKS
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

__all__ = ["ProgressiveResizeHook", "interpolate_range"]


def interpolate_range(start: tuple[int, int], end: tuple[int, int], fraction: float) -> tuple[int, int]:
    """Linear interpolation of a ``(low, high)`` size range, ``fraction`` clipped to [0, 1]."""
    f = min(max(float(fraction), 0.0), 1.0)
    return (round(start[0] + f * (end[0] - start[0])), round(start[1] + f * (end[1] - start[1])))


@HOOKS.register_module()
class ProgressiveResizeHook(Hook):
    """Grow the ``random_size_range`` of every ``BatchSyncRandomResize`` batch augment early in training.

    Args:
        start_size_range: ``(low, high)`` input size range (pixels, short side) at iteration 0.
        warmup_epochs: Epochs over which the range grows to the configured one (epoch-based loops).
        warmup_iters: Iterations over which it grows (takes precedence over ``warmup_epochs``).

    Raises:
        ValueError: On an invalid range or when neither warm-up length is positive.
    """

    priority = "NORMAL"

    def __init__(
        self,
        start_size_range: tuple[int, int] = (320, 480),
        warmup_epochs: int = 5,
        warmup_iters: int | None = None,
    ) -> None:
        lo, hi = (int(v) for v in start_size_range)
        if lo <= 0 or hi < lo:
            raise ValueError(
                f"ProgressiveResizeHook: start_size_range must be 0 < low <= high, got {start_size_range}"
            )
        if not (warmup_iters or warmup_epochs):
            raise ValueError("ProgressiveResizeHook: warmup_iters or warmup_epochs must be positive")
        self.start_size_range = (lo, hi)
        self.warmup_epochs = int(warmup_epochs or 0)
        self.warmup_iters = None if warmup_iters is None else int(warmup_iters)
        self._augs: list[tuple[BatchSyncRandomResize, tuple[int, int]]] = []
        self._total = 1
        self._done = False

    def before_train(self, runner) -> None:
        """Find the resize batch augments, remember their configured (final) ranges, set the start range."""
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        augs = getattr(model.data_preprocessor, "batch_augments", None) or []
        self._augs = []
        self._done = False
        for aug in augs:
            if isinstance(aug, BatchSyncRandomResize):
                d = aug._size_divisor
                end = (aug._random_size_range[0] * d, aug._random_size_range[1] * d)
                self._augs.append((aug, end))
        if not self._augs:
            runner.logger.warning(
                "ProgressiveResizeHook: the model has no BatchSyncRandomResize; hook inactive"
            )
        if self.warmup_iters:
            self._total = self.warmup_iters
        else:
            self._total = max(1, self.warmup_epochs * len(runner.train_dataloader))
        self._apply(runner.iter)

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        """Update the size range for the coming iteration."""
        self._apply(runner.iter)

    def current_ranges(self) -> list[tuple[int, int]]:
        """The size ranges (pixels) now in force, one per resize augment."""
        return [
            (a._random_size_range[0] * a._size_divisor, a._random_size_range[1] * a._size_divisor)
            for a, _ in self._augs
        ]

    def _apply(self, it: int) -> None:
        if self._done:
            return
        fraction = it / self._total
        for aug, end in self._augs:
            lo, hi = interpolate_range(self.start_size_range, end, fraction)
            d = aug._size_divisor
            aug._random_size_range = (max(1, round(lo / d)), max(1, round(hi / d)))
        self._done = fraction >= 1.0
