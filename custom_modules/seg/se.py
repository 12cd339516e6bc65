"""Squeeze-and-Excitation block (Hu et al., 2018) used by :class:`~custom_modules.seg.se_unet.SEUNet`."""

from __future__ import annotations

import torch
from mmseg.registry import MODELS
from torch import nn


@MODELS.register_module()
class SEBlock(nn.Module):
    """Channel attention: global average pool -> bottleneck MLP -> sigmoid -> channel-wise scaling.

    Args:
        channels: Number of input (and output) channels C.
        ratio: Reduction ratio of the bottleneck MLP; the hidden width is ``max(1, C // ratio)``.

    Shapes:
        input ``(N, C, H, W)`` -> output ``(N, C, H, W)``; every channel c of sample n is multiplied by one
        weight ``w[n, c]`` in (0, 1).
    """

    def __init__(self, channels: int, ratio: int = 16) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f'SEBlock: channels must be >= 1, got {channels}')
        if ratio < 1:
            raise ValueError(f'SEBlock: ratio must be >= 1, got {ratio}')
        hidden = max(1, channels // ratio)
        self.channels = channels
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1)
        self.gate = nn.Sigmoid()

    def channel_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Return the excitation weights ``(N, C, 1, 1)`` in (0, 1) for ``x`` of shape ``(N, C, H, W)``."""
        return self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scale each channel of ``x`` ``(N, C, H, W)`` by its excitation weight; same shape out."""
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f'SEBlock: expected input (N, {self.channels}, H, W), got {tuple(x.shape)}')
        return x * self.channel_weights(x)
