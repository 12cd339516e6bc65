"""SEM-CNN (Ieracitano et al. 2020) and LipNet (the TEM liposome report) image classifiers as mmengine models.

Both are :class:`mmengine.model.BaseModel` subclasses registered in ``mmengine.registry.MODELS`` and share
:class:`BaseCellClassifier`: ``forward(inputs, data_samples, mode)`` with ``mode`` ``'tensor'`` (logits),
``'loss'`` (cross-entropy with optional label smoothing) and ``'predict'`` (softmax scores per sample).

Layer specs (the papers' tables; choices where a paper is silent are marked *ours*):

``SEMCNN`` (Table 2 of the SEM paper), input 1x128x128: ``num_blocks`` (1..5) blocks of
[conv 3x3 stride 1 pad 1 -> BatchNorm -> ReLU -> max-pool 2x2 stride 2] with 16/32/64/96/128 filters, flatten,
optional FC of ``fc_hidden`` (40) + ReLU, linear softmax output. Conv and linear weights ~ N(0, 1e-2), biases 0.
CNN5 + FC on 128x128: the FC input is 128 x 4 x 4 = 2048 as in the paper's table.

``LipNet`` (section 7 of the liposome report; figure 13 is not in the text, so block contents follow the text):
all convs 3x3, *same* padding, stride 1, 32 channels, ReLU; dropout after every conv block (0.25, *ours*) and
before the output layer (0.5, *ours*); hidden FC of ``fc_hidden`` = 128 units (*ours*).

* ``'1'`` (28x28): conv -> pool -> dropout, FC hidden, FC out (1 conv layer, two FC layers).
* ``'2'`` (28x28): 2 x [conv -> pool -> dropout], FC hidden, FC out.
* ``'4'`` (28x28, VGG-11 style): 2 x [conv -> conv -> pool -> dropout], FC hidden, FC out.
* ``'4c'`` (28x28, all-convolutional): 2 x [conv -> conv -> conv 3x3 stride 2 -> dropout] (strided convs
  replace max-pooling), then a 1x1 conv to ``num_classes`` channels instead of flatten, global average pooling
  (*ours*: the report names the 1x1 conv; averaging its 7x7 map follows the all-convolutional net it cites).
* ``'6'`` (32x32): 3 x [conv -> conv -> pool -> dropout], FC hidden, FC out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from mmengine.model import BaseModel
from mmengine.registry import MODELS
from torch import nn

__all__ = ["BaseCellClassifier", "SEMCNN", "LipNet", "LIPNET_INPUT_SIZE", "SEM_WIDTHS"]

SEM_WIDTHS: tuple[int, ...] = (16, 32, 64, 96, 128)
"""Filters of conv1..conv5 of the SEM paper (its Table 2)."""

LIPNET_INPUT_SIZE: dict[str, int] = {"1": 28, "2": 28, "4": 28, "4c": 28, "6": 32}
"""Input side of each LipNet variant (28x28; LipNet-6 needs 32x32 for its third pooling)."""


class BaseCellClassifier(BaseModel):
    """Shared mmengine plumbing: the network maps ``(N, C, H, W)`` to logits ``(N, num_classes)``.

    Args:
        num_classes: Number of classes.
        label_smoothing: Cross-entropy label smoothing epsilon (0 = none).
        class_weight: Optional per-class loss weights (cost-sensitive learning).
        data_preprocessor: mmengine data preprocessor config (e.g. ``ImgDataPreprocessor`` with mean/std).
    """

    def __init__(
        self,
        num_classes: int,
        label_smoothing: float = 0.0,
        class_weight: Sequence[float] | None = None,
        data_preprocessor: dict | None = None,
    ) -> None:
        super().__init__(data_preprocessor=data_preprocessor)
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.num_classes = int(num_classes)
        self.label_smoothing = float(label_smoothing)
        if class_weight is not None:
            if len(class_weight) != num_classes:
                raise ValueError(f"class_weight needs {num_classes} values, got {len(class_weight)}")
            self.register_buffer("class_weight", torch.as_tensor(class_weight, dtype=torch.float32))
        else:
            self.class_weight = None

    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """Class logits.

        Args:
            inputs: ``(N, C, H, W)`` float images.

        Returns:
            ``(N, num_classes)`` logits.
        """
        raise NotImplementedError

    def forward(
        self, inputs: torch.Tensor, data_samples: dict[str, Any] | None = None, mode: str = "tensor"
    ) -> torch.Tensor | dict[str, torch.Tensor] | list[dict[str, Any]]:
        """mmengine forward.

        Args:
            inputs: ``(N, C, H, W)`` images (already normalised by the data preprocessor).
            data_samples: Collated sample metadata: ``gt_label`` (``(N,)`` int tensor) for ``'loss'``; for
                ``'predict'`` every key is copied to the outputs.
            mode: ``'tensor'``, ``'loss'`` or ``'predict'``.

        Returns:
            ``'tensor'``: ``(N, num_classes)`` logits. ``'loss'``: ``{'loss': scalar}``. ``'predict'``: one dict
            per sample with ``pred_score`` (``(num_classes,)`` softmax), ``pred_label`` (int) and the sample's
            metadata (``gt_label``, ``image_id``, ...).
        """
        logits = self.logits(inputs)
        if mode == "tensor":
            return logits
        if mode == "loss":
            if data_samples is None or "gt_label" not in data_samples:
                raise ValueError("mode='loss' needs data_samples with 'gt_label'")
            gt = torch.as_tensor(data_samples["gt_label"], device=logits.device).long().view(-1)
            loss = F.cross_entropy(logits, gt, weight=self.class_weight, label_smoothing=self.label_smoothing)
            return {"loss": loss}
        if mode == "predict":
            scores = logits.softmax(dim=1).detach().cpu()
            out = []
            for i in range(scores.shape[0]):
                rec: dict[str, Any] = {"pred_score": scores[i], "pred_label": int(scores[i].argmax())}
                for key, val in (data_samples or {}).items():
                    item = val[i]
                    rec[key] = int(item) if isinstance(item, torch.Tensor) and item.numel() == 1 else item
                out.append(rec)
            return out
        raise ValueError(f"unknown mode {mode!r}; expected 'tensor', 'loss' or 'predict'")


def _gaussian_init(module: nn.Module, std: float) -> None:
    """N(0, std) conv/linear weights, zero biases, BN weight 1 / bias 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@MODELS.register_module()
class SEMCNN(BaseCellClassifier):
    """CNN1..CNN5 (+ FC) of the SEM nanofiber paper.

    Args:
        num_blocks: Conv blocks, 1..5 (CNN1..CNN5).
        fc_hidden: Hidden FC width (40 = the paper's CNN5*), or ``None`` for a direct softmax layer.
        num_classes: Output classes (the paper: 2; Sartorius cell types: 3).
        in_channels: Input channels (1 for grayscale).
        input_size: Square input side (128 in the paper); fixes the flatten width.
        widths: Filters per block (default the paper's 16/32/64/96/128).
        init_std: Std of the Gaussian weight init (1e-2).
        label_smoothing: See :class:`BaseCellClassifier`.
        class_weight: See :class:`BaseCellClassifier`.
        data_preprocessor: See :class:`BaseCellClassifier`.

    Shapes:
        ``(N, in_channels, input_size, input_size)`` -> logits ``(N, num_classes)``.
    """

    def __init__(
        self,
        num_blocks: int = 5,
        fc_hidden: int | None = 40,
        num_classes: int = 3,
        in_channels: int = 1,
        input_size: int = 128,
        widths: Sequence[int] = SEM_WIDTHS,
        init_std: float = 1e-2,
        label_smoothing: float = 0.0,
        class_weight: Sequence[float] | None = None,
        data_preprocessor: dict | None = None,
    ) -> None:
        super().__init__(num_classes, label_smoothing, class_weight, data_preprocessor)
        if not 1 <= num_blocks <= len(widths):
            raise ValueError(f"num_blocks must be in 1..{len(widths)}, got {num_blocks}")
        if input_size % (2**num_blocks):
            raise ValueError(f"input_size {input_size} is not divisible by 2**num_blocks = {2**num_blocks}")
        if fc_hidden is not None and fc_hidden < 1:
            raise ValueError(f"fc_hidden must be None or >= 1, got {fc_hidden}")
        self.num_blocks = int(num_blocks)
        self.fc_hidden = fc_hidden
        self.input_size = int(input_size)
        layers: list[nn.Module] = []
        c_in = in_channels
        for w in widths[:num_blocks]:
            layers += [
                nn.Conv2d(c_in, w, 3, stride=1, padding=1),
                nn.BatchNorm2d(w),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2, 2),
            ]
            c_in = w
        self.features = nn.Sequential(*layers)
        side = input_size // (2**num_blocks)
        flat = c_in * side * side
        if fc_hidden is None:
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(flat, num_classes))
        else:
            self.head = nn.Sequential(
                nn.Flatten(),
                nn.Linear(flat, fc_hidden),
                nn.ReLU(inplace=True),
                nn.Linear(fc_hidden, num_classes),
            )
        _gaussian_init(self, init_std)

    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """``(N, C, S, S)`` -> ``(N, num_classes)``."""
        return self.head(self.features(inputs))


def _conv(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.ReLU(inplace=True)]


@MODELS.register_module()
class LipNet(BaseCellClassifier):
    """LipNet-1/-2/-4/-4c/-6 of the TEM liposome classification report (see the module docstring).

    Args:
        variant: ``'1'``, ``'2'``, ``'4'``, ``'4c'`` or ``'6'``.
        num_classes: Output classes.
        in_channels: Input channels.
        channels: Conv channels (32).
        fc_hidden: Hidden FC width (not used by ``'4c'``).
        conv_dropout: Dropout after each conv block.
        fc_dropout: Dropout before the output layer (not used by ``'4c'``).
        input_size: Square input side; default the variant's (28, or 32 for ``'6'``).
        label_smoothing: See :class:`BaseCellClassifier` (the report smooths labels in every run; 0.1 here).
        class_weight: See :class:`BaseCellClassifier`.
        data_preprocessor: See :class:`BaseCellClassifier`.

    Shapes:
        ``(N, in_channels, input_size, input_size)`` -> logits ``(N, num_classes)``.
    """

    def __init__(
        self,
        variant: str = "4",
        num_classes: int = 3,
        in_channels: int = 1,
        channels: int = 32,
        fc_hidden: int = 128,
        conv_dropout: float = 0.25,
        fc_dropout: float = 0.5,
        input_size: int | None = None,
        label_smoothing: float = 0.1,
        class_weight: Sequence[float] | None = None,
        data_preprocessor: dict | None = None,
    ) -> None:
        super().__init__(num_classes, label_smoothing, class_weight, data_preprocessor)
        variant = str(variant)
        if variant not in LIPNET_INPUT_SIZE:
            raise ValueError(f"LipNet variant must be one of {sorted(LIPNET_INPUT_SIZE)}, got {variant!r}")
        self.variant = variant
        self.input_size = int(input_size or LIPNET_INPUT_SIZE[variant])
        c = channels
        if variant == "4c":
            blocks = [*_conv(in_channels, c), *_conv(c, c), *_conv(c, c, stride=2), nn.Dropout(conv_dropout)]
            blocks += [*_conv(c, c), *_conv(c, c), *_conv(c, c, stride=2), nn.Dropout(conv_dropout)]
            self.features = nn.Sequential(*blocks)
            self.head = nn.Sequential(nn.Conv2d(c, num_classes, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
            return
        convs_per_block, n_blocks = {"1": (1, 1), "2": (1, 2), "4": (2, 2), "6": (2, 3)}[variant]
        if self.input_size % (2**n_blocks):
            raise ValueError(f"input_size {self.input_size} is not divisible by {2**n_blocks}")
        layers: list[nn.Module] = []
        c_in = in_channels
        for _ in range(n_blocks):
            for _ in range(convs_per_block):
                layers += _conv(c_in, c)
                c_in = c
            layers += [nn.MaxPool2d(2, 2), nn.Dropout(conv_dropout)]
        self.features = nn.Sequential(*layers)
        side = self.input_size // (2**n_blocks)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c * side * side, fc_hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(fc_dropout),
            nn.Linear(fc_hidden, num_classes),
        )

    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """``(N, C, S, S)`` -> ``(N, num_classes)``."""
        return self.head(self.features(inputs))
