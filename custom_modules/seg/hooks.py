"""Training hook that re-draws the enhanced channels of every :class:`FeatureRandomEnhancement`."""

from __future__ import annotations

import math

from mmengine.dist import broadcast, get_world_size
from mmengine.hooks import Hook
from mmengine.runner import IterBasedTrainLoop
from mmseg.registry import HOOKS

from .fre import FeatureRandomEnhancement


@HOOKS.register_module()
class FRERedrawHook(Hook):
    """Call ``redraw()`` of all FRE modules of the model at every epoch (or every N iterations).

    With an iteration-based loop (mmseg's usual ``IterBasedTrainLoop``) an "epoch" is one pass over the
    training set by all ranks together: ``ceil(len(dataset) / (batch_size * world_size))`` iterations. In distributed training the new selection of rank 0 is
    broadcast so all ranks enhance the same channels.

    Args:
        interval: ``'epoch'`` (paper: re-drawn each epoch) or a positive number of iterations.
    """

    priority = 'NORMAL'

    def __init__(self, interval: str | int = 'epoch') -> None:
        if interval != 'epoch' and not (isinstance(interval, int) and interval > 0):
            raise ValueError(f"FRERedrawHook: interval must be 'epoch' or a positive int, got {interval!r}")
        self.interval = interval
        self._warned = False

    @staticmethod
    def _modules(runner) -> list[FeatureRandomEnhancement]:
        return [m for m in runner.model.modules() if isinstance(m, FeatureRandomEnhancement)]

    def _redraw(self, runner) -> None:
        modules = self._modules(runner)
        if not modules and not self._warned:
            runner.logger.warning('FRERedrawHook: the model has no FeatureRandomEnhancement module')
            self._warned = True
        for m in modules:
            m.redraw()
            broadcast(m.selected, src=0)
            runner.logger.debug(f'FRE redraw #{m.num_draws}: channels {m.enhanced_channels.tolist()}')

    def _iters_per_period(self, runner) -> int | None:
        if isinstance(self.interval, int):
            return self.interval
        if isinstance(runner.train_loop, IterBasedTrainLoop):
            loader = runner.train_dataloader
            batch = getattr(loader, 'batch_size', None)
            if batch:  # one pass over the dataset by all ranks together
                return max(1, math.ceil(len(loader.dataset) / (batch * get_world_size())))
            return max(1, len(loader))
        return None

    def before_train_epoch(self, runner) -> None:
        """Re-draw at each epoch start (epoch-based loops; the single pseudo-epoch of iteration loops)."""
        if self.interval == 'epoch':
            self._redraw(runner)

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        """Re-draw every ``interval`` iterations (or every dataloader length with iteration loops)."""
        period = self._iters_per_period(runner)
        if period is None:
            return
        it = runner.iter
        if it % period == 0 and (self.interval != 'epoch' or it > 0):
            self._redraw(runner)
