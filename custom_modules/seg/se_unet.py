"""U-Net with Squeeze-and-Excitation blocks (the network of the FRE paper, Fig. 4) as an mmseg backbone.

Encoder stage i (i = 0 .. S-1) has ``base_channels * 2**i`` channels: (2x2 max-pool unless i = 0) ->
2 x (3x3 conv, norm, ReLU) -> SE block. The output of the last stage is the bottleneck (the "yellow layer"
of the paper, farthest from the loss); the optional :class:`FeatureRandomEnhancement` and/or channel dropout
(``Dropout2d``) act on it. Decoder stage i (i = S-2 .. 0) bilinearly upsamples the deeper feature to the
skip's size, concatenates ``[skip, up]`` and applies 2 x (3x3 conv, norm, ReLU) -> SE block. Any input size
works (upsampling goes to the skip's exact size).

Variants of the paper map to arguments: plain U-Net+SE (defaults), "without deep layers" (``num_stages``
one less), FRE (``fre_cfg``), dropout at the same rate ``B / C`` (``bottleneck_dropout``); deep supervision
is an auxiliary mmseg head on output index 0 (the bottleneck) in the config.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmengine.model import BaseModule
from mmseg.registry import MODELS
from torch import nn

from .fre import FeatureRandomEnhancement
from .se import SEBlock


class SEConvBlock(nn.Module):
    """Two 3x3 conv-norm-act layers followed by an SE block: ``(N, Cin, H, W) -> (N, Cout, H, W)``."""

    def __init__(
        self, in_channels: int, out_channels: int, se_ratio: int, norm_cfg: dict, act_cfg: dict
    ) -> None:
        super().__init__()
        self.conv1 = ConvModule(in_channels, out_channels, 3, padding=1, norm_cfg=norm_cfg, act_cfg=act_cfg)
        self.conv2 = ConvModule(out_channels, out_channels, 3, padding=1, norm_cfg=norm_cfg, act_cfg=act_cfg)
        self.se = SEBlock(out_channels, ratio=se_ratio) if se_ratio > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block; see class docstring for shapes."""
        return self.se(self.conv2(self.conv1(x)))


@MODELS.register_module()
class SEUNet(BaseModule):
    """U-Net encoder/decoder with SE blocks and optional FRE / dropout at the bottleneck.

    Args:
        in_channels: Input image channels (3: grayscale PNGs are loaded as 3 identical channels).
        base_channels: Channels of the first stage; stage i has ``base_channels * 2**i``.
        num_stages: Encoder stages S >= 2 (S-1 poolings: input sides should be >= 2**(S-1)).
        se_ratio: SE reduction ratio; 0 disables the SE blocks (plain U-Net).
        norm_cfg: mmcv norm layer config.
        act_cfg: mmcv activation config.
        fre_cfg: Optional ``FeatureRandomEnhancement`` arguments without ``num_channels`` (filled in from
            the bottleneck width), e.g. ``dict(num_enhanced=162, factor=632.0)``.
        bottleneck_dropout: ``Dropout2d`` rate at the bottleneck (0 disables it); the paper's comparison uses
            ``B / C``.
        init_cfg: mmengine init config (None: PyTorch default init; no pretrained weights).

    Returns from ``forward``: a tuple of S feature maps, deepest first: index 0 is the bottleneck
    ``(N, base*2**(S-1), H/2**(S-1), W/2**(S-1))`` (after FRE / dropout), index S-1 the full-resolution
    decoder output ``(N, base, H, W)``.
    """

    def __init__(
        self,
        in_channels: int = 3,
        base_channels: int = 64,
        num_stages: int = 4,
        se_ratio: int = 16,
        norm_cfg: dict | None = None,
        act_cfg: dict | None = None,
        fre_cfg: dict | None = None,
        bottleneck_dropout: float = 0.0,
        init_cfg: dict | list | None = None,
    ) -> None:
        super().__init__(init_cfg=init_cfg)
        if num_stages < 2:
            raise ValueError(f'SEUNet: num_stages must be >= 2, got {num_stages}')
        if base_channels < 1 or in_channels < 1:
            raise ValueError(f'SEUNet: channels must be >= 1, got in={in_channels}, base={base_channels}')
        if not 0.0 <= bottleneck_dropout < 1.0:
            raise ValueError(f'SEUNet: bottleneck_dropout must be in [0, 1), got {bottleneck_dropout}')
        norm_cfg = norm_cfg if norm_cfg is not None else dict(type='BN', requires_grad=True)
        act_cfg = act_cfg if act_cfg is not None else dict(type='ReLU')
        self.num_stages = num_stages
        self.channels: list[int] = [base_channels * 2**i for i in range(num_stages)]
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.encoder = nn.ModuleList()
        prev = in_channels
        for ch in self.channels:
            self.encoder.append(SEConvBlock(prev, ch, se_ratio, norm_cfg, act_cfg))
            prev = ch
        bottleneck_ch = self.channels[-1]
        self.fre: FeatureRandomEnhancement | None = None
        if fre_cfg is not None:
            cfg = dict(fre_cfg)
            cfg.pop('type', None)
            if cfg.setdefault('num_channels', bottleneck_ch) != bottleneck_ch:
                raise ValueError(
                    f"SEUNet: fre_cfg num_channels={cfg['num_channels']} != bottleneck width {bottleneck_ch}"
                )
            self.fre = FeatureRandomEnhancement(**cfg)
        self.dropout = nn.Dropout2d(p=bottleneck_dropout) if bottleneck_dropout > 0 else None
        self.decoder = nn.ModuleList()
        for i in range(num_stages - 2, -1, -1):
            self.decoder.append(
                SEConvBlock(
                    self.channels[i] + self.channels[i + 1], self.channels[i], se_ratio, norm_cfg, act_cfg
                )
            )

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder features, shallowest first; the last one is the bottleneck before FRE / dropout."""
        feats = []
        for i, block in enumerate(self.encoder):
            if i > 0:
                x = self.pool(x)
            x = block(x)
            feats.append(x)
        return feats

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Run encoder and decoder on ``x`` ``(N, in_channels, H, W)``; see class docstring for outputs."""
        feats = self.encode(x)
        y = feats[-1]
        if self.fre is not None:
            y = self.fre(y)
        if self.dropout is not None:
            y = self.dropout(y)
        outs = [y]
        for j, block in enumerate(self.decoder):
            skip = feats[self.num_stages - 2 - j]
            up = F.interpolate(y, size=skip.shape[-2:], mode='bilinear', align_corners=False)
            y = block(torch.cat([skip, up], dim=1))
            outs.append(y)
        return tuple(outs)

    @property
    def out_channels(self) -> Sequence[int]:
        """Channels of the outputs of :meth:`forward`, deepest first."""
        return tuple(reversed(self.channels))
