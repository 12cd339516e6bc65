"""Batch Renormalization (Ioffe, "Batch Renormalization: Towards Reducing Minibatch Dependence in
Batch-Normalized Models", NeurIPS 2017) as an mmcv norm layer: ``norm_cfg=dict(type='BRN', ...)``.

In training a channel with minibatch mean/std ``mu_B, sigma_B`` and running mean/std ``mu, sigma`` is
normalized as ``(x - mu_B) / sigma_B * r + d`` with the non-differentiated corrections
``r = clip(sigma_B / sigma, 1/r_max, r_max)`` and ``d = clip((mu_B - mu) / sigma, -d_max, d_max)``, then
scaled by ``gamma`` and shifted by ``beta``. With ``r_max = 1`` and ``d_max = 0`` this is exactly batch
normalization; as they grow the training output approaches ``(x - mu) / sigma``, the output eval mode gives.
As in the paper, ``r_max`` and ``d_max`` start at 1 and 0 and are relaxed linearly to their final values
after a warm-up (paper: hold for 5k steps, ``r_max`` 1 -> 3 over the next 35k, ``d_max`` 0 -> 5 over 20k).

Running statistics are updated as PyTorch's ``BatchNorm2d`` updates them (exponential average with
``momentum`` of the batch mean and the unbiased batch variance; ``sigma = sqrt(running_var + eps)``), so a
state dict of this layer loads into ``nn.BatchNorm2d`` and back. Eval mode uses the running statistics.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from mmengine.registry import MODELS
from torch import nn


def renorm_limits(
    step: int,
    r_max: float,
    d_max: float,
    warmup_iters: int,
    r_max_ramp_iters: int,
    d_max_ramp_iters: int,
) -> tuple[float, float]:
    """``(r_max, d_max)`` in force at training step ``step`` (0-based) under the warm-up schedule.

    Both are 1 and 0 for the first ``warmup_iters`` steps, then grow linearly to ``r_max`` / ``d_max``
    over ``r_max_ramp_iters`` / ``d_max_ramp_iters`` steps (a ramp of 0 steps jumps at once).
    """
    t = step - warmup_iters
    if t < 0:
        return 1.0, 0.0

    def frac(ramp: int) -> float:
        return 1.0 if ramp <= 0 else min(1.0, (t + 1) / ramp)

    return 1.0 + (r_max - 1.0) * frac(r_max_ramp_iters), d_max * frac(d_max_ramp_iters)


@MODELS.register_module('BRN')
class BatchRenorm2d(nn.BatchNorm2d):
    """Batch renormalization over ``(N, C, H, W)`` inputs with warm-up schedules of ``r_max`` / ``d_max``.

    Registered in mmengine's root ``MODELS`` registry as ``'BRN'`` (visible from the mmseg and mmdet
    scopes), so ``mmcv.cnn.build_norm_layer(dict(type='BRN', r_max=3.0, d_max=5.0), C)`` builds it;
    layers built that way are named ``bn`` like BatchNorm.

    Args:
        num_features: Channels C.
        eps: Added to variances.
        momentum: Update rate of the running statistics (as in ``nn.BatchNorm2d``; ``None`` is the
            cumulative average).
        affine: Learn ``gamma`` / ``beta``.
        r_max: Final clipping bound of ``r`` (>= 1).
        d_max: Final clipping bound of ``d`` (>= 0).
        warmup_iters: Training steps with ``r_max = 1``, ``d_max = 0`` (plain batch normalization) while the
            running statistics settle.
        r_max_ramp_iters: Steps over which ``r_max`` grows linearly from 1 after the warm-up.
        d_max_ramp_iters: Steps over which ``d_max`` grows linearly from 0 after the warm-up.

    The step counter is the ``num_batches_tracked`` buffer (saved in checkpoints, so resuming keeps the
    schedule). ``track_running_stats`` is always on: renormalization needs the running statistics.

    Shapes:
        input ``(N, C, H, W)`` -> output ``(N, C, H, W)``.
    """

    _abbr_ = 'bn'

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        r_max: float = 3.0,
        d_max: float = 5.0,
        warmup_iters: int = 5000,
        r_max_ramp_iters: int = 35000,
        d_max_ramp_iters: int = 20000,
    ) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum, affine=affine, track_running_stats=True)
        if not r_max >= 1.0:
            raise ValueError(f'BatchRenorm2d: r_max must be >= 1, got {r_max}')
        if not d_max >= 0.0:
            raise ValueError(f'BatchRenorm2d: d_max must be >= 0, got {d_max}')
        for name, val in (
            ('warmup_iters', warmup_iters),
            ('r_max_ramp_iters', r_max_ramp_iters),
            ('d_max_ramp_iters', d_max_ramp_iters),
        ):
            if int(val) != val or val < 0:
                raise ValueError(f'BatchRenorm2d: {name} must be an int >= 0, got {val}')
        self.r_max = float(r_max)
        self.d_max = float(d_max)
        self.warmup_iters = int(warmup_iters)
        self.r_max_ramp_iters = int(r_max_ramp_iters)
        self.d_max_ramp_iters = int(d_max_ramp_iters)
        #: when False, training mode normalizes with batch statistics only (r = 1, d = 0) whatever the
        #: schedule says; used by the precise-BN pass (:mod:`custom_modules.seg.precise_bn`).
        self.renorm = True

    def current_limits(self) -> tuple[float, float]:
        """``(r_max, d_max)`` of the next training step."""
        return renorm_limits(
            int(self.num_batches_tracked),
            self.r_max,
            self.d_max,
            self.warmup_iters,
            self.r_max_ramp_iters,
            self.d_max_ramp_iters,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize ``x`` ``(N, C, H, W)``; batch renormalization in training, running stats in eval."""
        self._check_input_dim(x)
        if not self.training:
            return super().forward(x)
        r_max, d_max = self.current_limits() if self.renorm else (1.0, 0.0)
        if x.numel() // x.shape[1] < 2:
            raise ValueError(
                f'BatchRenorm2d: need more than 1 value per channel in training, got {tuple(x.shape)}'
            )
        self.num_batches_tracked.add_(1)
        momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        if r_max == 1.0 and d_max == 0.0:  # exactly batch normalization
            return F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, True, momentum, self.eps
            )
        with torch.no_grad():  # r and d are constants for backpropagation
            var, mean = torch.var_mean(x, dim=(0, 2, 3), unbiased=False)
            running_std = torch.sqrt(self.running_var + self.eps)
            r = (torch.sqrt(var + self.eps) / running_std).clamp(1.0 / r_max, r_max)
            d = ((mean - self.running_mean) / running_std).clamp(-d_max, d_max)
        # (x - mu_B) / sigma_B with the running statistics updated as BatchNorm2d updates them
        x_hat = F.batch_norm(x, self.running_mean, self.running_var, None, None, True, momentum, self.eps)
        scale, shift = r, d
        if self.affine:
            scale, shift = self.weight * r, self.weight * d + self.bias
        return x_hat * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return (
            f'{super().extra_repr()}, r_max={self.r_max}, d_max={self.d_max}, '
            f'warmup_iters={self.warmup_iters}, r_max_ramp_iters={self.r_max_ramp_iters}, '
            f'd_max_ramp_iters={self.d_max_ramp_iters}'
        )
