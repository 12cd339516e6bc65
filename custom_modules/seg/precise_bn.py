"""Precise BN: recompute the running statistics of every batch-norm layer with FRE switched off.

A network trained with :class:`~custom_modules.seg.fre.FeatureRandomEnhancement` keeps, in the norm layers
after the bottleneck, running statistics of *enhanced* features (X times larger in B channels), while in
eval mode FRE is the identity: inference then normalizes features with statistics they do not have. The
pass here runs N training batches through the model with every module in eval mode (FRE = identity, dropout
off) except the norm layers, which normalize with batch statistics (batch renormalization's ``r``/``d``
corrections off) and average them: each layer's new ``running_mean`` is the mean of its N batch means and its
``running_var`` the mean of its N unbiased batch variances (Wu & Johnson, "Rethinking 'Batch' in
BatchNorm", 2021). Only ``running_mean`` / ``running_var`` change: weights and ``num_batches_tracked`` (the
step counter of the batch renormalization schedule) are restored.

:class:`PreciseBNHook` does it at the end of training (before the last validation and checkpoint) and
optionally every ``interval`` iterations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from mmengine.hooks import Hook
from mmseg.registry import HOOKS
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader

from .batch_renorm import BatchRenorm2d


def _norm_layers(model: nn.Module) -> list[_BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recompute_norm_stats(
    model: nn.Module,
    batches: Iterable,
    forward: Callable[[nn.Module, object], object] | None = None,
    num_batches: int | None = None,
) -> int:
    """Replace the running statistics of all batch-norm layers of ``model`` by precise averages.

    Args:
        model: The network (its train/eval mode is restored afterwards).
        batches: Iterable of inputs; ``forward(model, batch)`` is called for each (default
            ``model(batch)``).
        forward: How to run one batch through the model.
        num_batches: Stop after this many batches (default: exhaust ``batches``).

    Returns:
        Number of batches used (0 leaves the statistics untouched).

    Raises:
        ValueError: If ``num_batches`` < 1.
    """
    if num_batches is not None and num_batches < 1:
        raise ValueError(f'recompute_norm_stats: num_batches must be >= 1, got {num_batches}')
    layers = _norm_layers(model)
    if not layers:
        return 0
    forward = forward or (lambda m, b: m(b))
    was_training = model.training
    saved = [
        (m.momentum, m.num_batches_tracked.clone(), m.running_mean.clone(), m.running_var.clone())
        for m in layers
    ]
    sums_mean = [torch.zeros_like(m.running_mean) for m in layers]
    sums_var = [torch.zeros_like(m.running_var) for m in layers]
    model.eval()
    for m in layers:
        m.train()
        m.momentum = 1.0  # the running stats after a batch are exactly that batch's stats
        if isinstance(m, BatchRenorm2d):
            m.renorm = False
    count = 0
    try:
        for batch in batches:
            if num_batches is not None and count >= num_batches:
                break
            forward(model, batch)
            for i, m in enumerate(layers):
                sums_mean[i] += m.running_mean
                sums_var[i] += m.running_var
            count += 1
    finally:
        for i, (m, (momentum, tracked, mean, var)) in enumerate(zip(layers, saved, strict=True)):
            m.momentum = momentum
            m.num_batches_tracked.copy_(tracked)
            if count:
                m.running_mean.copy_(sums_mean[i] / count)
                m.running_var.copy_(sums_var[i] / count)
            else:
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
            if isinstance(m, BatchRenorm2d):
                m.renorm = True
        model.train(was_training)
    return count


@HOOKS.register_module()
class PreciseBNHook(Hook):
    """Recompute norm statistics with FRE off over ``num_batches`` training batches (see module doc).

    Runs after the last training iteration (before the final validation and the last checkpoint, which
    then hold the precise statistics) and, if ``interval`` is set, every ``interval`` iterations.

    Args:
        num_batches: Training batches averaged (shuffled batches of the training set with the training
            pipeline and batch size, over as many passes as needed).
        interval: Also recompute every ``interval`` iterations (``None``: only at the end).
    """

    priority = 'ABOVE_NORMAL'

    def __init__(self, num_batches: int = 50, interval: int | None = None) -> None:
        if int(num_batches) != num_batches or num_batches < 1:
            raise ValueError(f'PreciseBNHook: num_batches must be an int >= 1, got {num_batches!r}')
        if interval is not None and (int(interval) != interval or interval < 1):
            raise ValueError(f'PreciseBNHook: interval must be None or an int >= 1, got {interval!r}')
        self.num_batches = int(num_batches)
        self.interval = interval

    def _recompute(self, runner) -> None:
        model = runner.model
        module = model.module if hasattr(model, 'module') else model

        def forward(net: nn.Module, data_batch: object) -> None:
            data = module.data_preprocessor(data_batch, True)
            net(**data, mode='tensor')

        # a separate loader over the training set (same batch size, collate and pipeline): a new iterator of
        # the training loader itself would reset its persistent workers under the running training loop
        train_loader = runner.train_dataloader
        loader = DataLoader(
            train_loader.dataset,
            batch_size=train_loader.batch_size,
            shuffle=True,
            num_workers=0,
            collate_fn=train_loader.collate_fn,
            drop_last=True,
        )

        def batches():  # as many passes over the training set as num_batches needs
            while True:
                yield from loader

        used = recompute_norm_stats(model, batches(), forward, self.num_batches)
        runner.logger.info(f'PreciseBNHook: norm statistics recomputed over {used} batches (FRE off)')

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        """Recompute at the last iteration and every ``interval`` iterations."""
        last = runner.iter + 1 >= runner.max_iters
        if last or (self.interval is not None and self.every_n_train_iters(runner, self.interval)):
            self._recompute(runner)
