"""Feature Random Enhancement (FRE) module (Ando & Hotta, "Cell Image Segmentation by Feature Random
Enhancement Module").

At the layer farthest from the loss (the deepest encoder output of a U-Net) and only in training, ``B``
randomly chosen feature maps (channels) are multiplied by a constant ``X``; the choice is re-drawn at every
epoch (by :class:`~custom_modules.seg.hooks.FRERedrawHook`). In eval mode the module is the identity, so
inference cost and outputs equal those of the same network without the module.

With ``fixed_channels`` the same channels are enhanced throughout training (the paper's additional
experiment, its Table 3: ten fixed filters enhanced 10,000 times); re-draws then keep that selection.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from mmseg.registry import MODELS
from torch import nn


@MODELS.register_module()
class FeatureRandomEnhancement(nn.Module):
    """Multiply ``num_enhanced`` randomly selected channels by ``factor`` in training; identity in eval.

    The channel selection mask is a non-persistent buffer, so checkpoints of a model with and without
    this module have identical state dicts (they load into each other strictly).

    Args:
        num_channels: Channel count C of the feature map it is applied to.
        num_enhanced: B, number of channels enhanced at a time (0 <= B <= C). The paper uses B=162 of
            C=512 (mouse liver data) and B=8 of 512 (Drosophila ssTEM data).
        factor: X, the multiplier of the selected channels (paper: 632 and 250).
        seed: If given, draws use a private ``torch.Generator`` seeded with it (reproducible, identical on
            all ranks); otherwise torch's global RNG (seeded by mmengine's ``randomness`` config).
        fixed_channels: If given, always enhance exactly these channel indices (no random draws);
            ``num_enhanced`` may then be omitted and otherwise must equal their number.
    """

    def __init__(
        self,
        num_channels: int,
        num_enhanced: int | None = None,
        factor: float = 1.0,
        seed: int | None = None,
        fixed_channels: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if num_channels < 1:
            raise ValueError(f'FeatureRandomEnhancement: num_channels must be >= 1, got {num_channels}')
        self.fixed_channels: tuple[int, ...] | None = None
        if fixed_channels is not None:
            fixed = [int(c) for c in fixed_channels]
            if len(set(fixed)) != len(fixed) or any(not 0 <= c < num_channels for c in fixed):
                raise ValueError(
                    f'FeatureRandomEnhancement: fixed_channels must be distinct indices in '
                    f'[0, {num_channels}), got {list(fixed_channels)}'
                )
            if num_enhanced is not None and num_enhanced != len(fixed):
                raise ValueError(
                    f'FeatureRandomEnhancement: num_enhanced={num_enhanced} != len(fixed_channels)={len(fixed)}'
                )
            num_enhanced = len(fixed)
            self.fixed_channels = tuple(sorted(fixed))
        if num_enhanced is None:
            raise ValueError('FeatureRandomEnhancement: num_enhanced (B) is required without fixed_channels')
        if not 0 <= num_enhanced <= num_channels:
            raise ValueError(
                f'FeatureRandomEnhancement: num_enhanced (B) must be in [0, num_channels={num_channels}], '
                f'got {num_enhanced}'
            )
        if not math.isfinite(factor):
            raise ValueError(f'FeatureRandomEnhancement: factor (X) must be finite, got {factor}')
        self.num_channels = int(num_channels)
        self.num_enhanced = int(num_enhanced)
        self.factor = float(factor)
        self._generator = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        # 1.0 for enhanced channels, 0.0 otherwise; non-persistent (not in the state dict).
        self.register_buffer('selected', torch.zeros(self.num_channels), persistent=False)
        self.num_draws = 0
        self.redraw()

    @property
    def enhanced_channels(self) -> torch.Tensor:
        """Sorted int64 indices ``(B,)`` of the currently enhanced channels."""
        return torch.nonzero(self.selected > 0.5, as_tuple=False).flatten().cpu()

    def channel_scale(self) -> torch.Tensor:
        """Per-channel training multiplier ``(C,)``: X for enhanced channels, 1 elsewhere."""
        return 1.0 + self.selected * (self.factor - 1.0)

    @torch.no_grad()
    def redraw(self) -> torch.Tensor:
        """Choose a new random set of B channels; returns their sorted indices ``(B,)`` (int64).

        With ``fixed_channels`` the selection is always those channels (counted as a draw all the same).
        """
        if self.fixed_channels is not None:
            indices = torch.tensor(self.fixed_channels, dtype=torch.int64)
        else:
            perm = torch.randperm(self.num_channels, generator=self._generator)
            indices = perm[: self.num_enhanced].sort().values
        selected = torch.zeros(self.num_channels)
        selected[indices] = 1.0
        self.selected.copy_(selected.to(self.selected.device))
        self.num_draws += 1
        return indices

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x`` ``(N, C, H, W)`` with the selected channels times X in training, ``x`` itself in eval."""
        if x.dim() != 4 or x.shape[1] != self.num_channels:
            raise ValueError(
                f'FeatureRandomEnhancement: expected input (N, {self.num_channels}, H, W), got {tuple(x.shape)}'
            )
        if not self.training or self.num_enhanced == 0:
            return x
        return x * self.channel_scale().to(dtype=x.dtype).view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        fixed = f', fixed_channels={list(self.fixed_channels)}' if self.fixed_channels is not None else ''
        return (
            f'num_channels={self.num_channels}, num_enhanced={self.num_enhanced}, factor={self.factor}{fixed}'
        )
