"""The 5-level U-Net (ReLU + batch norm) of the optimizer x loss x compression study, as an mmseg backbone.

Encoder level i (i = 0 .. S-1) has ``base_channels * 2**i`` channels (64-128-256-512-1024 at the paper's
width): (2x2 max-pool unless i = 0) -> 2 x (3x3 conv, BN, ReLU). Decoder level i (i = S-2 .. 0) up-samples the
deeper map to the skip's exact size and halves its channels, either by bilinear interpolation + 1x1
conv-BN-ReLU (``decoder='upsample'``: every layer is quantized to int8 by torchao's ``X86InductorQuantizer``)
or by a stride-2 ``ConvTranspose2d`` + BN + ReLU (``decoder='deconv'``: the transposed convs stay fp32 on that
int8 path), concatenates ``[skip, up]`` and applies 2 x (3x3 conv, BN, ReLU).

Unlike mmseg's ``UNet`` (which asserts sides divisible by 16 and up-samples by a fixed factor), any input size
works, and ``torch.export`` can keep batch, height and width dynamic (one exported graph serves calibration on
whole images and quantization-aware training on crops).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmengine.model import BaseModule
from mmseg.registry import MODELS
from torch import nn

_DECODERS = ('upsample', 'deconv')


class _Up(nn.Module):
    """``(N, Cin, h, w) -> (N, Cout, H, W)`` at the skip's size ``(H, W)``."""

    def __init__(
        self, in_channels: int, out_channels: int, decoder: str, norm_cfg: dict, act_cfg: dict
    ) -> None:
        super().__init__()
        self.decoder = decoder
        if decoder == 'upsample':
            self.conv = ConvModule(in_channels, out_channels, 1, norm_cfg=norm_cfg, act_cfg=act_cfg)
        else:
            self.conv = ConvModule(
                in_channels,
                out_channels,
                2,
                stride=2,
                conv_cfg=dict(type='deconv'),
                norm_cfg=norm_cfg,
                act_cfg=act_cfg,
            )

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """Up-sample ``x`` to ``size`` (H, W)."""
        if self.decoder == 'upsample':
            return self.conv(F.interpolate(x, size=size, mode='bilinear', align_corners=False))
        y = self.conv(x)  # exactly 2x; an odd skip side gets one zero row/column
        return F.pad(y, (0, size[1] - y.shape[-1], 0, size[0] - y.shape[-2]))


@MODELS.register_module()
class PaperUNet(BaseModule):
    """U-Net of the study.

    Args:
        in_channels: Input channels (3: grayscale PNGs load as 3 identical channels).
        base_channels: Channels of level 0 (paper-sized U-Net: 64).
        num_stages: Encoder levels S >= 2 (paper: 5).
        decoder: ``'upsample'`` (bilinear + 1x1 conv, fully int8-quantizable) or ``'deconv'`` (ConvTranspose2d).
        norm_cfg: mmcv norm config (default BN).
        act_cfg: mmcv activation config (default out-of-place ReLU, which the export-based int8 paths need).
        init_cfg: mmengine init config (None: PyTorch default init; nothing pretrained).

    Returns from ``forward``: S maps, deepest first: index 0 the bottleneck
    ``(N, base * 2**(S-1), ~H / 2**(S-1), ~W / 2**(S-1))``, index S-1 the full-resolution ``(N, base, H, W)``.
    """

    def __init__(
        self,
        in_channels: int = 3,
        base_channels: int = 64,
        num_stages: int = 5,
        decoder: str = 'upsample',
        norm_cfg: dict | None = None,
        act_cfg: dict | None = None,
        init_cfg: dict | list | None = None,
    ) -> None:
        super().__init__(init_cfg=init_cfg)
        if decoder not in _DECODERS:
            raise ValueError(f'PaperUNet: decoder must be one of {_DECODERS}, got {decoder!r}')
        if num_stages < 2 or base_channels < 1 or in_channels < 1:
            raise ValueError(
                f'PaperUNet: need num_stages >= 2 and channels >= 1, got num_stages={num_stages}, '
                f'base_channels={base_channels}, in_channels={in_channels}'
            )
        norm_cfg = norm_cfg if norm_cfg is not None else dict(type='BN', requires_grad=True)
        act_cfg = act_cfg if act_cfg is not None else dict(type='ReLU', inplace=False)
        self.num_stages = num_stages
        self.decoder_type = decoder
        self.channels = [base_channels * 2**i for i in range(num_stages)]
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)

        def double_conv(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                ConvModule(cin, cout, 3, padding=1, norm_cfg=norm_cfg, act_cfg=act_cfg),
                ConvModule(cout, cout, 3, padding=1, norm_cfg=norm_cfg, act_cfg=act_cfg),
            )

        self.encoder = nn.ModuleList()
        prev = in_channels
        for ch in self.channels:
            self.encoder.append(double_conv(prev, ch))
            prev = ch
        self.ups = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for i in range(num_stages - 2, -1, -1):
            self.ups.append(_Up(self.channels[i + 1], self.channels[i], decoder, norm_cfg, act_cfg))
            self.decoder.append(double_conv(2 * self.channels[i], self.channels[i]))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Run encoder and decoder on ``x`` ``(N, in_channels, H, W)``; see the class docstring for outputs."""
        feats = []
        for i, block in enumerate(self.encoder):
            if i > 0:
                x = self.pool(x)
            x = block(x)
            feats.append(x)
        outs = [x]
        for j, (up, block) in enumerate(zip(self.ups, self.decoder, strict=True)):
            skip = feats[self.num_stages - 2 - j]
            x = block(torch.cat([skip, up(x, skip.shape[-2:])], dim=1))
            outs.append(x)
        return tuple(outs)

    @property
    def out_channels(self) -> Sequence[int]:
        """Channels of the outputs of :meth:`forward`, deepest first."""
        return tuple(reversed(self.channels))
