"""Global magnitude pruning during training (the study's "Pruned U-Net": 50 % -> 90 % sparsity every 100 steps).

Uses ``torch.nn.utils.prune.global_unstructured`` (L1 magnitude, one threshold over all pruned layers). The
sparsity follows the polynomial ramp of TensorFlow Model Optimization's ``PolynomialDecay`` (the Keras API the
paper's wording matches): ``s(t) = end + (start - end) * (1 - (t - begin) / (stop - begin))**power`` for
``begin <= t <= stop``, applied at ``t = begin, begin + interval, ...`` and at ``stop``. Unstructured
sparsity does not make a dense CPU kernel faster nor a state dict smaller (only compression does): use
structured channel pruning (``tools/compress.py prune-structured``) for speed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmseg.registry import HOOKS
from torch import nn
from torch.nn.utils import prune

_LAYER_TYPES = {'Conv2d': nn.Conv2d, 'ConvTranspose2d': nn.ConvTranspose2d, 'Linear': nn.Linear}


def prunable_layers(
    model: nn.Module, layer_types: Sequence[str] = ('Conv2d', 'ConvTranspose2d'), exclude: Sequence[str] = ()
) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of the layers whose ``weight`` is pruned: given types, names not containing ``exclude``."""
    unknown = set(layer_types) - set(_LAYER_TYPES)
    if unknown:
        raise ValueError(f'unknown layer_types {sorted(unknown)}; choose from {sorted(_LAYER_TYPES)}')
    types = tuple(_LAYER_TYPES[t] for t in layer_types)
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, types) and not any(pattern in name for pattern in exclude)
    ]


def weight_sparsity(layers: Sequence[tuple[str, nn.Module]]) -> float:
    """Fraction of exactly-zero entries in the (effective) ``weight`` of ``layers``."""
    total = sum(m.weight.numel() for _, m in layers)
    zeros = sum(int((m.weight == 0).sum()) for _, m in layers)
    return zeros / total if total else 0.0


def apply_global_sparsity(layers: Sequence[tuple[str, nn.Module]], sparsity: float) -> int:
    """Prune the globally smallest-magnitude weights until ``round(sparsity * N)`` are masked.

    Masks stack (earlier pruned weights stay pruned); ``amount`` is passed as an absolute count of the
    still-unmasked weights, so the masked fraction is exactly ``round(sparsity * N) / N``.

    Returns:
        Number of masked weights after the call.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f'sparsity must be in [0, 1), got {sparsity}')
    total = sum(m.weight.numel() for _, m in layers)
    masked = sum(int((m.weight_mask == 0).sum()) for _, m in layers if hasattr(m, 'weight_mask'))
    target = round(sparsity * total)
    if target > masked:
        prune.global_unstructured(
            [(m, 'weight') for _, m in layers], pruning_method=prune.L1Unstructured, amount=target - masked
        )
        masked = target
    return masked


def remove_pruning(model: nn.Module) -> int:
    """Make all pruning of ``model`` permanent (``weight = weight_orig * weight_mask``); returns layers done."""
    done = 0
    for m in model.modules():
        for hook in list(m._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(m, hook._tensor_name)
                done += 1
    return done


def clean_pruned_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace ``<p>_orig`` / ``<p>_mask`` pairs of a state dict by ``<p> = orig * mask`` (order kept)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith('_mask') and key[: -len('_mask')] + '_orig' in state_dict:
            continue
        if key.endswith('_orig') and key[: -len('_orig')] + '_mask' in state_dict:
            base = key[: -len('_orig')]
            out[base] = value * state_dict[base + '_mask']
        else:
            out[key] = value
    return out


@HOOKS.register_module()
class MagnitudePruningHook(Hook):
    """Global L1 magnitude sparsity ramp from ``start`` to ``end``, updated every ``interval`` iterations.

    Args:
        start: Sparsity applied at ``begin`` (paper: 0.5).
        end: Final sparsity reached at ``stop`` (paper: 0.9).
        interval: Iterations between updates (paper: 100).
        begin: First pruned iteration (0-based count of finished iterations).
        stop: Iteration where ``end`` is reached (None: ``max_iters`` of the train loop).
        power: Exponent of the polynomial ramp (tfmot default 3; 1 = linear).
        layer_types: Layer classes whose ``weight`` is pruned.
        exclude: Sub-strings of module names left dense (e.g. ``('conv_seg',)`` for the classifier).

    The current sparsity is logged as ``train/sparsity`` at every update. At the end of training (and in every
    checkpoint written during it) the masks are folded into the weights, so checkpoints hold plain ``weight``
    tensors with zeros and no ``weight_orig`` / ``weight_mask``.
    """

    priority = 'ABOVE_NORMAL'

    def __init__(
        self,
        start: float = 0.5,
        end: float = 0.9,
        interval: int = 100,
        begin: int = 0,
        stop: int | None = None,
        power: float = 3.0,
        layer_types: Sequence[str] = ('Conv2d', 'ConvTranspose2d'),
        exclude: Sequence[str] = (),
    ) -> None:
        if not 0.0 <= start <= end < 1.0:
            raise ValueError(
                f'MagnitudePruningHook: need 0 <= start <= end < 1, got start={start}, end={end}'
            )
        if interval < 1 or begin < 0 or (stop is not None and stop <= begin) or power <= 0:
            raise ValueError(
                f'MagnitudePruningHook: need interval >= 1, begin >= 0, stop > begin, power > 0; got '
                f'interval={interval}, begin={begin}, stop={stop}, power={power}'
            )
        self.start, self.end, self.interval = float(start), float(end), int(interval)
        self.begin, self.stop, self.power = int(begin), stop, float(power)
        self.layer_types, self.exclude = tuple(layer_types), tuple(exclude)
        self.schedule: list[tuple[int, float]] = []
        self._layers: list[tuple[str, nn.Module]] | None = None

    def target_sparsity(self, it: int, stop: int) -> float:
        """Scheduled sparsity after ``it`` finished iterations (0 before ``begin``)."""
        if it < self.begin:
            return 0.0
        frac = min(1.0, (it - self.begin) / (stop - self.begin))
        return self.end + (self.start - self.end) * (1.0 - frac) ** self.power

    def is_update_iter(self, it: int, stop: int) -> bool:
        """Whether the masks are recomputed after ``it`` finished iterations."""
        return self.begin <= it <= stop and ((it - self.begin) % self.interval == 0 or it == stop)

    def _stop(self, runner) -> int:
        stop = self.stop if self.stop is not None else runner.max_iters
        if stop <= self.begin:
            raise ValueError(f'MagnitudePruningHook: stop ({stop}) must exceed begin ({self.begin})')
        return stop

    @staticmethod
    def _model(runner) -> nn.Module:
        return runner.model.module if is_model_wrapper(runner.model) else runner.model

    def before_train(self, runner) -> None:
        """Collect the layers to prune; fail early when there are none."""
        self._layers = prunable_layers(self._model(runner), self.layer_types, self.exclude)
        if not self._layers:
            raise ValueError(f'MagnitudePruningHook: no {self.layer_types} layer to prune in the model')
        self._update(runner, runner.iter)

    def _update(self, runner, it: int) -> None:
        stop = self._stop(runner)
        if self._layers is None or not self.is_update_iter(it, stop):
            return
        sparsity = self.target_sparsity(it, stop)
        with torch.no_grad():
            apply_global_sparsity(self._layers, sparsity)
        self.schedule.append((it, sparsity))
        runner.message_hub.update_scalar('train/sparsity', sparsity)
        runner.logger.info(f'MagnitudePruningHook: iteration {it}: sparsity {sparsity:.4f}')

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        """Recompute the masks when the schedule says so (``runner.iter + 1`` iterations are done)."""
        self._update(runner, runner.iter + 1)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        """Write plain pruned ``weight`` tensors instead of the ``weight_orig`` / ``weight_mask`` pairs."""
        if 'state_dict' in checkpoint:
            checkpoint['state_dict'] = clean_pruned_state_dict(checkpoint['state_dict'])

    def after_train(self, runner) -> None:
        """Fold the masks into the weights for good and log the final sparsity."""
        remove_pruning(self._model(runner))
        if self._layers:
            runner.logger.info(
                f'MagnitudePruningHook: final weight sparsity {weight_sparsity(self._layers):.4f}'
            )
